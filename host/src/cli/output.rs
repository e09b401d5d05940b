//! Tables and lines for people; JSON for scripts.

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde_json::Value;

/// Prints `items` (a JSON array) as JSON or through `table`.
pub fn print(items: &Value, json_output: bool, table: fn(&[Value]) -> Table) {
    if json_output {
        println!("{}", serde_json::to_string_pretty(items).unwrap_or_default());
        return;
    }
    let rows = items.as_array().map(Vec::as_slice).unwrap_or_default();
    println!("{}", table(rows));
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

pub fn new_table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    table
}

pub fn instances_table(instances: &[Value]) -> Table {
    let mut table = new_table(&["ID", "NAME", "STATE", "VCPU", "RAM MB", "IP", "HOST", "PROVIDER"]);
    for instance in instances {
        table.add_row(
            ["id", "name", "state", "vcpu", "ram_mb", "ip", "host_id", "provider"].map(|field| text(&instance[field])),
        );
    }
    table
}

pub fn snapshots_table(snapshots: &[Value]) -> Table {
    let mut table = new_table(&["NAME", "STATE", "CURRENT", "CREATED", "DESCRIPTION"]);
    for snapshot in snapshots {
        table.add_row(["name", "state", "current", "created_at", "description"].map(|field| text(&snapshot[field])));
    }
    table
}

pub fn consoles_table(consoles: &[Value]) -> Table {
    let mut table = new_table(&["PROTOCOL", "HOST", "PORT"]);
    for console in consoles {
        table.add_row(["protocol", "host", "port"].map(|field| text(&console[field])));
    }
    table
}

pub fn hosts_table(hosts: &[Value]) -> Table {
    let mut table = new_table(&["ID", "PROVIDER", "NAME", "STATE", "ARCH", "INSTANCES", "VCPU", "RAM MB"]);
    for host in hosts {
        let vcpu_limit = host["capacity"]["vcpu"].as_u64().or(host["cpu"].as_u64()).unwrap_or(0);
        let ram_limit = host["capacity"]["ram_mb"].as_u64().or(host["ram_mb"].as_u64()).unwrap_or(0);
        table.add_row(vec![
            text(&host["id"]),
            text(&host["provider"]),
            text(&host["name"]),
            text(&host["state"]),
            text(&host["arch"]),
            text(&host["usage"]["instances"]),
            format!("{}/{vcpu_limit}", text(&host["usage"]["vcpu"])),
            format!("{}/{ram_limit}", text(&host["usage"]["ram_mb"])),
        ]);
    }
    table
}

pub fn templates_table(templates: &[Value]) -> Table {
    let mut table = new_table(&["ID", "NAME", "ARCH", "VERSIONS", "LATEST TAG"]);
    for template in templates {
        let versions = template["versions"].as_array().map(Vec::len).unwrap_or(0);
        let latest =
            template["versions"].as_array().and_then(|versions| versions.last()).map(|version| text(&version["tag"]));
        table.add_row(vec![
            text(&template["id"]),
            text(&template["name"]),
            text(&template["arch"]),
            versions.to_string(),
            latest.unwrap_or_else(|| "-".into()),
        ]);
    }
    table
}

pub fn tasks_table(tasks: &[Value]) -> Table {
    let mut table = new_table(&["ID", "KIND", "STATE", "PROGRESS", "OBJECT", "MESSAGE"]);
    for task in tasks {
        let progress = task["progress"].as_f64().unwrap_or(0.0) * 100.0;
        table.add_row(vec![
            text(&task["id"]),
            text(&task["kind"]),
            text(&task["state"]),
            format!("{progress:.0}%"),
            text(&task["object_id"]),
            text(&task["message"]),
        ]);
    }
    table
}

/// The per-host pulls of a distribution: where, how it ended, what it read or why it failed.
pub fn pulls_table(pulls: &[Value]) -> Table {
    let mut table = new_table(&["HOST", "STATE", "READ", "DETAIL"]);
    for pull in pulls {
        let read = pull["result"]["bytes_read"].as_u64().map(|bytes| indicatif::HumanBytes(bytes).to_string());
        let detail = match pull["state"].as_str() {
            Some("succeeded") if pull["result"]["already_cached"] == true => "already cached".to_owned(),
            Some("failed") => text(&pull["error"]["message"]),
            _ => text(&pull["message"]),
        };
        table.add_row(vec![text(&pull["input"]["host"]), text(&pull["state"]), read.unwrap_or_default(), detail]);
    }
    table
}

/// One event as a line: `seq time type object data`.
pub fn event_line(event: &Value) -> String {
    format!(
        "{:>6} {} {:<28} {}:{} {}",
        text(&event["seq"]),
        text(&event["time"]),
        text(&event["type"]),
        text(&event["object_kind"]),
        text(&event["object_id"]),
        if event["data"].is_null() { String::new() } else { event["data"].to_string() }
    )
}

/// A JSON array of strings as `a, b`; `-` when empty or absent.
fn names(value: &Value) -> String {
    let names: Vec<String> = value.as_array().into_iter().flatten().map(text).collect();
    if names.is_empty() { "-".into() } else { names.join(", ") }
}

fn fields_table(header: &[&str], fields: &[&str], items: &[Value]) -> Table {
    let mut table = new_table(header);
    for item in items {
        table.add_row(fields.iter().map(
            |field| {
                if item[field].is_array() { names(&item[field]) } else { text(&item[field]) }
            },
        ));
    }
    table
}

pub fn users_table(users: &[Value]) -> Table {
    fields_table(
        &["NAME", "DISPLAY NAME", "EMAIL", "GROUPS", "PASSWORD", "DISABLED", "LAST LOGIN"],
        &["name", "display_name", "email", "groups", "has_password", "disabled", "last_login_at"],
        users,
    )
}

pub fn user_groups_table(groups: &[Value]) -> Table {
    fields_table(&["NAME", "MEMBERS", "DESCRIPTION"], &["name", "members", "description"], groups)
}

pub fn roles_table(roles: &[Value]) -> Table {
    fields_table(
        &["NAME", "BUILT IN", "PERMISSIONS", "DESCRIPTION"],
        &["name", "builtin", "permissions", "description"],
        roles,
    )
}

pub fn role_bindings_table(bindings: &[Value]) -> Table {
    fields_table(
        &["ID", "ROLE", "USER", "GROUP", "PROJECT", "RESOURCES"],
        &["id", "role", "user", "group", "project", "resource_ids"],
        bindings,
    )
}

pub fn keys_table(keys: &[Value]) -> Table {
    fields_table(
        &["ID", "USER", "GROUPS", "EXPIRES", "REVOKED", "LAST USED", "DESCRIPTION"],
        &["id", "user", "groups", "expires_at", "revoked_at", "last_used_at", "description"],
        keys,
    )
}

pub fn callers_table(callers: &[Value]) -> Table {
    fields_table(
        &["NAME", "KIND", "SCHEME", "SOURCE", "PERMISSIONS"],
        &["name", "kind", "scheme", "source", "permissions"],
        callers,
    )
}
