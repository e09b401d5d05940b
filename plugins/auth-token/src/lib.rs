//! `auth-token`: takes a host-issued token (an API key token, a session token or the operator's
//! admin token) from `Authorization: Bearer <token>` or from a cookie and has the host check it
//! with `verify-token`.
//!
//! # Config (JSON given to `init`; every key optional, unknown keys are `invalid-config`)
//! `cookie` (`"authenticationToken"`, Xen Orchestra's cookie; `""` reads no cookie),
//! `skip_jwt` (false: when true a bearer value shaped like a JWT is left to a later scheme,
//! such as `auth-oidc`).
//!
//! # Behaviour
//! A bearer token wins over the cookie. No token at all: `challenge` with
//! `Bearer realm="hyperplane"`. An empty bearer value is `rejected`. The host's answer decides
//! otherwise; an empty cookie counts as no cookie.

use hyperplane_guest::auth::{
    Credentials, Decision, SchemeError, authorization_credentials, cookie, is_cookie_name, looks_like_jwt,
    scheme_config,
};
use serde::Deserialize;

// Compiled natively too (to keep it checked), but only exported inside a component.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
mod component;

/// The challenge sent when no token came.
pub const BEARER_CHALLENGE: &str = "Bearer realm=\"hyperplane\"";

/// The provider config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenSettings {
    /// The cookie that may carry the token; empty: no cookie is read.
    pub cookie: String,
    /// Leave JWT-shaped bearer values to a later scheme.
    pub skip_jwt: bool,
}

impl Default for TokenSettings {
    fn default() -> Self {
        TokenSettings { cookie: "authenticationToken".into(), skip_jwt: false }
    }
}

/// The configured scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenScheme {
    settings: TokenSettings,
}

impl TokenScheme {
    /// Parses and checks the provider config.
    pub fn from_config(config_json: &str) -> Result<Self, SchemeError> {
        let settings: TokenSettings = scheme_config(config_json)?;
        if !settings.cookie.is_empty() && !is_cookie_name(&settings.cookie) {
            return Err(SchemeError::InvalidConfig(format!(
                "invalid config at `cookie`: {:?} is not a cookie name",
                settings.cookie
            )));
        }
        Ok(TokenScheme { settings })
    }

    /// Decides for a request with these headers.
    pub fn authenticate<C: Credentials>(
        &self,
        credentials: &C,
        headers: &[(String, String)],
    ) -> Result<Decision<C::Identity>, SchemeError> {
        if let Some(bearer_token) = authorization_credentials(headers, "Bearer") {
            if bearer_token.is_empty() {
                return Ok(Decision::rejected("the Bearer authorization carries no token"));
            }
            if self.settings.skip_jwt && looks_like_jwt(bearer_token) {
                return Ok(Decision::NotApplicable);
            }
            return Decision::from_verification(credentials.verify_token(bearer_token));
        }
        if !self.settings.cookie.is_empty()
            && let Some(cookie_token) = cookie(headers, &self.settings.cookie).filter(|token| !token.is_empty())
        {
            return Decision::from_verification(credentials.verify_token(cookie_token));
        }
        Ok(Decision::Challenge(BEARER_CHALLENGE.into()))
    }
}

#[cfg(test)]
mod tests {
    use hyperplane_guest::auth::CredentialError;
    use hyperplane_guest::auth_testing::{CredentialCall, FakeCredentials, FakeIdentity};

    use super::*;

    const JWT_SHAPED: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";

    fn credentials() -> FakeCredentials {
        FakeCredentials::new().with_token("hp_admin", "admin").with_token(JWT_SHAPED, "user jwt")
    }

    fn authenticated(who: &str) -> Decision<FakeIdentity> {
        Decision::Authenticated { identity: FakeIdentity(who.into()), response_headers: Vec::new() }
    }

