//! Client commands for projects: their quotas and what they use.

use clap::Subcommand;
use comfy_table::Table;
use serde_json::{Value, json};

use super::client::{Client, encode_query_value as encode};
use super::output;

#[derive(Debug, Subcommand)]
pub(super) enum ProjectCommand {
    /// The projects you are a member of.
    List,
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// A project with its usage next to its quota.
    Show { name: String },
    /// Replace the quota (limits not given become unlimited) or the description.
    Update {
        name: String,
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// Delete a project that owns nothing any more.
    Delete { name: String },
}

#[derive(Debug, clap::Args)]
pub(super) struct QuotaArgs {
    #[arg(long)]
    max_instances: Option<u64>,
    #[arg(long)]
    max_vcpu: Option<u64>,
    #[arg(long)]
    max_ram_mb: Option<u64>,
    #[arg(long)]
    max_template_bytes: Option<u64>,
}

impl QuotaArgs {
    fn any(&self) -> bool {
        self.max_instances.is_some()
            || self.max_vcpu.is_some()
            || self.max_ram_mb.is_some()
            || self.max_template_bytes.is_some()
    }

    fn to_json(&self) -> Value {
        json!({
            "max_instances": self.max_instances,
            "max_vcpu": self.max_vcpu,
            "max_ram_mb": self.max_ram_mb,
            "max_template_bytes": self.max_template_bytes,
        })
    }
}

pub(super) async fn project_command(client: &Client, command: ProjectCommand, json_output: bool) -> anyhow::Result<()> {
    let project = match command {
        ProjectCommand::List => {
            output::print(&client.get("/v1/projects").await?, json_output, projects_table);
            return Ok(());
        }
        ProjectCommand::Create { name, description, quota } => {
            client
                .post("/v1/projects", &json!({ "name": name, "description": description, "quota": quota.to_json() }))
                .await?
        }
        ProjectCommand::Show { name } => {
            let usage = client.get(&format!("/v1/projects/{}/usage", encode(&name))).await?;
            output::print(&Value::Array(vec![usage]), json_output, usage_table);
            return Ok(());
        }
        ProjectCommand::Update { name, description, quota } => {
            let mut body = json!({});
            if let Some(description) = description {
                body["description"] = Value::String(description);
            }
            if quota.any() {
                body["quota"] = quota.to_json();
            }
            client.patch(&format!("/v1/projects/{}", encode(&name)), &body).await?
        }
        ProjectCommand::Delete { name } => {
            client.delete(&format!("/v1/projects/{}", encode(&name))).await?;
            println!("Deleted project {name}");
            return Ok(());
        }
    };
    output::print(&Value::Array(vec![project]), json_output, projects_table);
    Ok(())
}

fn limit(value: &Value) -> String {
    value.as_u64().map_or_else(|| "-".to_owned(), |limit| limit.to_string())
}

fn projects_table(projects: &[Value]) -> Table {
    let mut table =
        output::new_table(&["NAME", "MAX INSTANCES", "MAX VCPU", "MAX RAM MB", "MAX TEMPLATE BYTES", "DESCRIPTION"]);
    for project in projects {
        let quota = &project["quota"];
        table.add_row([
            project["name"].as_str().unwrap_or_default().to_owned(),
            limit(&quota["max_instances"]),
            limit(&quota["max_vcpu"]),
            limit(&quota["max_ram_mb"]),
            limit(&quota["max_template_bytes"]),
            project["description"].as_str().unwrap_or_default().to_owned(),
        ]);
    }
    table
}

fn usage_table(usages: &[Value]) -> Table {
    let mut table = output::new_table(&["PROJECT", "RESOURCE", "USED", "LIMIT"]);
    for usage in usages {
        for resource in ["instances", "vcpu", "ram_mb", "template_bytes"] {
            table.add_row([
                usage["project"].as_str().unwrap_or_default().to_owned(),
                resource.to_owned(),
                usage["usage"][resource].to_string(),
                limit(&usage["quota"][format!("max_{resource}")]),
            ]);
        }
    }
    table
}
