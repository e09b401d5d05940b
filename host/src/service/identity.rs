//! Users, user groups, roles and grants, API keys, sessions, and the credential checks auth
//! plugins call ([`Credentials`]): secrets are checked here and nowhere else. Passwords are
//! Argon2id hashes; API key secrets and session tokens are 256 random bits stored as SHA-256.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use rand::Rng;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Service, ServiceError, ServiceResult, check_name};
use crate::auth::access::permission;
use crate::auth::identity::{ApiKey, Role, RoleBinding, Session, User, UserGroup};
use crate::auth::permissions::{Resource, builtin_roles, parse_permissions};
use crate::auth::{Access, AdminToken, Caller, CredentialError, Credentials, NewSession, Principal, PrincipalKind};
use crate::model::NewEvent;
use crate::store::{self, identity as identity_store};

/// Failed password checks counted per user and per source address over this window.
const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
const MAX_FAILURES_PER_USER: usize = 5;
const MAX_FAILURES_PER_SOURCE: usize = 20;
/// Uses of a session or key are written at most this often.
const TOUCH_INTERVAL: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
const SESSION_TOKEN_PREFIX: &str = "hps_";
const MIN_PASSWORD_LENGTH: usize = 8;

// ----- requests -----

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    /// At least 8 characters; without one the user logs in through an external identity only.
    pub password: Option<String>,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub email: String,
    /// User groups (by name) to add the user to.
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    /// A new password; every session of the user ends.
    pub password: Option<String>,
    pub display_name: Option<String>,
    pub email: Option<String>,
    /// A disabled user cannot authenticate; its sessions end.
    pub disabled: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUserGroup {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRole {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// `resource:action`, `resource:*` or `*`.
    pub permissions: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRoleBinding {
    pub role: String,
    /// Exactly one of `user` and `group` (names).
    pub user: Option<String>,
    pub group: Option<String>,
    /// Project name; absent: every project.
    pub project: Option<String>,
    /// Only these resources (ids); absent: all of the project.
    pub resource_ids: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    /// The key's id, unique: 1-64 letters, digits, `.`, `_`, `-`.
    pub id: String,
    /// Seconds the key lives; absent: until revoked.
    pub ttl: Option<u64>,
    /// User groups the key acts with (the user must be in them); empty: the user's own access.
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub description: String,
    /// The user the key belongs to (needs `key:create`); absent: the caller.
    pub user: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyPatch {
    pub groups: Option<Vec<String>>,
    /// Seconds from now; the key's expiry moves.
    pub ttl: Option<u64>,
    pub description: Option<String>,
}

/// A key just created: the only time its secret is shown.
#[derive(Debug, Clone, serde::Serialize, ToSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub key: ApiKey,
    /// `<id>:<secret>`: send it as `X-API-Key`, or as `Authorization: Bearer`.
    pub token: String,
}

/// A session just started: the only time its token is shown.
#[derive(Debug, Clone, serde::Serialize, ToSchema)]
pub struct StartedSession {
    #[serde(flatten)]
    pub session: Session,
    /// Send it as `Authorization: Bearer`, the `Nano-Session` header or the `authenticationToken` cookie.
    pub token: String,
}

// ----- login throttling -----

/// Failed password checks per user and per source, in memory (one replica).
#[derive(Default)]
pub(super) struct LoginThrottle {
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl LoginThrottle {
    /// The wait still due for `user` from `source`, if either is over its limit.
    fn wait(&self, user: &str, source: &str) -> Option<Duration> {
        let mut failures = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        let mut longest = None;
        for (key, limit) in
            [(format!("user:{user}"), MAX_FAILURES_PER_USER), (source_key(source), MAX_FAILURES_PER_SOURCE)]
        {
            let Some(times) = failures.get_mut(&key) else { continue };
            times.retain(|time| now.duration_since(*time) < FAILURE_WINDOW);
            if times.len() >= limit
                && let Some(oldest) = times.first()
            {
                let wait = FAILURE_WINDOW.saturating_sub(now.duration_since(*oldest));
                longest = Some(longest.map_or(wait, |current: Duration| current.max(wait)));
            }
        }
        longest
    }

    fn failed(&self, user: &str, source: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        for key in [format!("user:{user}"), source_key(source)] {
            failures.entry(key).or_default().push(now);
        }
    }

    fn succeeded(&self, user: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        failures.remove(&format!("user:{user}"));
    }
}

/// Throttling by address, whatever the port.
fn source_key(source: &str) -> String {
    let address = source.parse::<std::net::SocketAddr>().map(|address| address.ip().to_string());
    format!("source:{}", address.unwrap_or_else(|_| source.to_owned()))
}

// ----- secrets -----

fn random_secret() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn digests_match(stored_hex: &str, secret: &str) -> bool {
    bool::from(stored_hex.as_bytes().ct_eq(digest(secret).as_bytes()))
}

async fn hash_password(password: String) -> ServiceResult<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::encode_b64(&rand::rng().random::<[u8; 16]>())
            .map_err(|error| ServiceError::Internal(format!("password salt: {error}")))?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|error| ServiceError::Internal(format!("password hash: {error}")))
    })
    .await
    .map_err(|error| ServiceError::Internal(format!("password hashing stopped: {error}")))?
}

