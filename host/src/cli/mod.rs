//! The `hyperplane` command: `serve` runs the server; every other command is a client of the
//! HTTP API (tables by default, `--json` for scripts).

mod client;
mod identity;
mod output;
mod projects;
mod registry;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use crate::config::{Config, LogFormat};
use client::Client;

#[derive(Debug, Parser)]
#[command(name = "hyperplane", version, about = "One control plane for virtual machines on every hypervisor")]
pub struct Cli {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct ConnectionArgs {
    /// Server URL.
    #[arg(long, global = true, env = "HYPERPLANE_URL", default_value = "http://127.0.0.1:8090")]
    url: String,
    /// API token; defaults to the local server's `./data/admin.token`.
    #[arg(long, global = true, env = "HYPERPLANE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// TOML configuration file.
        #[arg(long, env = "HYPERPLANE_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on (overrides the configuration).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Data directory (overrides the configuration).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Instances.
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// Hosts.
    #[command(subcommand)]
    Host(HostCommand),
    /// Templates.
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Tasks.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Print the event log; `--follow` keeps streaming.
    Events {
        #[arg(long, short)]
        follow: bool,
        /// Start after this sequence number.
        #[arg(long, default_value_t = 0)]
        since: i64,
    },
    /// Users.
    #[command(subcommand)]
    User(identity::UserCommand),
    /// User groups and their members.
    #[command(subcommand)]
    UserGroup(identity::UserGroupCommand),
    /// Roles and their grants (bindings).
    #[command(subcommand)]
    Role(identity::RoleCommand),
    /// API keys.
    #[command(subcommand)]
    Key(identity::KeyCommand),
    /// Projects, their quotas and usage.
    #[command(subcommand)]
    Project(projects::ProjectCommand),
    /// Log in with a password: prints a session token to use as HYPERPLANE_TOKEN.
    Login {
        user: String,
        /// Read the password from the first line of standard input instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// End the session of the token in use.
    Logout,
    /// Who the token in use authenticates as, and what it may do.
    Whoami,
}

#[derive(Debug, Subcommand)]
enum InstanceCommand {
    /// Create instances of a template.
    Create {
        /// Template name or id.
        #[arg(long, short)]
        template: String,
        #[arg(long)]
        tag: Option<String>,
        /// The project the instances belong to (default: `default`).
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        vcpu: Option<u32>,
        #[arg(long)]
        ram_mb: Option<u64>,
        #[arg(long)]
        disk_gb: Option<u64>,
        #[arg(long)]
        count: Option<u32>,
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        external_id: Option<String>,
        /// MAC address of the NIC (only with a count of 1).
        #[arg(long)]
        mac: Option<String>,
        /// VLAN tag of the NIC (1-4094).
        #[arg(long)]
        vlan: Option<u16>,
        /// Wait until the instances run (or fail).
        #[arg(long)]
        wait: bool,
    },
    /// List instances.
    List {
        /// `field=value,…` (state, host, provider, template, name, external_id).
        #[arg(long)]
        filter: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    Get {
        id: String,
    },
    Start(ActionArgs),
    Stop(ActionArgs),
    Restart(ActionArgs),
    /// Pause a running instance in memory.
    Suspend(ActionArgs),
    /// Continue a suspended instance.
    Resume(ActionArgs),
    Delete {
        id: String,
        #[arg(long)]
        wait: bool,
    },
    /// Where the instance's console answers: protocol (vnc, serial, …), host and port.
    Console {
        id: String,
    },
    /// Save the instance's disk as a new tag of a template (`--template`) or as a new template
    /// (`--new-template`); the instance is deleted afterwards unless `--keep`.
    Save {
        id: String,
        #[arg(long, conflicts_with = "new_template", required_unless_present = "new_template")]
        template: Option<String>,
        #[arg(long)]
        new_template: Option<String>,
        #[arg(long)]
        tag: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Stop the instance before the capture instead of suspending it.
        #[arg(long)]
        stop: bool,
        /// First revert the template's latest tag (or `--revert-tag`).
        #[arg(long)]
        revert_before_push: bool,
        #[arg(long)]
        revert_tag: Option<String>,
        /// Keep the instance afterwards.
        #[arg(long)]
        keep: bool,
        #[arg(long)]
        wait: bool,
    },
    /// Snapshots of an instance.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// The instance's snapshots, oldest first.
    List { id: String },
    /// Snapshot the instance (disks, and memory when it runs).
    Create {
        id: String,
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long)]
        wait: bool,
    },
    /// Return the instance to a snapshot, in the state the snapshot holds.
    Revert {
        id: String,
        name: String,
        #[arg(long)]
        wait: bool,
    },
    Delete {
        id: String,
        name: String,
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Debug, Args)]
struct ActionArgs {
    id: String,
    #[arg(long)]
    wait: bool,
    /// Power off at once instead of a graceful shutdown.
    #[arg(long)]
    force: bool,
    /// `stop`: seconds the guest gets to shut down before it is powered off.
    #[arg(long)]
    grace: Option<f64>,
}

#[derive(Debug, Subcommand)]
enum HostCommand {
    List,
}

#[derive(Debug, Subcommand)]
enum TemplateCommand {
    Create {
        name: String,
        #[arg(long, default_value = "amd64")]
        arch: String,
        #[arg(long, default_value = "")]
        description: String,
        /// The project the template belongs to (default: `default`).
        #[arg(long)]
        project: Option<String>,
    },
    List,
    Push(registry::PushRequest),
    Pull(registry::PullRequest),
    /// Pull a tag onto hosts (all active ones, `--host`s or a `--group`), with each host's
    /// progress.
    Distribute(registry::DistributeRequest),
    /// Remove the latest tag, or `--tag` and every tag after it.
    Revert {
        template: String,
        #[arg(long)]
        tag: Option<String>,
    },
    /// Delete a template with all its tags.
    Rm {
        template: String,
    },
    /// Delete stored chunks no template references any more.
    Gc {
        /// Spare chunks younger than this (default: the server's grace period).
        #[arg(long)]
        min_age_secs: Option<f64>,
    },
    /// Remove a template from every host that caches it (every version, or `--version`); hosts
    /// where an instance uses it are skipped.
    RmFromHosts {
        template: String,
        #[arg(long)]
        version: Option<u32>,
        #[arg(long)]
        wait: bool,
    },
    /// Remove a template from a host's cache (every cached version, or `--version`).
    RmFromHost {
        /// Template name or id.
        template: String,
        /// Host id, name or `provider/name`.
        host: String,
        /// Only this version.
        #[arg(long)]
        version: Option<u32>,
        /// Wait until the template is removed (or the removal fails).
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TaskCommand {
    Get {
        id: String,
    },
    /// Wait until the task ends, showing its progress.
    Wait {
        id: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    Cancel {
        id: String,
    },
}

/// Runs the command line; the process exit code is non-zero on any error.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, listen, data_dir } => serve(config, listen, data_dir).await,
        Command::Login { user, password_stdin } => {
            identity::login(&cli.connection.url, &user, password_stdin, cli.json).await
        }
        command => {
            let client = Client::new(&cli.connection.url, cli.connection.token)?;
            run_client(&client, command, cli.json).await
        }
    }
}

async fn serve(
    config_file: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut config = Config::load(config_file.as_deref())?;
    if let Some(listen) = listen {
        config.listen = listen;
    }
    if let Some(data_dir) = data_dir {
        config.data_dir = data_dir;
    }
    init_tracing(&config);
    let server = crate::server::start(config, std::env::var("HYPERPLANE_ADMIN_TOKEN").ok()).await?;
    println!("Hyperplane is listening on http://{}", server.address);
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HYPERPLANE_LOG").unwrap_or_else(|_| EnvFilter::new(&config.log.filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match config.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

async fn run_client(client: &Client, command: Command, json_output: bool) -> anyhow::Result<()> {
    match command {
        Command::Serve { .. } | Command::Login { .. } => unreachable!("handled by run"),
        Command::Instance(command) => instance_command(client, command, json_output).await,
        Command::Host(HostCommand::List) => {
            let hosts = client.get("/v1/hosts").await?;
            output::print(&hosts, json_output, output::hosts_table);
            Ok(())
        }
        Command::Template(TemplateCommand::Create { name, arch, description, project }) => {
            let template = client
                .post(
                    "/v1/templates",
                    &json!({ "name": name, "arch": arch, "description": description, "project": project }),
                )
                .await?;
            output::print(&Value::Array(vec![template]), json_output, output::templates_table);
            Ok(())
        }
        Command::Template(TemplateCommand::List) => {
            let templates = client.get("/v1/templates").await?;
            output::print(&templates, json_output, output::templates_table);
            Ok(())
        }
        Command::Template(TemplateCommand::Push(request)) => {
            let pushed = registry::push(client, request, !json_output).await?;
            if json_output {
                println!("{}", serde_json::to_string_pretty(&pushed)?);
            } else {
                println!(
                    "pushed {}: {} in {} chunks; sent {} in {} chunks, the registry had the rest",
                    pushed["file"]["name"].as_str().unwrap_or("file"),
                    registry::human_bytes(pushed["file"]["size_bytes"].as_u64().unwrap_or(0)),
                    pushed["chunks"],
                    registry::human_bytes(pushed["bytes_sent"].as_u64().unwrap_or(0)),
                    pushed["chunks_sent"],
                );
            }
            Ok(())
        }
        Command::Template(TemplateCommand::Pull(request)) => {
            let pulled = registry::pull(client, request, !json_output).await?;
            if json_output {
                println!("{}", serde_json::to_string_pretty(&pulled)?);
            } else {
                println!(
                    "pulled {}:{} into {}: {}; downloaded {}",
                    pulled["template"].as_str().unwrap_or(""),
                    pulled["tag"].as_str().unwrap_or(""),
                    pulled["output"].as_str().unwrap_or(""),
                    registry::human_bytes(pulled["size_bytes"].as_u64().unwrap_or(0)),
                    registry::human_bytes(pulled["bytes_downloaded"].as_u64().unwrap_or(0)),
                );
            }
            Ok(())
        }
        Command::Template(TemplateCommand::Distribute(request)) => {
            let wait = request.wait;
            let outcome = registry::distribute(client, request, !json_output).await?;
            if json_output {
                println!("{}", serde_json::to_string_pretty(&outcome)?);
            } else if wait {
                output::print(&outcome["pulls"], false, output::pulls_table);
            } else {
                output::print(&Value::Array(vec![outcome["batch"].clone()]), false, output::tasks_table);
            }
            match outcome["batch"]["state"].as_str() {
                Some("failed" | "cancelled") if wait => {
                    bail!("distribution {}: {}", outcome["batch"]["state"], outcome["batch"]["error"]["message"])
                }
                _ => Ok(()),
            }
        }
        Command::Template(TemplateCommand::Revert { template, tag }) => {
            let path = format!("/v1/templates/{}/revert", client::encode_query_value(&template));
            let template = client.post(&path, &json!({ "tag": tag })).await?;
            output::print(&Value::Array(vec![template]), json_output, output::templates_table);
            Ok(())
        }
        Command::Template(TemplateCommand::Rm { template }) => {
            client.delete(&format!("/v1/templates/{}", client::encode_query_value(&template))).await?;
            if !json_output {
                println!("deleted template {template}");
            }
            Ok(())
        }
        Command::Template(TemplateCommand::Gc { min_age_secs }) => {
            let path = match min_age_secs {
                Some(seconds) => format!("/v1/registry/gc?min_age_secs={seconds}"),
                None => "/v1/registry/gc".to_owned(),
            };
            let collected = client.post(&path, &json!({})).await?;
            if json_output {
                println!("{}", serde_json::to_string_pretty(&collected)?);
            } else {
                println!(
                    "deleted {} chunks and {} orphan objects, freed {}",
                    collected["chunks_deleted"],
                    collected["orphan_objects_deleted"],
                    registry::human_bytes(collected["bytes_freed"].as_u64().unwrap_or(0)),
                );
            }
            Ok(())
        }
        Command::Template(TemplateCommand::RmFromHosts { template, version, wait }) => {
            let mut path = format!("/v1/templates/{}/hosts", client::encode_query_value(&template));
            if let Some(version) = version {
                path.push_str(&format!("?version={version}"));
            }
            let task = client.delete(&path).await?;
            after_task(client, task, wait, json_output).await
        }
        Command::Template(TemplateCommand::RmFromHost { template, host, version, wait }) => {
            let host_id = client.resolve_host(&host).await?;
            let mut path = format!("/v1/templates/{}/hosts/{host_id}", client::encode_query_value(&template));
            if let Some(version) = version {
                path.push_str(&format!("?version={version}"));
            }
            let task = client.delete(&path).await?;
            after_task(client, task, wait, json_output).await
        }
        Command::Task(TaskCommand::Get { id }) => {
            let task = client.get(&format!("/v1/tasks/{id}")).await?;
            output::print(&Value::Array(vec![task]), json_output, output::tasks_table);
            Ok(())
        }
        Command::Task(TaskCommand::Wait { id, timeout }) => {
            let task = client.wait_for_task(&id, Duration::from_secs(timeout), !json_output).await?;
            finish_task(&task, json_output)
        }
        Command::Task(TaskCommand::Cancel { id }) => {
            let task = client.delete(&format!("/v1/tasks/{id}")).await?;
            output::print(&Value::Array(vec![task]), json_output, output::tasks_table);
            Ok(())
        }
        Command::User(command) => identity::user_command(client, command, json_output).await,
        Command::UserGroup(command) => identity::user_group_command(client, command, json_output).await,
        Command::Role(command) => identity::role_command(client, command, json_output).await,
        Command::Key(command) => identity::key_command(client, command, json_output).await,
        Command::Project(command) => projects::project_command(client, command, json_output).await,
        Command::Logout => identity::logout(client).await,
        Command::Whoami => identity::whoami(client, json_output).await,
        Command::Events { follow, since } => {
            client
                .stream_lines(&format!("/v1/events?since={since}&follow={follow}"), |event| {
                    if json_output {
                        println!("{event}");
                    } else {
                        println!("{}", output::event_line(&event));
                    }
                })
                .await
        }
    }
}

async fn instance_command(client: &Client, command: InstanceCommand, json_output: bool) -> anyhow::Result<()> {
    match command {
        InstanceCommand::Create {
            template,
            tag,
            project,
            name,
            vcpu,
            ram_mb,
            disk_gb,
            count,
            host,
            external_id,
            mac,
            vlan,
            wait,
        } => {
            let host_id = match host {
                Some(host) => Some(client.resolve_host(&host).await?),
                None => None,
            };
            let mut body = json!({ "template": template });
            for (key, value) in [
                ("tag", tag.map(Value::from)),
                ("project", project.map(Value::from)),
                ("name", name.map(Value::from)),
                ("vcpu", vcpu.map(Value::from)),
                ("ram_mb", ram_mb.map(Value::from)),
                ("disk_gb", disk_gb.map(Value::from)),
                ("count", count.map(Value::from)),
                ("host_id", host_id.map(Value::from)),
                ("external_id", external_id.map(Value::from)),
                ("mac", mac.map(Value::from)),
                ("vlan", vlan.map(Value::from)),
            ] {
                if let Some(value) = value {
                    body[key] = value;
                }
            }
            let task = client.post("/v1/instances", &body).await?;
            after_task(client, task, wait, json_output).await
        }
        InstanceCommand::List { filter, limit } => {
            let mut path = format!("/v1/instances?limit={limit}");
            if let Some(filter) = filter {
                path.push_str(&format!("&filter={}", client::encode_query_value(&filter)));
            }
            let list = client.get(&path).await?;
            output::print(&list["items"], json_output, output::instances_table);
            Ok(())
        }
        InstanceCommand::Get { id } => {
            let instance = client.get(&format!("/v1/instances/{id}")).await?;
            output::print(&Value::Array(vec![instance]), json_output, output::instances_table);
            Ok(())
        }
        InstanceCommand::Start(args) => action(client, "start", args, json_output).await,
        InstanceCommand::Stop(args) => action(client, "stop", args, json_output).await,
        InstanceCommand::Restart(args) => action(client, "restart", args, json_output).await,
        InstanceCommand::Suspend(args) => action(client, "suspend", args, json_output).await,
        InstanceCommand::Resume(args) => action(client, "resume", args, json_output).await,
        InstanceCommand::Delete { id, wait } => {
            let task = client.delete(&format!("/v1/instances/{id}")).await?;
            after_task(client, task, wait, json_output).await
        }
        InstanceCommand::Console { id } => {
            let console = client.get(&format!("/v1/instances/{id}/console")).await?;
            output::print(&Value::Array(vec![console]), json_output, output::consoles_table);
            Ok(())
        }
        InstanceCommand::Save {
            id,
            template,
            new_template,
            tag,
            description,
            stop,
            revert_before_push,
            revert_tag,
            keep,
            wait,
        } => {
            let body = json!({
                "template": template, "new_template": new_template, "tag": tag, "description": description,
                "suspend": !stop, "revert_before_push": revert_before_push, "revert_tag": revert_tag,
                "keep_instance": keep,
            });
            let task = client.post(&format!("/v1/instances/{id}/save"), &body).await?;
            after_task(client, task, wait, json_output).await
        }
        InstanceCommand::Snapshot(command) => snapshot_command(client, command, json_output).await,
    }
}

async fn snapshot_command(client: &Client, command: SnapshotCommand, json_output: bool) -> anyhow::Result<()> {
    let (task, wait) = match command {
        SnapshotCommand::List { id } => {
            let snapshots = client.get(&format!("/v1/instances/{id}/snapshots")).await?;
            output::print(&snapshots, json_output, output::snapshots_table);
            return Ok(());
        }
        SnapshotCommand::Create { id, name, description, wait } => {
            let body = json!({ "name": name, "description": description });
            (client.post(&format!("/v1/instances/{id}/snapshots"), &body).await?, wait)
        }
        SnapshotCommand::Revert { id, name, wait } => {
            let path = format!("/v1/instances/{id}/snapshots/{}/revert", client::encode_query_value(&name));
            (client.post(&path, &json!({})).await?, wait)
        }
        SnapshotCommand::Delete { id, name, wait } => {
            let path = format!("/v1/instances/{id}/snapshots/{}", client::encode_query_value(&name));
            (client.delete(&path).await?, wait)
        }
    };
    after_task(client, task, wait, json_output).await
}

async fn action(client: &Client, action: &str, args: ActionArgs, json_output: bool) -> anyhow::Result<()> {
    let mut path = format!("/v1/instances/{}/actions/{action}?force={}", args.id, args.force);
    if let Some(grace) = args.grace {
        path.push_str(&format!("&grace={grace}"));
    }
    let task = client.post(&path, &json!({})).await?;
    after_task(client, task, args.wait, json_output).await
}

async fn after_task(client: &Client, task: Value, wait: bool, json_output: bool) -> anyhow::Result<()> {
    if !wait {
        output::print(&Value::Array(vec![task]), json_output, output::tasks_table);
        return Ok(());
    }
    let id = task["id"].as_str().context("the server answered a task without an id")?;
    let task = client.wait_for_task(id, Duration::from_secs(3600), !json_output).await?;
    finish_task(&task, json_output)
}

fn finish_task(task: &Value, json_output: bool) -> anyhow::Result<()> {
    output::print(&Value::Array(vec![task.clone()]), json_output, output::tasks_table);
    match task["state"].as_str() {
        Some("succeeded") => Ok(()),
        Some(state) => bail!("task {} {state}: {}", task["id"], task["error"]["message"].as_str().unwrap_or("")),
        None => bail!("the server answered a task without a state"),
    }
}
