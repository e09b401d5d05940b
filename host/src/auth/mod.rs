//! Authentication: who a request comes from. Credential schemes are auth plugins
//! (`hyperplane:auth`); the checks they ask for (passwords, API keys, sessions, tokens) are the
//! [`Credentials`] the host implements, so secrets never leave the host.

pub mod access;
mod admin_token;
pub mod chain;
pub mod identity;
pub mod permissions;

use std::time::Duration;

use uuid::Uuid;

pub use access::{Access, Caller, ProjectScope};
pub use admin_token::{AdminToken, TokenSource, load_or_create_admin_token};

/// Who made a request, as the credential checks found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub kind: PrincipalKind,
    /// For events and logs: `admin`, `alice`, `alice/ci-runner` (a key of alice). Never a secret.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalKind {
    /// The operator's admin token: every permission.
    Admin,
    /// A user, by password, session or external identity.
    User { user_id: Uuid, session_id: Option<Uuid> },
    /// An API key of a user; it acts with the key's groups.
    ApiKey { user_id: Uuid, key_id: String },
    /// Hyperplane itself (reconciliation, task recovery).
    System,
}

impl Principal {
    pub fn admin() -> Principal {
        Principal { kind: PrincipalKind::Admin, name: "admin".into() }
    }

    pub fn system() -> Principal {
        Principal { kind: PrincipalKind::System, name: "system".into() }
    }
}

/// Why a credential check failed. Messages never contain the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Wrong, unknown, expired, revoked or disabled.
    #[error("{0}")]
    Rejected(String),
    /// Too many failed attempts for this user or source.
    #[error("too many failed attempts; retry in {} s", .0.as_secs().max(1))]
    Throttled(Duration),
    #[error("credentials cannot be checked now: {0}")]
    Unavailable(String),
}

/// A session the host started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    pub token: String,
    pub idle_timeout: Duration,
}

/// The credential checks auth plugins call (`hyperplane:auth/credentials`). `source` is the
/// client's address, for throttling and the audit trail.
#[async_trait::async_trait]
pub trait Credentials: Send + Sync + 'static {
    async fn verify_password(&self, user: &str, password: &str, source: &str) -> Result<Principal, CredentialError>;
    async fn verify_api_key(&self, id: &str, secret: &str, source: &str) -> Result<Principal, CredentialError>;
    async fn verify_session(&self, token: &str, source: &str) -> Result<Principal, CredentialError>;
    /// Any token the host issues: an API key token, a session token or the admin token.
    async fn verify_token(&self, token: &str, source: &str) -> Result<Principal, CredentialError>;
    async fn create_session(&self, principal: &Principal) -> Result<NewSession, CredentialError>;
    /// A user for an identity that `issuer` asserted (the caller has checked that the operator
    /// trusts `issuer` for the scheme); `groups` name user groups.
    async fn external_identity(
        &self,
        issuer: &str,
        subject: &str,
        username: &str,
        groups: &[String],
    ) -> Result<Principal, CredentialError>;
}
