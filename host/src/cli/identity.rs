//! Client commands for users, user groups, roles, API keys and sessions (`login`, `logout`,
//! `whoami`). Each is one API call; passwords are read without echo or from standard input.

use std::io::{BufRead, IsTerminal};

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use super::client::{Client, encode_query_value as encode};
use super::output;

#[derive(Debug, Subcommand)]
pub(super) enum UserCommand {
    List,
    /// Create a user; without a password it can only log in through an external identity.
    Create {
        name: String,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long)]
        email: Option<String>,
        /// A user group to add the user to (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        #[command(flatten)]
        password: PasswordArgs,
    },
    Show {
        name: String,
    },
    /// Change a user; a new password or `--disable` ends the user's sessions.
    Update {
        name: String,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        #[arg(long)]
        enable: bool,
        #[command(flatten)]
        password: PasswordArgs,
    },
    Delete {
        name: String,
    },
}

#[derive(Debug, clap::Args)]
pub(super) struct PasswordArgs {
    /// Set a password, asked on the terminal without echo.
    #[arg(long, conflicts_with = "password_stdin")]
    password: bool,
    /// Set a password read from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
}

#[derive(Debug, Subcommand)]
pub(super) enum UserGroupCommand {
    List,
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    Delete {
        name: String,
    },
    /// Add a user to the group.
    Add {
        group: String,
        user: String,
    },
    /// Remove a user from the group.
    Remove {
        group: String,
        user: String,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum RoleCommand {
    List,
    /// Create a role from catalogue permissions (`GET /v1/permissions`).
    Create {
        name: String,
        /// `resource:action`, `resource:*` or `*` (repeatable).
        #[arg(long = "permission", required = true)]
        permissions: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    Delete {
        name: String,
    },
    /// Grant a role to a user or a user group, in a project (default: every project).
    Grant {
        role: String,
        #[arg(long, required_unless_present = "group", conflicts_with = "group")]
        user: Option<String>,
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        project: Option<String>,
        /// Only this resource id (repeatable); default: every resource.
        #[arg(long = "resource-id")]
        resource_ids: Vec<String>,
    },
    /// Revoke a grant by its id (see `role bindings`).
    Revoke {
        binding_id: String,
    },
    /// Every grant.
    Bindings,
}

#[derive(Debug, Subcommand)]
pub(super) enum KeyCommand {
    List,
    /// Create an API key; its token is printed once.
    Create {
        /// The key's id: 1-64 letters, digits, `.`, `_`, `-`.
        id: String,
        /// Seconds the key lives (default: until revoked).
        #[arg(long)]
        ttl: Option<u64>,
        /// A user group the key acts with (repeatable); default: the user's own access.
        #[arg(long = "group")]
        groups: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// The user the key is for (needs `key:create`); default: you.
        #[arg(long)]
        user: Option<String>,
    },
    Update {
        id: String,
        /// Seconds from now until the key expires.
        #[arg(long)]
        ttl: Option<u64>,
        /// Replaces the key's groups (repeatable).
        #[arg(long = "group")]
        groups: Option<Vec<String>>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Revoke a key at once.
    Revoke {
        id: String,
    },
}

pub(super) async fn user_command(client: &Client, command: UserCommand, json_output: bool) -> anyhow::Result<()> {
    let user = match command {
        UserCommand::List => {
            output::print(&client.get("/v1/users").await?, json_output, output::users_table);
            return Ok(());
        }
        UserCommand::Create { name, display_name, email, groups, password } => {
            let mut body = json!({ "name": name, "groups": groups });
            insert_some(&mut body, "display_name", display_name);
            insert_some(&mut body, "email", email);
            insert_some(&mut body, "password", password.read(&name)?);
            client.post("/v1/users", &body).await?
        }
        UserCommand::Show { name } => client.get(&format!("/v1/users/{}", encode(&name))).await?,
        UserCommand::Update { name, display_name, email, disable, enable, password } => {
            let mut body = json!({});
            insert_some(&mut body, "display_name", display_name);
            insert_some(&mut body, "email", email);
            insert_some(&mut body, "password", password.read(&name)?);
            if disable || enable {
                body["disabled"] = Value::Bool(disable);
            }
            client.patch(&format!("/v1/users/{}", encode(&name)), &body).await?
        }
        UserCommand::Delete { name } => {
            client.delete(&format!("/v1/users/{}", encode(&name))).await?;
            println!("Deleted user {name}");
            return Ok(());
        }
    };
    output::print(&Value::Array(vec![user]), json_output, output::users_table);
    Ok(())
}

pub(super) async fn user_group_command(
    client: &Client,
    command: UserGroupCommand,
    json_output: bool,
) -> anyhow::Result<()> {
    let group = match command {
        UserGroupCommand::List => {
            output::print(&client.get("/v1/user-groups").await?, json_output, output::user_groups_table);
            return Ok(());
        }
        UserGroupCommand::Create { name, description } => {
            client.post("/v1/user-groups", &json!({ "name": name, "description": description })).await?
        }
        UserGroupCommand::Delete { name } => {
            client.delete(&format!("/v1/user-groups/{}", encode(&name))).await?;
            println!("Deleted user group {name}");
            return Ok(());
        }
        UserGroupCommand::Add { group, user } => client.put(&member_path(&group, &user)).await?,
        UserGroupCommand::Remove { group, user } => client.delete(&member_path(&group, &user)).await?,
    };
    output::print(&Value::Array(vec![group]), json_output, output::user_groups_table);
    Ok(())
}

fn member_path(group: &str, user: &str) -> String {
    format!("/v1/user-groups/{}/members/{}", encode(group), encode(user))
}

pub(super) async fn role_command(client: &Client, command: RoleCommand, json_output: bool) -> anyhow::Result<()> {
    match command {
        RoleCommand::List => output::print(&client.get("/v1/roles").await?, json_output, output::roles_table),
        RoleCommand::Create { name, permissions, description } => {
            let body = json!({ "name": name, "permissions": permissions, "description": description });
            let role = client.post("/v1/roles", &body).await?;
            output::print(&Value::Array(vec![role]), json_output, output::roles_table);
        }
        RoleCommand::Delete { name } => {
            client.delete(&format!("/v1/roles/{}", encode(&name))).await?;
            println!("Deleted role {name}");
        }
        RoleCommand::Grant { role, user, group, project, resource_ids } => {
            let mut body = json!({ "role": role });
            insert_some(&mut body, "user", user);
            insert_some(&mut body, "group", group);
            insert_some(&mut body, "project", project);
            insert_some(&mut body, "resource_ids", Some(resource_ids).filter(|ids| !ids.is_empty()));
            let binding = client.post("/v1/role-bindings", &body).await?;
            output::print(&Value::Array(vec![binding]), json_output, output::role_bindings_table);
        }
        RoleCommand::Revoke { binding_id } => {
            client.delete(&format!("/v1/role-bindings/{}", encode(&binding_id))).await?;
            println!("Revoked role binding {binding_id}");
        }
        RoleCommand::Bindings => {
            output::print(&client.get("/v1/role-bindings").await?, json_output, output::role_bindings_table);
        }
    }
    Ok(())
}

pub(super) async fn key_command(client: &Client, command: KeyCommand, json_output: bool) -> anyhow::Result<()> {
    let key = match command {
        KeyCommand::List => {
            output::print(&client.get("/v1/keys").await?, json_output, output::keys_table);
            return Ok(());
        }
        KeyCommand::Create { id, ttl, groups, description, user } => {
            let mut body = json!({ "id": id, "groups": groups, "description": description });
            insert_some(&mut body, "ttl", ttl);
            insert_some(&mut body, "user", user);
            let created = client.post("/v1/keys", &body).await?;
            if json_output {
                println!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                println!("{}", output::keys_table(std::slice::from_ref(&created)));
                let token = created["token"].as_str().context("the server answered a key without its token")?;
                println!("Token (shown only now; store it safely): {token}");
                println!("Send it as `X-API-Key: <token>` or `Authorization: Bearer <token>`.");
            }
            return Ok(());
        }
        KeyCommand::Update { id, ttl, groups, description } => {
            let mut body = json!({});
            insert_some(&mut body, "ttl", ttl);
            insert_some(&mut body, "groups", groups);
            insert_some(&mut body, "description", description);
            client.patch(&format!("/v1/keys/{}", encode(&id)), &body).await?
        }
        KeyCommand::Revoke { id } => client.delete(&format!("/v1/keys/{}", encode(&id))).await?,
    };
    output::print(&Value::Array(vec![key]), json_output, output::keys_table);
    Ok(())
}

/// Logs in with a password (HTTP basic auth) and prints the new session's token.
pub(super) async fn login(url: &str, user: &str, password_stdin: bool, json_output: bool) -> anyhow::Result<()> {
    let password = read_password(password_stdin, &format!("Password for {user}: "))?;
    let session = Client::without_token(url).post_with_password("/v1/sessions", user, &password).await?;
    if json_output {
        println!("{}", serde_json::to_string_pretty(&session)?);
        return Ok(());
    }
    let token = session["token"].as_str().context("the server answered a session without its token")?;
    eprintln!(
        "Logged in as {user}; the session ends after 30 minutes unused (at the latest {}).",
        session["ends_at"].as_str().unwrap_or("in 12 hours")
    );
    eprintln!("Use it in this shell with:");
    println!("export HYPERPLANE_TOKEN={token}");
    Ok(())
}

/// Ends the session the client's token belongs to.
pub(super) async fn logout(client: &Client) -> anyhow::Result<()> {
    client.delete("/v1/sessions/current").await?;
    println!("Logged out; the session token no longer works (unset HYPERPLANE_TOKEN)");
    Ok(())
}

pub(super) async fn whoami(client: &Client, json_output: bool) -> anyhow::Result<()> {
    let caller = client.get("/v1/sessions/current").await?;
    output::print(&Value::Array(vec![caller]), json_output, output::callers_table);
    Ok(())
}

impl PasswordArgs {
    /// The password the flags ask for, if any.
    fn read(&self, user: &str) -> anyhow::Result<Option<String>> {
        if !(self.password || self.password_stdin) {
            return Ok(None);
        }
        read_password(self.password_stdin, &format!("New password for {user}: ")).map(Some)
    }
}

/// A password from the first line of standard input, or asked on the terminal without echo.
fn read_password(from_stdin: bool, prompt: &str) -> anyhow::Result<String> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("cannot read the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        if !std::io::stdin().is_terminal() {
            bail!("no terminal to ask the password on; pass --password-stdin");
        }
        rpassword::prompt_password(prompt).context("cannot read the password from the terminal")?
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    Ok(password)
}

/// Sets `body[key]` when `value` is given.
fn insert_some(body: &mut Value, key: &str, value: Option<impl Into<Value>>) {
    if let (Some(value), Some(object)) = (value, body.as_object_mut()) {
        object.insert(key.to_owned(), value.into());
    }
}
