//! `auth-session`: takes a session token from a header (`Nano-Session` by default, as in Project
//! Nano's API) and has the host check and extend the session with `verify-session`.
//!
//! # Config (JSON given to `init`; every key optional, unknown keys are `invalid-config`)
//! `header` (`"Nano-Session"`, matched case-insensitively).
//!
//! # Behaviour
//! No header (or an empty one): `not-applicable`. Otherwise the host decides.

use hyperplane_guest::auth::{Credentials, Decision, SchemeError, header, is_header_name, scheme_config};
use serde::Deserialize;

// Compiled natively too (to keep it checked), but only exported inside a component.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
mod component;

/// The provider config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionSettings {
    /// The header that carries the session token.
    pub header: String,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings { header: "Nano-Session".into() }
    }
}

/// The configured scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionScheme {
    settings: SessionSettings,
}

impl SessionScheme {
    /// Parses and checks the provider config.
    pub fn from_config(config_json: &str) -> Result<Self, SchemeError> {
        let settings: SessionSettings = scheme_config(config_json)?;
        if !is_header_name(&settings.header) {
            return Err(SchemeError::InvalidConfig(format!(
                "invalid config at `header`: {:?} is not a header name",
                settings.header
            )));
        }
        Ok(SessionScheme { settings })
    }

    /// Decides for a request with these headers.
    pub fn authenticate<C: Credentials>(
        &self,
        credentials: &C,
        headers: &[(String, String)],
    ) -> Result<Decision<C::Identity>, SchemeError> {
        match header(headers, &self.settings.header).map(str::trim).filter(|token| !token.is_empty()) {
            Some(session_token) => Decision::from_verification(credentials.verify_session(session_token)),
            None => Ok(Decision::NotApplicable),
        }
    }
}

#[cfg(test)]
mod tests {
    use hyperplane_guest::auth::CredentialError;
    use hyperplane_guest::auth_testing::{CredentialCall, FakeCredentials, FakeIdentity};

    use super::*;

    /// Runs the scheme configured by `config` on `headers` and checks its decision and the
    /// session tokens it asked the host about.
    fn check(config: &str, headers: &[(&str, &str)], expected: Decision<FakeIdentity>, verified_tokens: &[&str]) {
        let scheme = SessionScheme::from_config(config).unwrap_or_else(|error| panic!("{config}: {error:?}"));
        let credentials = FakeCredentials::new().with_session("s-123", "alice");
        let headers: Vec<(String, String)> =
            headers.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect();
        assert_eq!(scheme.authenticate(&credentials, &headers).ok(), Some(expected), "{config} {headers:?}");
        let expected_calls: Vec<CredentialCall> =
            verified_tokens.iter().map(|token| CredentialCall::VerifySession { token: (*token).to_owned() }).collect();
        assert_eq!(credentials.calls(), expected_calls);
    }

    fn alice() -> Decision<FakeIdentity> {
        Decision::Authenticated { identity: FakeIdentity("user alice".into()), response_headers: Vec::new() }
    }

    #[test]
    fn the_session_header_is_matched_case_insensitively() {
        check("", &[("nano-session", "s-123")], alice(), &["s-123"]);
        check("", &[("Nano-Session", " s-123 ")], alice(), &["s-123"]);
        check(r#"{"header": "x-session"}"#, &[("X-Session", "s-123")], alice(), &["s-123"]);
        check("", &[("nano-session", "expired")], Decision::rejected("unknown or expired session"), &["expired"]);
    }

    #[test]
    fn no_session_header_is_not_applicable() {
        check("", &[], Decision::NotApplicable, &[]);
        check("", &[("nano-session", "  ")], Decision::NotApplicable, &[]);
        check(r#"{"header": "x-session"}"#, &[("nano-session", "s-123")], Decision::NotApplicable, &[]);
    }

    #[test]
    fn an_unavailable_host_is_a_plugin_error() {
        let scheme = SessionScheme::from_config("").ok();
        let credentials = FakeCredentials::new().failing_with(CredentialError::Unavailable("store down".into()));
        let headers = vec![("nano-session".to_owned(), "s-123".to_owned())];
        match scheme.map(|scheme| scheme.authenticate(&credentials, &headers)) {
            Some(Err(SchemeError::Unavailable(_))) => {}
            other => panic!("expected unavailable, got {other:?}"),
        }
    }

    #[test]
    fn config_is_strict() {
        for (config, fragment) in
            [(r#"{"headers": "x"}"#, "headers"), (r#"{"header": ""}"#, "header"), (r#"{"header": "a b"}"#, "header")]
        {
            match SessionScheme::from_config(config) {
                Err(SchemeError::InvalidConfig(message)) => assert!(message.contains(fragment), "{message}"),
                other => panic!("expected invalid-config for {config}, got {other:?}"),
            }
        }
    }
}
