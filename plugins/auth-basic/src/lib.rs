//! `auth-basic`: HTTP Basic authentication. Takes `user:password` from
//! `Authorization: Basic <base64>` and has the host check it with `verify-password`; optionally
//! starts a session and hands it out as a cookie, so that a browser need not send the password
//! again.
//!
//! # Config (JSON given to `init`; every key optional, unknown keys are `invalid-config`)
//! `realm` (`"hyperplane"`, in the challenge `Basic realm="<realm>"`), `session_cookie` (unset:
//! no session; set: after a successful password check the host starts a session and the
//! response sets `<name>=<token>; HttpOnly; SameSite=Strict; Path=/; Max-Age=<idle timeout>`).
//!
//! # Behaviour
//! No Basic authorization: `challenge`. Credentials that are not base64, not UTF-8 or lack the
//! `:` between user and password: `rejected`, saying which. Otherwise the host decides.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64_STANDARD;
use hyperplane_guest::auth::{
    Credentials, Decision, SchemeError, authorization_credentials, is_cookie_name, scheme_config,
};
use serde::Deserialize;

// Compiled natively too (to keep it checked), but only exported inside a component.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
mod component;

/// The provider config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BasicSettings {
    pub realm: String,
    /// The cookie that carries the session started after a password check; `None`: no session.
    pub session_cookie: Option<String>,
}

impl Default for BasicSettings {
    fn default() -> Self {
        BasicSettings { realm: "hyperplane".into(), session_cookie: None }
    }
}

/// The configured scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicScheme {
    settings: BasicSettings,
    challenge: String,
}

impl BasicScheme {
    /// Parses and checks the provider config.
    pub fn from_config(config_json: &str) -> Result<Self, SchemeError> {
        let settings: BasicSettings = scheme_config(config_json)?;
        if settings.realm.contains(['"', '\\']) || settings.realm.chars().any(char::is_control) {
            return Err(SchemeError::InvalidConfig(
                "invalid config at `realm`: quotes, backslashes and control characters are not allowed".into(),
            ));
        }
        if let Some(name) = &settings.session_cookie
            && !is_cookie_name(name)
        {
            return Err(SchemeError::InvalidConfig(format!(
                "invalid config at `session_cookie`: {name:?} is not a cookie name"
            )));
        }
        let challenge = format!("Basic realm=\"{}\"", settings.realm);
        Ok(BasicScheme { settings, challenge })
    }

    /// Decides for a request with these headers.
    pub fn authenticate<C: Credentials>(
        &self,
        credentials: &C,
        headers: &[(String, String)],
    ) -> Result<Decision<C::Identity>, SchemeError> {
        let Some(encoded) = authorization_credentials(headers, "Basic") else {
            return Ok(Decision::Challenge(self.challenge.clone()));
        };
        let (user, password) = match decode_user_and_password(encoded) {
            Ok(pair) => pair,
            Err(problem) => return Ok(Decision::rejected(format!("malformed Basic credentials: {problem}"))),
        };
        let identity = match credentials.verify_password(&user, &password) {
            Ok(identity) => identity,
            Err(failure) => return Decision::from_credential_error(failure),
        };
        let mut response_headers = Vec::new();
        if let Some(cookie_name) = &self.settings.session_cookie {
            let session = match credentials.create_session(&identity) {
                Ok(session) => session,
                Err(failure) => return Decision::from_credential_error(failure),
            };
            response_headers.push((
                "set-cookie".to_owned(),
                format!(
                    "{cookie_name}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
                    session.token, session.idle_timeout_secs
                ),
            ));
        }
        Ok(Decision::Authenticated { identity, response_headers })
    }
}

