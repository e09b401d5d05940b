//! What a caller may do: the permissions of its role bindings, per project and resource.
//! Every service call that reads or changes something checks a [`Caller`] first.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::Principal;
use super::permissions::{Permission, Resource, parse_permissions};

/// A principal with its resolved access, the scheme that authenticated it and where it came
/// from: what the service layer authorizes and the audit trail records.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub access: Access,
    /// The auth scheme that authenticated the request (`token`, `basic`…); empty inside Hyperplane.
    pub scheme: String,
    /// The client's address; empty inside Hyperplane.
    pub source: String,
}

impl Caller {
    /// Hyperplane itself: reconciliation, recovery, tests of the service layer.
    pub fn system() -> Caller {
        Caller {
            principal: Principal::system(),
            access: Access::everything(),
            scheme: String::new(),
            source: String::new(),
        }
    }

    /// The operator's admin token.
    pub fn admin(scheme: &str, source: &str) -> Caller {
        Caller {
            principal: Principal::admin(),
            access: Access::everything(),
            scheme: scheme.into(),
            source: source.into(),
        }
    }

    /// For events: `alice`, `alice/ci-runner`, `admin`, `system`.
    pub fn actor(&self) -> &str {
        &self.principal.name
    }

    pub fn user_id(&self) -> Option<Uuid> {
        match &self.principal.kind {
            super::PrincipalKind::User { user_id, .. } | super::PrincipalKind::ApiKey { user_id, .. } => Some(*user_id),
            super::PrincipalKind::Admin | super::PrincipalKind::System => None,
        }
    }
}

/// One grant: permissions in a project (or all), on some resources (or all).
#[derive(Debug, Clone)]
struct Grant {
    permissions: BTreeSet<Permission>,
    project_id: Option<Uuid>,
    resource_ids: Option<BTreeSet<String>>,
}

/// The union of a caller's grants.
#[derive(Debug, Clone, Default)]
pub struct Access {
    everything: bool,
    grants: Vec<Grant>,
}

/// Which projects a caller may see something in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectScope {
    All,
    Only(BTreeSet<Uuid>),
}

impl ProjectScope {
    /// No project at all.
    pub fn is_empty(&self) -> bool {
        matches!(self, ProjectScope::Only(projects) if projects.is_empty())
    }

    pub fn contains(&self, project_id: Uuid) -> bool {
        match self {
            ProjectScope::All => true,
            ProjectScope::Only(projects) => projects.contains(&project_id),
        }
    }
}

impl Access {
    pub fn everything() -> Access {
        Access { everything: true, grants: Vec::new() }
    }

    /// Access from bindings: each a role's `resource:action` strings, a project (`None`: all)
    /// and resource ids (`None`: all). Strings not in the catalogue (a permission a newer
    /// version removed) grant nothing.
    pub fn from_bindings(
        bindings: impl IntoIterator<Item = (Vec<String>, Option<Uuid>, Option<Vec<String>>)>,
    ) -> Access {
        let grants = bindings
            .into_iter()
            .map(|(permissions, project_id, resource_ids)| Grant {
                permissions: permissions.iter().filter_map(|text| parse_permissions(text).ok()).flatten().collect(),
                project_id,
                resource_ids: resource_ids.map(|ids| ids.into_iter().collect()),
            })
            .collect();
        Access { everything: false, grants }
    }

    /// Whether `permission` is granted in `project_id` (`None`: outside any project, such as
    /// nodes and users) on `resource_id` (`None`: the resource kind as a whole, e.g. to list).
    pub fn allows(&self, permission: Permission, project_id: Option<Uuid>, resource_id: Option<&str>) -> bool {
        self.everything
            || self.grants.iter().any(|grant| {
                grant.permissions.contains(&permission)
                    && (grant.project_id.is_none() || grant.project_id == project_id)
                    && match (&grant.resource_ids, resource_id) {
                        (None, _) => true,
                        (Some(ids), Some(id)) => ids.contains(id),
                        // Listing with a grant on some ids: allowed; the list is filtered by id.
                        (Some(_), None) => true,
                    }
            })
    }

    /// The projects where `permission` is granted on something.
    pub fn projects_with(&self, permission: Permission) -> ProjectScope {
        if self.everything {
            return ProjectScope::All;
        }
        let mut projects = BTreeSet::new();
        for grant in self.grants.iter().filter(|grant| grant.permissions.contains(&permission)) {
            match grant.project_id {
                None => return ProjectScope::All,
                Some(project_id) => {
                    projects.insert(project_id);
                }
            }
        }
        ProjectScope::Only(projects)
    }

    /// Every permission granted anywhere, as `resource:action` (for `GET /v1/sessions/current`).
    pub fn summary(&self) -> Vec<String> {
        if self.everything {
            return vec!["*".into()];
        }
        let all: BTreeSet<String> =
            self.grants.iter().flat_map(|grant| grant.permissions.iter().map(ToString::to_string)).collect();
        all.into_iter().collect()
    }
}

/// Shorthand for a catalogue permission; an unknown pair is a bug caught by the tests.
pub fn permission(resource: Resource, action: &'static str) -> Permission {
    debug_assert!(resource.actions().iter().any(|(known, _)| *known == action), "{resource:?}:{action}");
    Permission { resource, action }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_apply_in_their_project_and_to_their_resources() {
        let project_a = Uuid::from_u128(1);
        let project_b = Uuid::from_u128(2);
        let access = Access::from_bindings([
            (vec!["instance:*".to_owned()], Some(project_a), None),
            (vec!["template:pull".to_owned()], None, Some(vec!["t1".to_owned()])),
        ]);
        let create = permission(Resource::Instance, "create");
        let pull = permission(Resource::Template, "pull");
        assert!(access.allows(create, Some(project_a), None));
        assert!(!access.allows(create, Some(project_b), None));
        assert!(access.allows(pull, Some(project_b), Some("t1")));
        assert!(!access.allows(pull, Some(project_b), Some("t2")));
        assert!(!access.allows(permission(Resource::Node, "remove"), None, None));
        assert_eq!(access.projects_with(create), ProjectScope::Only([project_a].into()));
        assert_eq!(access.projects_with(pull), ProjectScope::All);
        assert!(Access::everything().allows(permission(Resource::User, "delete"), None, Some("x")));
        assert_eq!(Access::default().projects_with(create), ProjectScope::Only(BTreeSet::new()));
    }
}
