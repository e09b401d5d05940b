//! Users, API keys, sessions and the credential checks auth plugins call
//! ([`Credentials`]): secrets are checked here and nowhere else.

use std::sync::Arc;

use crate::auth::{AdminToken, CredentialError, Credentials, NewSession, Principal};

use super::Service;

impl Service {
    /// The credential checks for the auth schemes; `admin_token` authenticates as the built-in
    /// administrator.
    pub fn credentials(&self, admin_token: AdminToken) -> Arc<dyn Credentials> {
        Arc::new(ServiceCredentials { _service: self.clone(), admin_token })
    }
}

struct ServiceCredentials {
    _service: Service,
    admin_token: AdminToken,
}

fn unknown(what: &str) -> CredentialError {
    CredentialError::Rejected(format!("unknown {what}"))
}

#[async_trait::async_trait]
impl Credentials for ServiceCredentials {
    async fn verify_password(&self, _user: &str, _password: &str, _source: &str) -> Result<Principal, CredentialError> {
        Err(CredentialError::Rejected("wrong user name or password".into()))
    }

    async fn verify_api_key(&self, _id: &str, _secret: &str, _source: &str) -> Result<Principal, CredentialError> {
        Err(unknown("API key"))
    }

    async fn verify_session(&self, _token: &str, _source: &str) -> Result<Principal, CredentialError> {
        Err(unknown("or expired session"))
    }

    async fn verify_token(&self, token: &str, _source: &str) -> Result<Principal, CredentialError> {
        if self.admin_token.matches(token) {
            Ok(Principal::admin())
        } else {
            Err(CredentialError::Rejected("invalid token".into()))
        }
    }

    async fn create_session(&self, _principal: &Principal) -> Result<NewSession, CredentialError> {
        Err(CredentialError::Unavailable("sessions are not stored yet".into()))
    }

    async fn external_identity(
        &self,
        _issuer: &str,
        _subject: &str,
        _username: &str,
        _groups: &[String],
    ) -> Result<Principal, CredentialError> {
        Err(CredentialError::Rejected("no user for this external identity".into()))
    }
}