/// Verifies in constant time; an absent hash costs the same as a present one.
async fn password_matches(stored_hash: Option<String>, password: String) -> bool {
    static DUMMY_HASH: OnceLock<String> = OnceLock::new();
    tokio::task::spawn_blocking(move || {
        let dummy = DUMMY_HASH.get_or_init(|| {
            let salt = SaltString::encode_b64(&[7; 16]).expect("a fixed 16-byte salt encodes");
            Argon2::default().hash_password(b"no such user", &salt).map(|hash| hash.to_string()).unwrap_or_default()
        });
        let (hash, real) = match &stored_hash {
            Some(hash) => (hash.as_str(), true),
            None => (dummy.as_str(), false),
        };
        let matches = PasswordHash::new(hash)
            .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
            .unwrap_or(false);
        real && matches
    })
    .await
    .unwrap_or(false)
}

fn check_password(password: &str) -> ServiceResult<()> {
    if password.chars().count() < MIN_PASSWORD_LENGTH {
        return Err(ServiceError::Invalid(format!("password must have at least {MIN_PASSWORD_LENGTH} characters")));
    }
    Ok(())
}

fn forbidden(caller: &Caller, needed: &str) -> ServiceError {
    ServiceError::Forbidden(format!("{} lacks the permission {needed}", caller.actor()))
}

impl Service {
    /// The credential checks for the auth schemes; `admin_token` authenticates as the built-in
    /// administrator.
    pub fn credentials(&self, admin_token: AdminToken) -> Arc<dyn Credentials> {
        Arc::new(ServiceCredentials { service: self.clone(), admin_token })
    }