    /// Runs the scheme configured by `config` on `headers` and checks its decision and the
    /// tokens it asked the host about.
    fn check(config: &str, headers: &[(&str, &str)], expected: Decision<FakeIdentity>, verified_tokens: &[&str]) {
        let scheme = TokenScheme::from_config(config).unwrap_or_else(|error| panic!("{config}: {error:?}"));
        let credentials = credentials();
        let headers: Vec<(String, String)> =
            headers.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect();
        let decision = scheme.authenticate(&credentials, &headers).ok();
        assert_eq!(decision, Some(expected), "{config} {headers:?}");
        let expected_calls: Vec<CredentialCall> =
            verified_tokens.iter().map(|token| CredentialCall::VerifyToken { token: (*token).to_owned() }).collect();
        assert_eq!(credentials.calls(), expected_calls);
    }

    #[test]
    fn bearer_tokens_are_checked_by_the_host() {
        check("", &[("authorization", "Bearer hp_admin")], authenticated("admin"), &["hp_admin"]);
        check("", &[("authorization", "bearer hp_admin ")], authenticated("admin"), &["hp_admin"]);
        check("", &[("authorization", "Bearer nope")], Decision::rejected("unknown token"), &["nope"]);
        check(
            "",
            &[("authorization", "Bearer ")],
            Decision::rejected("the Bearer authorization carries no token"),
            &[],
        );
    }

    #[test]
    fn the_cookie_carries_a_token_unless_disabled() {
        let sent = [("cookie", "lang=en; authenticationToken=hp_admin")];
        check("", &sent, authenticated("admin"), &["hp_admin"]);
        check(r#"{"cookie": ""}"#, &sent, Decision::Challenge(BEARER_CHALLENGE.into()), &[]);
        check(r#"{"cookie": "token"}"#, &[("cookie", "token=hp_admin")], authenticated("admin"), &["hp_admin"]);
        check("", &[("cookie", "authenticationToken=")], Decision::Challenge(BEARER_CHALLENGE.into()), &[]);
        // The bearer header wins over the cookie.
        check(
            "",
            &[("cookie", "authenticationToken=hp_admin"), ("authorization", "Bearer nope")],
            Decision::rejected("unknown token"),
            &["nope"],
        );
    }

    #[test]
    fn nothing_sent_is_a_bearer_challenge() {
        check("", &[], Decision::Challenge(BEARER_CHALLENGE.into()), &[]);
        check("", &[("authorization", "Basic YTpi")], Decision::Challenge(BEARER_CHALLENGE.into()), &[]);
    }

    #[test]
    fn jwt_shaped_bearers_are_left_to_a_later_scheme_only_with_skip_jwt() {
        let sent = [("authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln")];
        check(r#"{"skip_jwt": true}"#, &sent, Decision::NotApplicable, &[]);
        check("", &sent, authenticated("user jwt"), &[JWT_SHAPED]);
        check(r#"{"skip_jwt": true}"#, &[("authorization", "Bearer hp_admin")], authenticated("admin"), &["hp_admin"]);
    }

    #[test]
    fn throttling_and_an_unavailable_host_are_reported() {
        let scheme = TokenScheme::from_config("").ok();
        let headers = vec![("authorization".to_owned(), "Bearer hp_admin".to_owned())];
        let throttled = FakeCredentials::new().failing_with(CredentialError::Throttled(7));
        match scheme.as_ref().map(|scheme| scheme.authenticate(&throttled, &headers)) {
            Some(Ok(Decision::Rejected { retry_after_secs: Some(7), .. })) => {}
            other => panic!("expected a throttled rejection, got {other:?}"),
        }
        let unavailable = FakeCredentials::new().failing_with(CredentialError::Unavailable("store down".into()));
        match scheme.as_ref().map(|scheme| scheme.authenticate(&unavailable, &headers)) {
            Some(Err(SchemeError::Unavailable(_))) => {}
            other => panic!("expected unavailable, got {other:?}"),
        }
    }

    #[test]
    fn config_is_strict() {
        for (config, fragment) in [
            (r#"{"cookies": "x"}"#, "cookies"),
            (r#"{"skip_jwt": "yes"}"#, "skip_jwt"),
            (r#"{"cookie": "a b"}"#, "cookie"),
        ] {
            match TokenScheme::from_config(config) {
                Err(SchemeError::InvalidConfig(message)) => assert!(message.contains(fragment), "{message}"),
                other => panic!("expected invalid-config for {config}, got {other:?}"),
            }
        }
    }
}