/// Splits decoded Basic credentials at the first `:` (a user name has none; a password may).
/// The error says what is wrong, never what was sent.
fn decode_user_and_password(encoded: &str) -> Result<(String, String), &'static str> {
    if encoded.is_empty() {
        return Err("nothing after `Basic`");
    }
    let bytes = BASE64_STANDARD.decode(encoded).map_err(|_| "not valid base64")?;
    let text = String::from_utf8(bytes).map_err(|_| "not UTF-8 text")?;
    let (user, password) = text.split_once(':').ok_or("no ':' between user and password")?;
    if user.is_empty() {
        return Err("empty user name");
    }
    Ok((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use hyperplane_guest::auth::CredentialError;
    use hyperplane_guest::auth_testing::{
        CredentialCall, FAKE_SESSION_IDLE_TIMEOUT_SECS, FakeCredentials, FakeIdentity,
    };

    use super::*;

    fn basic(user_and_password: &str) -> Vec<(String, String)> {
        vec![("authorization".to_owned(), format!("Basic {}", BASE64_STANDARD.encode(user_and_password)))]
    }

    fn run(config: &str, headers: &[(String, String)]) -> (Option<Decision<FakeIdentity>>, Vec<CredentialCall>) {
        let scheme = BasicScheme::from_config(config).unwrap_or_else(|error| panic!("{config}: {error:?}"));
        let credentials = FakeCredentials::new().with_user("alice", "pa:ss word");
        let decision = scheme.authenticate(&credentials, headers).ok();
        (decision, credentials.calls())
    }

    fn verify_call(user: &str, password: &str) -> CredentialCall {
        CredentialCall::VerifyPassword { user: user.into(), password: password.into() }
    }

    #[test]
    fn a_correct_password_authenticates_and_splits_at_the_first_colon() {
        let (decision, calls) = run("", &basic("alice:pa:ss word"));
        let expected =
            Decision::Authenticated { identity: FakeIdentity("user alice".into()), response_headers: vec![] };
        assert_eq!(decision, Some(expected));
        assert_eq!(calls, [verify_call("alice", "pa:ss word")]);
        let (decision, calls) = run("", &basic("alice:wrong"));
        assert_eq!(decision, Some(Decision::rejected("wrong password")));
        assert_eq!(calls, [verify_call("alice", "wrong")]);
    }

    #[test]
    fn no_basic_credentials_is_a_challenge_with_the_realm() {
        let (decision, calls) = run("", &[]);
        assert_eq!(decision, Some(Decision::Challenge("Basic realm=\"hyperplane\"".into())));
        assert!(calls.is_empty());
        let bearer = vec![("authorization".to_owned(), "Bearer abc".to_owned())];
        let (decision, _) = run(r#"{"realm": "lab"}"#, &bearer);
        assert_eq!(decision, Some(Decision::Challenge("Basic realm=\"lab\"".into())));
    }

    #[test]
    fn malformed_credentials_are_rejected_without_asking_the_host() {
        let cases = [
            ("Basic !!!notbase64", "malformed Basic credentials: not valid base64"),
            ("Basic ", "malformed Basic credentials: nothing after `Basic`"),
            ("Basic /w==", "malformed Basic credentials: not UTF-8 text"),
            ("Basic YWxpY2U=", "malformed Basic credentials: no ':' between user and password"),
            ("Basic OnB3", "malformed Basic credentials: empty user name"),
        ];
        for (authorization, message) in cases {
            let (decision, calls) = run("", &[("authorization".to_owned(), authorization.to_owned())]);
            assert_eq!(decision, Some(Decision::rejected(message)), "{authorization}");
            assert!(calls.is_empty());
        }
    }

    #[test]
    fn a_session_cookie_is_set_after_a_correct_password_only() {
        let config = r#"{"session_cookie": "hyperplane_session"}"#;
        let (decision, calls) = run(config, &basic("alice:pa:ss word"));
        let cookie = format!(
            "hyperplane_session=session-1; HttpOnly; SameSite=Strict; Path=/; Max-Age={FAKE_SESSION_IDLE_TIMEOUT_SECS}"
        );
        let expected = Decision::Authenticated {
            identity: FakeIdentity("user alice".into()),
            response_headers: vec![("set-cookie".into(), cookie)],
        };
        assert_eq!(decision, Some(expected));
        assert_eq!(
            calls,
            [verify_call("alice", "pa:ss word"), CredentialCall::CreateSession { who: "user alice".into() }]
        );
        let (decision, calls) = run(config, &basic("alice:wrong"));
        assert_eq!(decision, Some(Decision::rejected("wrong password")));
        assert_eq!(calls.len(), 1);
    }

    #[test]
    fn throttling_carries_the_retry_delay() {
        let scheme = BasicScheme::from_config("").ok();
        let credentials = FakeCredentials::new().failing_with(CredentialError::Throttled(60));
        match scheme.map(|scheme| scheme.authenticate(&credentials, &basic("alice:x"))) {
            Some(Ok(Decision::Rejected { retry_after_secs: Some(60), .. })) => {}
            other => panic!("expected a throttled rejection, got {other:?}"),
        }
    }

    #[test]
    fn config_is_strict() {
        let cases = [
            (r#"{"realms": "x"}"#, "realms"),
            (r#"{"realm": "a\"b"}"#, "realm"),
            (r#"{"session_cookie": ""}"#, "session_cookie"),
            (r#"{"session_cookie": "a;b"}"#, "session_cookie"),
            (r#"{"session_cookie": 3}"#, "session_cookie"),
        ];
        for (config, fragment) in cases {
            match BasicScheme::from_config(config) {
                Err(SchemeError::InvalidConfig(message)) => assert!(message.contains(fragment), "{message}"),
                other => panic!("expected invalid-config for {config}, got {other:?}"),
            }
        }
    }
}