    /// Creates the built-in roles, or brings their permissions up to date.
    pub(super) async fn ensure_builtin_roles(&self) -> ServiceResult<()> {
        let mut transaction = self.store().begin().await?;
        let now = store::now();
        for (name, description, permissions) in builtin_roles() {
            let existing = identity_store::get_role_by_name(&mut transaction, name).await?;
            let role = Role {
                id: existing.as_ref().map_or_else(Uuid::now_v7, |role| role.id),
                name: name.into(),
                description: description.into(),
                permissions: permissions.iter().map(ToString::to_string).collect(),
                builtin: true,
                created_at: existing.as_ref().map_or(now, |role| role.created_at),
                updated_at: now,
            };
            identity_store::save_role(&mut transaction, &role).await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// The caller behind an authenticated principal: its access from its role bindings.
    pub async fn caller(&self, principal: Principal, scheme: &str, source: &str) -> ServiceResult<Caller> {
        let access = match &principal.kind {
            PrincipalKind::Admin | PrincipalKind::System => Access::everything(),
            PrincipalKind::User { user_id, .. } => self.access_of(*user_id, None).await?,
            PrincipalKind::ApiKey { user_id, key_id } => {
                let mut reader = self.store().reader().await?;
                let groups = identity_store::get_api_key(&mut reader, key_id).await?.map(|key| key.groups);
                drop(reader);
                match groups {
                    Some(groups) if !groups.is_empty() => self.access_of(*user_id, Some(&groups)).await?,
                    _ => self.access_of(*user_id, None).await?,
                }
            }
        };
        Ok(Caller { principal, access, scheme: scheme.into(), source: source.into() })
    }

    async fn access_of(&self, user_id: Uuid, only_groups: Option<&[String]>) -> ServiceResult<Access> {
        let mut reader = self.store().reader().await?;
        let bindings = identity_store::effective_bindings(&mut reader, user_id, only_groups).await?;
        Ok(Access::from_bindings(
            bindings.into_iter().map(|binding| (binding.permissions, binding.project_id, binding.resource_ids)),
        ))
    }

    /// Fails with 403 unless `caller` has `resource:action` (in `project_id`, on `resource_id`);
    /// a refusal is recorded in the audit trail.
    pub(crate) async fn require(
        &self,
        caller: &Caller,
        resource: Resource,
        action: &'static str,
        project_id: Option<Uuid>,
        resource_id: Option<&str>,
    ) -> ServiceResult<()> {
        let needed = permission(resource, action);
        if caller.access.allows(needed, project_id, resource_id) {
            return Ok(());
        }
        let refusal = NewEvent::new("audit.denied", resource.as_str(), resource_id.unwrap_or(""))
            .by(caller)
            .outcome("denied")
            .data(json!({ "permission": needed.to_string(), "project_id": project_id }));
        self.record_audit_event(refusal).await?;
        Err(forbidden(caller, &needed.to_string()))
    }

    /// Appends an audit event that goes with no state change, in a transaction of its own.
    async fn record_audit_event(&self, event: NewEvent) -> store::StoreResult<()> {
        let mut transaction = self.store().begin().await?;
        transaction.append_event(event);
        transaction.commit().await
    }

    /// Records a mutating call that did not succeed and that no service check recorded: refused
    /// authentication (`who` is `None`) and failed calls. `path` is recorded without its query.
    pub async fn record_failed_call(
        &self,
        who: Option<(&Principal, &str)>,
        source: &str,
        method: &str,
        path: &str,
        status: u16,
    ) {
        let path = path.split('?').next().unwrap_or_default();
        let (kind, actor, scheme, outcome) = match who {
            Some((principal, scheme)) => ("audit.call_failed", principal.name.as_str(), scheme, "failed"),
            None => ("audit.unauthenticated", "anonymous", "", "denied"),
        };
        let mut event = NewEvent::new(kind, "request", path)
            .actor(actor)
            .outcome(outcome)
            .data(json!({ "method": method, "path": path, "status": status }));
        event.scheme = scheme.into();
        event.source = source.into();
        if let Err(error) = self.record_audit_event(event).await {
            tracing::warn!(error = ?error, kind, "cannot record a failed call in the audit trail");
        }
    }

    // ----- users -----

    pub async fn list_users(&self, caller: &Caller) -> ServiceResult<Vec<User>> {
        self.require(caller, Resource::User, "list", None, None).await?;
        Ok(identity_store::list_users(&mut *self.store().reader().await?).await?)
    }

    pub async fn get_user(&self, caller: &Caller, name: &str) -> ServiceResult<User> {
        let user = self.find_user(name).await?;
        if caller.user_id() != Some(user.id) {
            self.require(caller, Resource::User, "list", None, Some(&user.id.to_string())).await?;
        }
        Ok(user)
    }

    async fn find_user(&self, name: &str) -> ServiceResult<User> {
        identity_store::get_user_by_name(&mut *self.store().reader().await?, name)
            .await?
            .ok_or_else(|| ServiceError::not_found("user", name))
    }

    pub async fn create_user(&self, caller: &Caller, request: NewUser) -> ServiceResult<User> {
        self.require(caller, Resource::User, "create", None, None).await?;
        check_name("user name", &request.name, 64)?;
        if let Some(password) = &request.password {
            check_password(password)?;
        }
        let password_hash = match request.password {
            Some(password) => Some(hash_password(password).await?),
            None => None,
        };
        let mut transaction = self.store().begin().await?;
        if identity_store::get_user_by_name(&mut transaction, &request.name).await?.is_some() {
            return Err(ServiceError::Conflict(format!("user '{}' already exists", request.name)));
        }
        let mut group_ids = Vec::new();
        for group in &request.groups {
            let found = identity_store::get_user_group_by_name(&mut transaction, group).await?;
            group_ids
                .push(found.ok_or_else(|| ServiceError::Invalid(format!("user group '{group}' does not exist")))?.id);
        }
        let now = store::now();
        let user = User {
            id: Uuid::now_v7(),
            name: request.name,
            display_name: request.display_name,
            email: request.email,
            has_password: password_hash.is_some(),
            disabled: false,
            external_issuer: None,
            external_subject: None,
            groups: Vec::new(),
            last_login_at: None,
            created_at: now,
            updated_at: now,
            password_hash,
        };
        identity_store::save_user(&mut transaction, &user).await?;
        for group_id in group_ids {
            identity_store::add_member(&mut transaction, group_id, user.id).await?;
        }
        transaction
            .append_event(NewEvent::new("user.created", "user", user.id).by(caller).data(json!({ "name": user.name })));
        let user = identity_store::get_user(&mut transaction, user.id)
            .await?
            .ok_or_else(|| ServiceError::not_found("user", &user.name))?;
        transaction.commit().await?;
        Ok(user)
    }

    /// Changes a user; users may change their own password, display name and email.
    pub async fn update_user(&self, caller: &Caller, name: &str, patch: UserPatch) -> ServiceResult<User> {
        let mut user = self.find_user(name).await?;
        let own = caller.user_id() == Some(user.id);
        if !own || patch.disabled.is_some() {
            self.require(caller, Resource::User, "update", None, Some(&user.id.to_string())).await?;
        }
        let ends_sessions = patch.password.is_some() || patch.disabled == Some(true);
        if let Some(password) = patch.password {
            check_password(&password)?;
            user.password_hash = Some(hash_password(password).await?);
            user.has_password = true;
        }
        if let Some(display_name) = patch.display_name {
            user.display_name = display_name;
        }
        if let Some(email) = patch.email {
            user.email = email;
        }
        if let Some(disabled) = patch.disabled {
            user.disabled = disabled;
        }
        user.updated_at = store::now();
        let mut transaction = self.store().begin().await?;
        identity_store::save_user(&mut transaction, &user).await?;
        if ends_sessions {
            identity_store::revoke_sessions_of_user(&mut transaction, user.id, &user.updated_at).await?;
        }
        transaction.append_event(NewEvent::new("user.updated", "user", user.id).by(caller).data(json!({
            "name": user.name, "password_changed": ends_sessions && user.has_password, "disabled": user.disabled
        })));
        transaction.commit().await?;
        Ok(user)
    }

    pub async fn delete_user(&self, caller: &Caller, name: &str) -> ServiceResult<()> {
        let user = self.find_user(name).await?;
        self.require(caller, Resource::User, "delete", None, Some(&user.id.to_string())).await?;
        let mut transaction = self.store().begin().await?;
        identity_store::delete_user(&mut transaction, user.id).await?;
        transaction
            .append_event(NewEvent::new("user.deleted", "user", user.id).by(caller).data(json!({ "name": user.name })));
        transaction.commit().await?;
        Ok(())
    }

    // ----- user groups -----

    pub async fn list_user_groups(&self, caller: &Caller) -> ServiceResult<Vec<UserGroup>> {
        self.require(caller, Resource::User, "list", None, None).await?;
        Ok(identity_store::list_user_groups(&mut *self.store().reader().await?).await?)
    }

    async fn find_user_group(&self, name: &str) -> ServiceResult<UserGroup> {
        identity_store::get_user_group_by_name(&mut *self.store().reader().await?, name)
            .await?
            .ok_or_else(|| ServiceError::not_found("user group", name))
    }

    pub async fn create_user_group(&self, caller: &Caller, request: NewUserGroup) -> ServiceResult<UserGroup> {
        self.require(caller, Resource::User, "create", None, None).await?;
        check_name("user group name", &request.name, 64)?;
        let mut transaction = self.store().begin().await?;
        if identity_store::get_user_group_by_name(&mut transaction, &request.name).await?.is_some() {
            return Err(ServiceError::Conflict(format!("user group '{}' already exists", request.name)));
        }
        let now = store::now();
        let group = UserGroup {
            id: Uuid::now_v7(),
            name: request.name,
            description: request.description,
            members: Vec::new(),
            created_at: now,
            updated_at: now,
        };
        identity_store::insert_user_group(&mut transaction, &group).await?;
        transaction.append_event(
            NewEvent::new("user_group.created", "user_group", group.id).by(caller).data(json!({ "name": group.name })),
        );
        transaction.commit().await?;
        Ok(group)
    }

    pub async fn delete_user_group(&self, caller: &Caller, name: &str) -> ServiceResult<()> {
        let group = self.find_user_group(name).await?;
        self.require(caller, Resource::User, "delete", None, None).await?;
        let mut transaction = self.store().begin().await?;
        identity_store::delete_user_group(&mut transaction, group.id).await?;
        transaction.append_event(
            NewEvent::new("user_group.deleted", "user_group", group.id).by(caller).data(json!({ "name": group.name })),
        );
        transaction.commit().await?;
        Ok(())
    }

    /// Adds (`member = true`) or removes a user from a user group.
    pub async fn set_user_group_member(
        &self,
        caller: &Caller,
        group_name: &str,
        user_name: &str,
        member: bool,
    ) -> ServiceResult<UserGroup> {
        let group = self.find_user_group(group_name).await?;
        let user = self.find_user(user_name).await?;
        self.require(caller, Resource::User, "update", None, None).await?;
        let mut transaction = self.store().begin().await?;
        if member {
            identity_store::add_member(&mut transaction, group.id, user.id).await?;
        } else if !identity_store::remove_member(&mut transaction, group.id, user.id).await? {
            return Err(ServiceError::not_found("member", format!("{user_name} of {group_name}")));
        }
        let kind = if member { "user_group.member_added" } else { "user_group.member_removed" };
        transaction
            .append_event(NewEvent::new(kind, "user_group", group.id).by(caller).data(json!({ "user": user.name })));
        transaction.commit().await?;
        self.find_user_group(group_name).await
    }

    // ----- roles and grants -----

    pub async fn list_roles(&self, caller: &Caller) -> ServiceResult<Vec<Role>> {
        self.require(caller, Resource::Role, "list", None, None).await?;
        Ok(identity_store::list_roles(&mut *self.store().reader().await?).await?)
    }

    pub async fn create_role(&self, caller: &Caller, request: NewRole) -> ServiceResult<Role> {
        self.require(caller, Resource::Role, "create", None, None).await?;
        check_name("role name", &request.name, 64)?;
        let permissions = normalized_permissions(&request.permissions)?;
        let mut transaction = self.store().begin().await?;
        if identity_store::get_role_by_name(&mut transaction, &request.name).await?.is_some() {
            return Err(ServiceError::Conflict(format!("role '{}' already exists", request.name)));
        }
        let now = store::now();
        let role = Role {
            id: Uuid::now_v7(),
            name: request.name,
            description: request.description,
            permissions,
            builtin: false,
            created_at: now,
            updated_at: now,
        };
        identity_store::save_role(&mut transaction, &role).await?;
        transaction.append_event(NewEvent::new("role.created", "role", role.id).by(caller).data(json!({
            "name": role.name, "permissions": role.permissions
        })));
        transaction.commit().await?;
        Ok(role)
    }

    pub async fn delete_role(&self, caller: &Caller, name: &str) -> ServiceResult<()> {
        self.require(caller, Resource::Role, "delete", None, None).await?;
        let mut transaction = self.store().begin().await?;
        let role = identity_store::get_role_by_name(&mut transaction, name)
            .await?
            .ok_or_else(|| ServiceError::not_found("role", name))?;
        if role.builtin {
            return Err(ServiceError::Conflict(format!("role '{name}' is built in and cannot be deleted")));
        }
        identity_store::delete_role(&mut transaction, role.id).await?;
        transaction
            .append_event(NewEvent::new("role.deleted", "role", role.id).by(caller).data(json!({ "name": role.name })));
        transaction.commit().await?;
        Ok(())
    }

    pub async fn list_role_bindings(&self, caller: &Caller) -> ServiceResult<Vec<RoleBinding>> {
        self.require(caller, Resource::Role, "list", None, None).await?;
        Ok(identity_store::list_bindings(&mut *self.store().reader().await?).await?)
    }

    /// Grants a role to a user or user group, in a project or everywhere.
    pub async fn grant_role(&self, caller: &Caller, request: NewRoleBinding) -> ServiceResult<RoleBinding> {
        self.require(caller, Resource::Role, "update", None, None).await?;
        let mut transaction = self.store().begin().await?;
        let role = identity_store::get_role_by_name(&mut transaction, &request.role)
            .await?
            .ok_or_else(|| ServiceError::Invalid(format!("role '{}' does not exist", request.role)))?;
        let (user_id, group_id) = match (&request.user, &request.group) {
            (Some(user), None) => {
                let found = identity_store::get_user_by_name(&mut transaction, user).await?;
                (Some(found.ok_or_else(|| ServiceError::Invalid(format!("user '{user}' does not exist")))?.id), None)
            }
            (None, Some(group)) => {
                let found = identity_store::get_user_group_by_name(&mut transaction, group).await?;
                (
                    None,
                    Some(
                        found.ok_or_else(|| ServiceError::Invalid(format!("user group '{group}' does not exist")))?.id,
                    ),
                )
            }
            _ => return Err(ServiceError::Invalid("give exactly one of 'user' and 'group'".into())),
        };
        let project_id = match &request.project {
            Some(project) => Some(
                store::projects::get_by_name(&mut transaction, project)
                    .await?
                    .ok_or_else(|| ServiceError::Invalid(format!("project '{project}' does not exist")))?
                    .id,
            ),
            None => None,
        };
        let binding = identity_store::NewBinding {
            id: Uuid::now_v7(),
            role_id: role.id,
            user_id,
            group_id,
            project_id,
            resource_ids: request.resource_ids.clone(),
            created_at: store::now(),
        };
        identity_store::insert_binding(&mut transaction, &binding).await?;
        transaction.append_event(NewEvent::new("role.granted", "role_binding", binding.id).by(caller).data(json!({
            "role": request.role, "user": request.user, "group": request.group,
            "project": request.project, "resource_ids": request.resource_ids
        })));
        transaction.commit().await?;
        let bindings = identity_store::list_bindings(&mut *self.store().reader().await?).await?;
        bindings
            .into_iter()
            .find(|found| found.id == binding.id)
            .ok_or_else(|| ServiceError::not_found("role binding", binding.id))
    }

    pub async fn revoke_role_binding(&self, caller: &Caller, id: Uuid) -> ServiceResult<()> {
        self.require(caller, Resource::Role, "update", None, None).await?;
        let mut transaction = self.store().begin().await?;
        if !identity_store::delete_binding(&mut transaction, id).await? {
            return Err(ServiceError::not_found("role binding", id));
        }
        transaction.append_event(NewEvent::new("role.revoked", "role_binding", id).by(caller));
        transaction.commit().await?;
        Ok(())
    }

    // ----- API keys -----

    /// The caller's own keys, or every key with `key:list`.
    pub async fn list_api_keys(&self, caller: &Caller) -> ServiceResult<Vec<ApiKey>> {
        let everyone = caller.access.allows(permission(Resource::Key, "list"), None, None);
        let user_id = match (everyone, caller.user_id()) {
            (true, _) => None,
            (false, Some(user_id)) => Some(user_id),
            (false, None) => return Err(forbidden(caller, "key:list")),
        };
        Ok(identity_store::list_api_keys(&mut *self.store().reader().await?, user_id).await?)
    }

    async fn find_api_key(&self, caller: &Caller, id: &str) -> ServiceResult<ApiKey> {
        let key = identity_store::get_api_key(&mut *self.store().reader().await?, id)
            .await?
            .ok_or_else(|| ServiceError::not_found("API key", id))?;
        if caller.user_id() != Some(key.user_id) {
            self.require(caller, Resource::Key, "list", None, Some(id)).await?;
        }
        Ok(key)
    }

    pub async fn get_api_key(&self, caller: &Caller, id: &str) -> ServiceResult<ApiKey> {
        self.find_api_key(caller, id).await
    }

    /// Creates a key for the caller (or, with `key:create`, for another user).
    pub async fn create_api_key(&self, caller: &Caller, request: NewApiKey) -> ServiceResult<CreatedApiKey> {
        check_name("key id", &request.id, 64)?;
        let user = match &request.user {
            Some(name) => self.find_user(name).await?,
            None => {
                let user_id = caller.user_id().ok_or_else(|| {
                    ServiceError::Invalid(format!("{} is not a user: name the key's 'user'", caller.actor()))
                })?;
                let mut reader = self.store().reader().await?;
                identity_store::get_user(&mut reader, user_id)
                    .await?
                    .ok_or_else(|| ServiceError::not_found("user", user_id))?
            }
        };
        if caller.user_id() != Some(user.id) {
            self.require(caller, Resource::Key, "create", None, None).await?;
        }
        if let Some(missing) = request.groups.iter().find(|group| !user.groups.contains(group)) {
            return Err(ServiceError::Invalid(format!("user '{}' is not in user group '{missing}'", user.name)));
        }
        let now = store::now();
        let secret = random_secret();
        let key = ApiKey {
            id: request.id,
            user: user.name.clone(),
            description: request.description,
            groups: request.groups,
            expires_at: expiry(now, request.ttl)?,
            revoked_at: None,
            last_used_at: None,
            created_at: now,
            user_id: user.id,
            secret_hash: digest(&secret),
        };
        let mut transaction = self.store().begin().await?;
        if identity_store::get_api_key(&mut transaction, &key.id).await?.is_some() {
            return Err(ServiceError::Conflict(format!("API key '{}' already exists", key.id)));
        }
        identity_store::save_api_key(&mut transaction, &key).await?;
        transaction.append_event(NewEvent::new("key.created", "key", &key.id).by(caller).data(json!({
            "user": key.user, "groups": key.groups, "expires_at": key.expires_at
        })));
        transaction.commit().await?;
        let token = format!("{}:{secret}", key.id);
        Ok(CreatedApiKey { key, token })
    }

    pub async fn update_api_key(&self, caller: &Caller, id: &str, patch: ApiKeyPatch) -> ServiceResult<ApiKey> {
        let mut key = self.find_api_key(caller, id).await?;
        if caller.user_id() != Some(key.user_id) {
            self.require(caller, Resource::Key, "create", None, Some(id)).await?;
        }
        if let Some(groups) = patch.groups {
            let user = identity_store::get_user(&mut *self.store().reader().await?, key.user_id)
                .await?
                .ok_or_else(|| ServiceError::not_found("user", key.user_id))?;
            if let Some(missing) = groups.iter().find(|group| !user.groups.contains(group)) {
                return Err(ServiceError::Invalid(format!("user '{}' is not in user group '{missing}'", user.name)));
            }
            key.groups = groups;
        }
        if let Some(ttl) = patch.ttl {
            key.expires_at = expiry(store::now(), Some(ttl))?;
        }
        if let Some(description) = patch.description {
            key.description = description;
        }
        let mut transaction = self.store().begin().await?;
        identity_store::save_api_key(&mut transaction, &key).await?;
        transaction.append_event(NewEvent::new("key.updated", "key", &key.id).by(caller).data(json!({
            "groups": key.groups, "expires_at": key.expires_at
        })));
        transaction.commit().await?;
        Ok(key)
    }

    /// Revokes a key at once; it stays listed as revoked.
    pub async fn revoke_api_key(&self, caller: &Caller, id: &str) -> ServiceResult<ApiKey> {
        let mut key = self.find_api_key(caller, id).await?;
        if caller.user_id() != Some(key.user_id) {
            self.require(caller, Resource::Key, "delete", None, Some(id)).await?;
        }
        if key.revoked_at.is_none() {
            key.revoked_at = Some(store::now());
            let mut transaction = self.store().begin().await?;
            identity_store::save_api_key(&mut transaction, &key).await?;
            transaction.append_event(NewEvent::new("key.revoked", "key", &key.id).by(caller));
            transaction.commit().await?;
        }
        Ok(key)
    }

    // ----- sessions -----

    /// Logs a user in with a password: a new session.
    pub async fn login(&self, user: &str, password: &str, source: &str) -> ServiceResult<StartedSession> {
        let principal = self.check_password(user, password, source).await.map_err(|error| match error {
            CredentialError::Rejected(message) => ServiceError::Unauthorized(message),
            CredentialError::Throttled(wait) => ServiceError::Throttled(wait),
            CredentialError::Unavailable(message) => ServiceError::Unavailable(message),
        })?;
        self.start_session(&principal, source, "password").await
    }

    /// A new session for the calling user (authenticated by password, say), for clients that
    /// then send the session token instead.
    pub async fn create_session(&self, caller: &Caller) -> ServiceResult<StartedSession> {
        self.start_session(&caller.principal, &caller.source, &caller.scheme).await
    }

    async fn start_session(&self, principal: &Principal, source: &str, how: &str) -> ServiceResult<StartedSession> {
        let PrincipalKind::User { user_id, .. } = principal.kind else {
            return Err(ServiceError::Invalid(format!("{} cannot start a session; users can", principal.name)));
        };
        let now = store::now();
        let token = format!("{SESSION_TOKEN_PREFIX}{}", random_secret());
        let settings = &self.inner.settings;
        let ends_at = now + settings.session_max_lifetime;
        let session = Session {
            id: Uuid::now_v7(),
            user: principal.name.clone(),
            source: source.into(),
            created_at: now,
            last_seen_at: now,
            expires_at: (now + settings.session_idle_timeout).min(ends_at),
            ends_at,
            revoked_at: None,
            user_id,
        };
        let mut transaction = self.store().begin().await?;
        identity_store::insert_session(&mut transaction, &session, &digest(&token)).await?;
        identity_store::set_last_login(&mut transaction, user_id, &now).await?;
        let mut event = NewEvent::new("session.started", "session", session.id)
            .actor(&principal.name)
            .data(json!({ "user": session.user, "by": how }))
            .outcome("succeeded");
        event.scheme = how.into();
        event.source = source.into();
        transaction.append_event(event);
        transaction.commit().await?;
        Ok(StartedSession { session, token })
    }

    /// The caller's live sessions, or everyone's with `user:list`.
    pub async fn list_sessions(&self, caller: &Caller) -> ServiceResult<Vec<Session>> {
        let everyone = caller.access.allows(permission(Resource::User, "list"), None, None);
        let user_id = match (everyone, caller.user_id()) {
            (true, _) => None,
            (false, Some(user_id)) => Some(user_id),
            (false, None) => return Err(forbidden(caller, "user:list")),
        };
        Ok(identity_store::list_sessions(&mut *self.store().reader().await?, user_id, &store::now()).await?)
    }

    /// Ends a session: the caller's own (logout), or anyone's with `user:update`.
    pub async fn end_session(&self, caller: &Caller, id: Option<Uuid>) -> ServiceResult<()> {
        let own = match &caller.principal.kind {
            PrincipalKind::User { session_id, .. } => *session_id,
            _ => None,
        };
        let id = match (id, own) {
            (Some(id), _) => id,
            (None, Some(own)) => own,
            (None, None) => return Err(ServiceError::Invalid("this request was not made with a session".into())),
        };
        if Some(id) != own {
            let sessions =
                identity_store::list_sessions(&mut *self.store().reader().await?, None, &store::now()).await?;
            let session = sessions
                .iter()
                .find(|session| session.id == id)
                .ok_or_else(|| ServiceError::not_found("session", id))?;
            if caller.user_id() != Some(session.user_id) {
                self.require(caller, Resource::User, "update", None, Some(&session.user_id.to_string())).await?;
            }
        }
        let mut transaction = self.store().begin().await?;
        if !identity_store::revoke_session(&mut transaction, id, &store::now()).await? {
            return Err(ServiceError::not_found("session", id));
        }
        transaction.append_event(NewEvent::new("session.ended", "session", id).by(caller));
        transaction.commit().await?;
        Ok(())
    }

    // ----- the checks behind Credentials -----

    async fn check_password(
        &self,
        user_name: &str,
        password: &str,
        source: &str,
    ) -> Result<Principal, CredentialError> {
        let throttle = self.login_throttle();
        if let Some(wait) = throttle.wait(user_name, source) {
            return Err(CredentialError::Throttled(wait));
        }
        let user = self.read_credentials(|mut reader| {
            let user_name = user_name.to_owned();
            async move { identity_store::get_user_by_name(&mut reader, &user_name).await }
        });
        let user = user.await?;
        let stored_hash = user.as_ref().and_then(|user| user.password_hash.clone());
        if !password_matches(stored_hash, password.to_owned()).await {
            throttle.failed(user_name, source);
            self.record_failed_login(user_name, source).await;
            return Err(CredentialError::Rejected("wrong user name or password".into()));
        }
        let user = user.ok_or_else(|| CredentialError::Rejected("wrong user name or password".into()))?;
        if user.disabled {
            return Err(CredentialError::Rejected(format!("user '{}' is disabled", user.name)));
        }
        throttle.succeeded(user_name);
        Ok(Principal { kind: PrincipalKind::User { user_id: user.id, session_id: None }, name: user.name })
    }

    async fn record_failed_login(&self, user_name: &str, source: &str) {
        let mut event = NewEvent::new("audit.login_failed", "user", user_name)
            .actor(user_name)
            .outcome("denied")
            .data(json!({ "source": source }));
        event.source = source.into();
        if let Err(error) = self.record_audit_event(event).await {
            tracing::warn!(error = ?error, "cannot record a failed login");
        }
    }

    async fn check_api_key(&self, id: &str, secret: &str) -> Result<Principal, CredentialError> {
        let key = self.read_credentials(|mut reader| {
            let id = id.to_owned();
            async move { identity_store::get_api_key(&mut reader, &id).await }
        });
        let key = key.await?;
        // Compare against something even for an unknown id, so timing does not tell ids apart.
        let stored = key.as_ref().map_or_else(|| digest("unknown key"), |key| key.secret_hash.clone());
        let matches = digests_match(&stored, secret);
        let key = match key {
            Some(key) if matches => key,
            _ => return Err(CredentialError::Rejected("unknown API key or wrong secret".into())),
        };
        let now = store::now();
        if key.revoked_at.is_some() {
            return Err(CredentialError::Rejected(format!("API key '{}' is revoked", key.id)));
        }
        if key.expires_at.is_some_and(|expires_at| expires_at <= now) {
            return Err(CredentialError::Rejected(format!("API key '{}' has expired", key.id)));
        }
        let user = self.user_by_id(key.user_id).await?;
        if user.disabled {
            return Err(CredentialError::Rejected(format!("the user of API key '{}' is disabled", key.id)));
        }
        if key.last_used_at.is_none_or(|used| now - used > TOUCH_INTERVAL) {
            self.write_quietly(
                |mut write| async move { identity_store::touch_api_key(&mut write, &key.id, &now).await },
            )
            .await;
        }
        Ok(Principal {
            kind: PrincipalKind::ApiKey { user_id: user.id, key_id: id.to_owned() },
            name: format!("{}/{}", user.name, id),
        })
    }

    async fn check_session(&self, token: &str) -> Result<Principal, CredentialError> {
        let token_hash = digest(token);
        let session = self.read_credentials(|mut reader| async move {
            identity_store::get_session_by_token_hash(&mut reader, &token_hash).await
        });
        let session = session.await?.ok_or_else(|| CredentialError::Rejected("unknown or ended session".into()))?;
        let now = store::now();
        if session.revoked_at.is_some() || session.expires_at <= now || session.ends_at <= now {
            return Err(CredentialError::Rejected("the session has ended; log in again".into()));
        }
        let user = self.user_by_id(session.user_id).await?;
        if user.disabled {
            return Err(CredentialError::Rejected(format!("user '{}' is disabled", user.name)));
        }
        // Written at most once a TOUCH_INTERVAL, unless the idle timeout is shorter than that.
        let idle_timeout = self.inner.settings.session_idle_timeout;
        let touch_after = TOUCH_INTERVAL.min(chrono::TimeDelta::from_std(idle_timeout / 2).unwrap_or(TOUCH_INTERVAL));
        if now - session.last_seen_at > touch_after {
            let expires_at = now + idle_timeout;
            let id = session.id;
            self.write_quietly(move |mut write| async move {
                identity_store::touch_session(&mut write, id, &now, &expires_at).await
            })
            .await;
        }
        Ok(Principal { kind: PrincipalKind::User { user_id: user.id, session_id: Some(session.id) }, name: user.name })
    }

    async fn user_by_id(&self, id: Uuid) -> Result<User, CredentialError> {
        let user = self.read_credentials(|mut reader| async move { identity_store::get_user(&mut reader, id).await });
        user.await?.ok_or_else(|| CredentialError::Rejected("the user no longer exists".into()))
    }

    /// Maps an external identity to a user, creating it on first sight; its user groups follow
    /// `groups` (existing groups only).
    async fn map_external_identity(
        &self,
        issuer: &str,
        subject: &str,
        username: &str,
        groups: &[String],
    ) -> ServiceResult<Principal> {
        let mut transaction = self.store().begin().await?;
        let now = store::now();
        let user = match identity_store::get_user_by_external(&mut transaction, issuer, subject).await? {
            Some(user) => user,
            None => {
                check_name("user name", username, 64)?;
                if identity_store::get_user_by_name(&mut transaction, username).await?.is_some() {
                    return Err(ServiceError::Conflict(format!(
                        "user '{username}' exists and is not linked to {issuer}; an administrator must link or rename it"
                    )));
                }
                let user = User {
                    id: Uuid::now_v7(),
                    name: username.into(),
                    display_name: String::new(),
                    email: String::new(),
                    has_password: false,
                    disabled: false,
                    external_issuer: Some(issuer.into()),
                    external_subject: Some(subject.into()),
                    groups: Vec::new(),
                    last_login_at: None,
                    created_at: now,
                    updated_at: now,
                    password_hash: None,
                };
                identity_store::save_user(&mut transaction, &user).await?;
                transaction.append_event(NewEvent::new("user.created", "user", user.id).actor(username).data(json!({
                    "name": user.name, "issuer": issuer
                })));
                user
            }
        };
        if user.disabled {
            return Err(ServiceError::Unauthorized(format!("user '{}' is disabled", user.name)));
        }
        for group in identity_store::list_user_groups(&mut transaction).await? {
            let wanted = groups.contains(&group.name);
            let member = user.groups.contains(&group.name);
            if wanted && !member {
                identity_store::add_member(&mut transaction, group.id, user.id).await?;
            } else if !wanted && member {
                identity_store::remove_member(&mut transaction, group.id, user.id).await?;
            }
        }
        transaction.commit().await?;
        Ok(Principal { kind: PrincipalKind::User { user_id: user.id, session_id: None }, name: user.name })
    }

    async fn read_credentials<T, F, Fut>(&self, read: F) -> Result<T, CredentialError>
    where
        F: FnOnce(store::Connection) -> Fut,
        Fut: Future<Output = store::StoreResult<T>>,
    {
        let reader = self.store().reader().await.map_err(|error| CredentialError::Unavailable(error.to_string()))?;
        read(reader).await.map_err(|error| CredentialError::Unavailable(error.to_string()))
    }

    /// A bookkeeping write (last use of a key or session) that must not fail the request.
    async fn write_quietly<F, Fut>(&self, write: F)
    where
        F: FnOnce(store::SingleWrite) -> Fut,
        Fut: Future<Output = store::StoreResult<()>>,
    {
        let written = match self.store().write_statement().await {
            Ok(connection) => write(connection).await,
            Err(error) => Err(error),
        };
        if let Err(error) = written {
            tracing::warn!(error = ?error, "cannot record the use of a credential");
        }
    }
}

fn expiry(now: crate::model::Timestamp, ttl: Option<u64>) -> ServiceResult<Option<crate::model::Timestamp>> {
    let Some(ttl) = ttl else { return Ok(None) };
    let seconds = i64::try_from(ttl).ok().filter(|seconds| *seconds > 0 && *seconds <= 10 * 365 * 86400);
    let seconds = seconds
        .ok_or_else(|| ServiceError::Invalid(format!("ttl must be 1 to {} seconds, got {ttl}", 10 * 365 * 86400)))?;
    Ok(Some(now + chrono::TimeDelta::seconds(seconds)))
}

fn normalized_permissions(texts: &[String]) -> ServiceResult<Vec<String>> {
    let mut permissions = std::collections::BTreeSet::new();
    for text in texts {
        for permission in parse_permissions(text).map_err(ServiceError::Invalid)? {
            permissions.insert(permission.to_string());
        }
    }
    if permissions.is_empty() {
        return Err(ServiceError::Invalid("a role needs at least one permission".into()));
    }
    Ok(permissions.into_iter().collect())
}

struct ServiceCredentials {
    service: Service,
    admin_token: AdminToken,
}

#[async_trait::async_trait]
impl Credentials for ServiceCredentials {
    async fn verify_password(&self, user: &str, password: &str, source: &str) -> Result<Principal, CredentialError> {
        self.service.check_password(user, password, source).await
    }

    async fn verify_api_key(&self, id: &str, secret: &str, _source: &str) -> Result<Principal, CredentialError> {
        self.service.check_api_key(id, secret).await
    }

    async fn verify_session(&self, token: &str, _source: &str) -> Result<Principal, CredentialError> {
        self.service.check_session(token).await
    }

    async fn verify_token(&self, token: &str, _source: &str) -> Result<Principal, CredentialError> {
        let token = token.trim();
        if token.starts_with(SESSION_TOKEN_PREFIX) {
            return self.service.check_session(token).await;
        }
        if let Some((id, secret)) = token.split_once(':') {
            return self.service.check_api_key(id, secret).await;
        }
        if self.admin_token.matches(token) {
            Ok(Principal::admin())
        } else {
            Err(CredentialError::Rejected("invalid token".into()))
        }
    }

    async fn create_session(&self, principal: &Principal) -> Result<NewSession, CredentialError> {
        let started = self.service.start_session(principal, "", "scheme").await.map_err(|error| match error {
            ServiceError::Invalid(message) => CredentialError::Rejected(message),
            other => CredentialError::Unavailable(other.to_string()),
        })?;
        Ok(NewSession { token: started.token, idle_timeout: self.service.inner.settings.session_idle_timeout })
    }

    async fn external_identity(
        &self,
        issuer: &str,
        subject: &str,
        username: &str,
        groups: &[String],
    ) -> Result<Principal, CredentialError> {
        self.service.map_external_identity(issuer, subject, username, groups).await.map_err(|error| match error {
            ServiceError::Internal(message) | ServiceError::Unavailable(message) => {
                CredentialError::Unavailable(message)
            }
            other => CredentialError::Rejected(other.to_string()),
        })
    }
}
