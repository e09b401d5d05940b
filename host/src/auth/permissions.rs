//! The permission catalogue: what can be done to each kind of resource, as `resource:action`
//! strings (the names of Anka's resource permissions where they exist), and the built-in roles.

use std::fmt;

use serde::Serialize;

/// Every kind of resource a permission names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    Node,
    Group,
    Template,
    Instance,
    Task,
    Event,
    Project,
    User,
    Role,
    Key,
}

/// One permission of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Permission {
    pub resource: Resource,
    pub action: &'static str,
}

impl fmt::Display for Permission {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}:{}", self.resource.as_str(), self.action)
    }
}

impl Resource {
    pub const ALL: [Resource; 10] = [
        Resource::Node,
        Resource::Group,
        Resource::Template,
        Resource::Instance,
        Resource::Task,
        Resource::Event,
        Resource::Project,
        Resource::User,
        Resource::Role,
        Resource::Key,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Node => "node",
            Resource::Group => "group",
            Resource::Template => "template",
            Resource::Instance => "instance",
            Resource::Task => "task",
            Resource::Event => "event",
            Resource::Project => "project",
            Resource::User => "user",
            Resource::Role => "role",
            Resource::Key => "key",
        }
    }

    /// The actions on this resource, each with what it allows.
    pub fn actions(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Resource::Node => &[
                ("list", "List and read nodes (hosts) and providers"),
                ("create_instance", "Place instances on the node"),
                ("change_config", "Change a node's labels, limits, draining and maintenance"),
                ("distribute", "Distribute templates to the node"),
                ("delete_template", "Remove cached templates from the node"),
                ("remove", "Remove the node"),
                ("force_upgrade", "Force a node upgrade"),
            ],
            Resource::Group => &[
                ("list", "List and read node groups and placement plans"),
                ("create", "Create node groups"),
                ("update", "Change node groups and their members"),
                ("delete", "Delete node groups"),
            ],
            Resource::Template => &[
                ("list", "List templates"),
                ("get_config", "Read a template's versions and download its image"),
                ("create", "Create templates"),
                ("push_tag", "Add versions (tags) and upload their images"),
                ("pull", "Pull templates onto nodes"),
                ("delete_revert", "Delete templates or revert tags"),
                ("save_image", "Target of save-image"),
                ("set_arch", "Set a template's architecture"),
            ],
            Resource::Instance => &[
                ("list", "List and read instances, their snapshots and consoles"),
                ("create", "Create instances"),
                ("update", "Change instances and run actions (start, stop, suspend, snapshots)"),
                ("delete", "Delete instances"),
            ],
            Resource::Task => &[("list", "List and read tasks"), ("cancel", "Cancel tasks")],
            Resource::Event => &[("list", "Read the event log and audit trail")],
            Resource::Project => &[
                ("list", "List and read projects and their usage"),
                ("create", "Create projects"),
                ("update", "Change projects, quotas and members"),
                ("delete", "Delete empty projects"),
            ],
            Resource::User => &[
                ("list", "List and read users and user groups"),
                ("create", "Create users and user groups"),
                ("update", "Change users, passwords and group members"),
                ("delete", "Delete users and user groups"),
            ],
            Resource::Role => &[
                ("list", "List and read roles and role bindings"),
                ("create", "Create roles"),
                ("update", "Change roles; grant and revoke them"),
                ("delete", "Delete roles"),
            ],
            Resource::Key => &[
                ("list", "List every user's API keys"),
                ("create", "Create API keys for any user"),
                ("delete", "Revoke any user's API keys"),
            ],
        }
    }

    fn parse(name: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|resource| resource.as_str() == name)
    }
}

/// Parses `resource:action` (or `resource:*` for every action of the resource, or `*`).
pub fn parse_permissions(text: &str) -> Result<Vec<Permission>, String> {
    if text == "*" {
        return Ok(all_permissions());
    }
    let (resource_name, action_name) =
        text.split_once(':').ok_or_else(|| format!("permission '{text}' must be 'resource:action'"))?;
    let resource = Resource::parse(resource_name).ok_or_else(|| {
        let known: Vec<&str> = Resource::ALL.iter().map(|resource| resource.as_str()).collect();
        format!("permission '{text}': unknown resource '{resource_name}' (one of {})", known.join(", "))
    })?;
    if action_name == "*" {
        return Ok(resource.actions().iter().map(|(action, _)| Permission { resource, action }).collect());
    }
    resource
        .actions()
        .iter()
        .find(|(action, _)| *action == action_name)
        .map(|(action, _)| vec![Permission { resource, action }])
        .ok_or_else(|| {
            let known: Vec<&str> = resource.actions().iter().map(|(action, _)| *action).collect();
            format!("permission '{text}': unknown action '{action_name}' (one of {})", known.join(", "))
        })
}

pub fn all_permissions() -> Vec<Permission> {
    Resource::ALL
        .into_iter()
        .flat_map(|resource| resource.actions().iter().map(move |(action, _)| Permission { resource, action }))
        .collect()
}

/// The roles every installation has; their permissions follow this catalogue on every start.
pub fn builtin_roles() -> Vec<(&'static str, &'static str, Vec<Permission>)> {
    let by_names = |names: &[&str]| -> Vec<Permission> {
        names.iter().flat_map(|name| parse_permissions(name).unwrap_or_default()).collect()
    };
    vec![
        ("admin", "Everything, in the projects it is granted on", all_permissions()),
        (
            "member",
            "Runs instances from the project's templates",
            by_names(&[
                "node:list",
                "node:create_instance",
                "group:list",
                "template:list",
                "template:get_config",
                "template:pull",
                "instance:*",
                "task:list",
                "task:cancel",
                "event:list",
                "project:list",
            ]),
        ),
        (
            "viewer",
            "Reads everything in the project, changes nothing",
            by_names(&[
                "node:list",
                "group:list",
                "template:list",
                "template:get_config",
                "instance:list",
                "task:list",
                "event:list",
                "project:list",
            ]),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_parse_or_name_the_problem() {
        let check = |text: &str, expected: Result<usize, &str>| match (parse_permissions(text), expected) {
            (Ok(permissions), Ok(count)) => assert_eq!(permissions.len(), count, "{text}"),
            (Err(message), Err(fragment)) => assert!(message.contains(fragment), "{text}: {message}"),
            (got, expected) => panic!("{text}: got {got:?}, expected {expected:?}"),
        };
        check("node:create_instance", Ok(1));
        check("instance:*", Ok(4));
        check("*", Ok(all_permissions().len()));
        check("node", Err("must be 'resource:action'"));
        check("vm:list", Err("unknown resource 'vm'"));
        check("template:fly", Err("unknown action 'fly'"));
        assert_eq!(parse_permissions("template:push_tag").expect("valid")[0].to_string(), "template:push_tag");
    }

    #[test]
    fn builtin_roles_only_name_catalogued_permissions() {
        for (name, _, permissions) in builtin_roles() {
            assert!(!permissions.is_empty(), "{name}");
        }
    }
}
