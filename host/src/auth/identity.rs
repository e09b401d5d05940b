//! Who can act: users, user groups, roles and their bindings, API keys, sessions and projects.
//! Secrets appear here only as hashes, and none of these types serializes a hash.

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use chrono::{DateTime, Utc};

/// The project everything belongs to unless created in another one.
pub const DEFAULT_PROJECT_ID: Uuid = Uuid::from_u128(0x00000000_0000_4000_8000_000000000001);

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct User {
    pub id: Uuid,
    pub name: String,
    pub display_name: String,
    pub email: String,
    /// Whether the user can log in with a password.
    pub has_password: bool,
    pub disabled: bool,
    /// Set for users an external issuer (OIDC) vouches for.
    pub external_issuer: Option<String>,
    pub external_subject: Option<String>,
    /// Names of the user groups the user is in.
    pub groups: Vec<String>,
    pub last_login_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip)]
    pub password_hash: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserGroup {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    /// Names of the members.
    pub members: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Role {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    /// `resource:action` strings.
    pub permissions: Vec<String>,
    /// Built-in roles follow the permission catalogue and cannot be changed or deleted.
    pub builtin: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A role granted to a user or a user group.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RoleBinding {
    pub id: Uuid,
    pub role: String,
    /// Exactly one of `user` and `group` is set.
    pub user: Option<String>,
    pub group: Option<String>,
    /// The project the grant applies in; `None`: every project.
    pub project: Option<String>,
    /// Only these resources (ids); `None`: all resources of the project.
    pub resource_ids: Option<Vec<String>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApiKey {
    /// Chosen by its creator, unique.
    pub id: String,
    /// The user the key belongs to.
    pub user: String,
    pub description: String,
    /// User groups the key acts with; empty: the user's own access.
    pub groups: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    #[serde(skip)]
    pub user_id: Uuid,
    #[serde(skip)]
    pub secret_hash: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Session {
    pub id: Uuid,
    pub user: String,
    /// The address the session was started from.
    pub source: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    /// When the session ends unless used again.
    pub expires_at: DateTime<Utc>,
    /// When the session ends however much it is used.
    pub ends_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub user_id: Uuid,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Project {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub quota: Quota,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Limits of a project; `None` is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    pub max_instances: Option<u64>,
    pub max_vcpu: Option<u64>,
    pub max_ram_mb: Option<u64>,
    pub max_template_bytes: Option<u64>,
}

/// What a project uses now, counted against its [`Quota`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Usage {
    /// Instances not terminated.
    pub instances: u64,
    pub vcpu: u64,
    pub ram_mb: u64,
    /// Bytes of the project's template images.
    pub template_bytes: u64,
}
