//! A test double of the host's credential checks, for native unit tests of auth schemes.
//!
//! [`FakeCredentials`] knows the users, API keys, sessions, tokens and trusted issuers a test
//! gives it, answers like the host (rejections say why, never the secret) and records every
//! call, so that a test can check what a scheme asked the host.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, PoisonError};

use crate::auth::{CredentialError, Credentials, Session};

/// The idle timeout of the sessions [`FakeCredentials::create_session`] starts.
pub const FAKE_SESSION_IDLE_TIMEOUT_SECS: u32 = 1800;

/// Who the fake host verified: its `describe()` text, e.g. `user alice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeIdentity(pub String);

/// One call a scheme made, with its arguments (secrets included: tests check that a scheme
/// passes them on intact).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialCall {
    VerifyPassword { user: String, password: String },
    VerifyApiKey { key_id: String, secret: String },
    VerifySession { token: String },
    VerifyToken { token: String },
    CreateSession { who: String },
    ExternalIdentity { issuer: String, subject: String, username: String, groups: Vec<String> },
}

/// The host's checks over what a test configured. Built with the `with_*` methods.
#[derive(Debug, Default)]
pub struct FakeCredentials {
    passwords_by_user: BTreeMap<String, String>,
    /// Key id → (secret, owning user).
    api_keys: BTreeMap<String, (String, String)>,
    /// Session or host token → identity description.
    sessions: Mutex<BTreeMap<String, String>>,
    tokens: BTreeMap<String, String>,
    trusted_issuers: BTreeSet<String>,
    /// When set, every check answers this instead.
    forced_failure: Option<CredentialError>,
    calls: Mutex<Vec<CredentialCall>>,
}

impl FakeCredentials {
    pub fn new() -> Self {
        FakeCredentials::default()
    }

    pub fn with_user(mut self, user: &str, password: &str) -> Self {
        self.passwords_by_user.insert(user.to_owned(), password.to_owned());
        self
    }

    pub fn with_api_key(mut self, key_id: &str, secret: &str, user: &str) -> Self {
        self.api_keys.insert(key_id.to_owned(), (secret.to_owned(), user.to_owned()));
        self
    }

    /// A session token `verify-session` accepts, for `user`.
    pub fn with_session(self, token: &str, user: &str) -> Self {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner).insert(token.to_owned(), format!("user {user}"));
        self
    }

    /// A token `verify-token` accepts, describing `who` (e.g. `admin`).
    pub fn with_token(mut self, token: &str, who: &str) -> Self {
        self.tokens.insert(token.to_owned(), who.to_owned());
        self
    }

    /// An issuer `external-identity` accepts.
    pub fn with_trusted_issuer(mut self, issuer: &str) -> Self {
        self.trusted_issuers.insert(issuer.to_owned());
        self
    }

    /// Every check fails with `failure` (throttling, an unavailable store).
    pub fn failing_with(mut self, failure: CredentialError) -> Self {
        self.forced_failure = Some(failure);
        self
    }

    /// The calls made so far, oldest first.
    pub fn calls(&self) -> Vec<CredentialCall> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn record(&self, call: CredentialCall) -> Result<(), CredentialError> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).push(call);
        match &self.forced_failure {
            Some(failure) => Err(failure.clone()),
            None => Ok(()),
        }
    }
}

fn rejected(message: &str) -> CredentialError {
    CredentialError::Rejected(message.to_owned())
}

impl Credentials for FakeCredentials {
    type Identity = FakeIdentity;

    fn verify_password(&self, user: &str, password: &str) -> Result<FakeIdentity, CredentialError> {
        self.record(CredentialCall::VerifyPassword { user: user.to_owned(), password: password.to_owned() })?;
        match self.passwords_by_user.get(user) {
            Some(expected) if expected == password => Ok(FakeIdentity(format!("user {user}"))),
            Some(_) => Err(rejected("wrong password")),
            None => Err(rejected("unknown user")),
        }
    }

    fn verify_api_key(&self, key_id: &str, secret: &str) -> Result<FakeIdentity, CredentialError> {
        self.record(CredentialCall::VerifyApiKey { key_id: key_id.to_owned(), secret: secret.to_owned() })?;
        match self.api_keys.get(key_id) {
            Some((expected, user)) if expected == secret => Ok(FakeIdentity(format!("key {key_id} (user {user})"))),
            Some(_) => Err(rejected("wrong secret for this API key")),
            None => Err(rejected("unknown API key")),
        }
    }

    fn verify_session(&self, token: &str) -> Result<FakeIdentity, CredentialError> {
        self.record(CredentialCall::VerifySession { token: token.to_owned() })?;
        let sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.get(token).map(|who| FakeIdentity(who.clone())).ok_or_else(|| rejected("unknown or expired session"))
    }

    fn verify_token(&self, token: &str) -> Result<FakeIdentity, CredentialError> {
        self.record(CredentialCall::VerifyToken { token: token.to_owned() })?;
        self.tokens.get(token).map(|who| FakeIdentity(who.clone())).ok_or_else(|| rejected("unknown token"))
    }

    fn create_session(&self, who: &FakeIdentity) -> Result<Session, CredentialError> {
        self.record(CredentialCall::CreateSession { who: who.0.clone() })?;
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let token = format!("session-{}", sessions.len() + 1);
        sessions.insert(token.clone(), who.0.clone());
        Ok(Session { token, idle_timeout_secs: FAKE_SESSION_IDLE_TIMEOUT_SECS })
    }

    fn external_identity(
        &self,
        issuer: &str,
        subject: &str,
        username: &str,
        groups: &[String],
    ) -> Result<FakeIdentity, CredentialError> {
        self.record(CredentialCall::ExternalIdentity {
            issuer: issuer.to_owned(),
            subject: subject.to_owned(),
            username: username.to_owned(),
            groups: groups.to_vec(),
        })?;
        if !self.trusted_issuers.contains(issuer) {
            return Err(rejected("issuer not trusted for this provider"));
        }
        Ok(FakeIdentity(format!("user {username}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fake_answers_like_the_host_and_records_calls() {
        let credentials = FakeCredentials::new().with_user("alice", "pw").with_api_key("ci", "s3cret", "alice");
        assert_eq!(credentials.verify_password("alice", "pw").ok(), Some(FakeIdentity("user alice".into())));
        assert!(matches!(credentials.verify_password("alice", "nope"), Err(CredentialError::Rejected(_))));
        assert!(matches!(credentials.verify_api_key("ci", "wrong"), Err(CredentialError::Rejected(_))));
        let session = credentials.create_session(&FakeIdentity("user alice".into())).ok();
        let token = session.map(|session| session.token).unwrap_or_default();
        assert_eq!(credentials.verify_session(&token).ok(), Some(FakeIdentity("user alice".into())));
        assert_eq!(credentials.calls().len(), 5);
        let throttled = FakeCredentials::new().failing_with(CredentialError::Throttled(9));
        assert!(matches!(throttled.verify_token("anything"), Err(CredentialError::Throttled(9))));
    }
}
