//! `auth-apikey`: takes an API key as `<key-id>:<secret>` from a header (`X-API-Key` by default)
//! or from `Authorization: ApiKey <key-id>:<secret>` and has the host check it with
//! `verify-api-key`.
//!
//! # Config (JSON given to `init`; every key optional, unknown keys are `invalid-config`)
//! `header` (`"x-api-key"`, matched case-insensitively).
//!
//! # Behaviour
//! The header wins over `Authorization: ApiKey`. The value is split at the first `:` (key ids
//! never contain one); a value without `:`, or with an empty id or secret, is `rejected`. No key
//! sent: `not-applicable` (there is no standard challenge for API keys). Otherwise the host
//! decides.

use hyperplane_guest::auth::{
    Credentials, Decision, SchemeError, authorization_credentials, header, is_header_name, scheme_config,
};
use serde::Deserialize;

// Compiled natively too (to keep it checked), but only exported inside a component.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
mod component;

/// The provider config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiKeySettings {
    /// The header that carries `<key-id>:<secret>`.
    pub header: String,
}

impl Default for ApiKeySettings {
    fn default() -> Self {
        ApiKeySettings { header: "x-api-key".into() }
    }
}

/// The configured scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyScheme {
    settings: ApiKeySettings,
}

impl ApiKeyScheme {
    /// Parses and checks the provider config.
    pub fn from_config(config_json: &str) -> Result<Self, SchemeError> {
        let settings: ApiKeySettings = scheme_config(config_json)?;
        if !is_header_name(&settings.header) {
            return Err(SchemeError::InvalidConfig(format!(
                "invalid config at `header`: {:?} is not a header name",
                settings.header
            )));
        }
        Ok(ApiKeyScheme { settings })
    }

    /// Decides for a request with these headers.
    pub fn authenticate<C: Credentials>(
        &self,
        credentials: &C,
        headers: &[(String, String)],
    ) -> Result<Decision<C::Identity>, SchemeError> {
        let sent = header(headers, &self.settings.header)
            .map(|value| (value.trim(), "header"))
            .or_else(|| authorization_credentials(headers, "ApiKey").map(|value| (value, "ApiKey authorization")));
        let Some((key, carrier)) = sent else {
            return Ok(Decision::NotApplicable);
        };
        match key.split_once(':') {
            Some((key_id, secret)) if !key_id.is_empty() && !secret.is_empty() => {
                Decision::from_verification(credentials.verify_api_key(key_id, secret))
            }
            _ => Ok(Decision::rejected(format!("malformed API key in the {carrier}: expected `<key-id>:<secret>`"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use hyperplane_guest::auth::CredentialError;
    use hyperplane_guest::auth_testing::{CredentialCall, FakeCredentials, FakeIdentity};

    use super::*;

    /// Runs the scheme configured by `config` on `headers` and checks its decision and the
    /// `(key id, secret)` pairs it asked the host about.
    fn check(config: &str, headers: &[(&str, &str)], expected: Decision<FakeIdentity>, verified: &[(&str, &str)]) {
        let scheme = ApiKeyScheme::from_config(config).unwrap_or_else(|error| panic!("{config}: {error:?}"));
        let credentials = FakeCredentials::new().with_api_key("ci-runner", "s3:cret", "alice");
        let headers: Vec<(String, String)> =
            headers.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect();
        assert_eq!(scheme.authenticate(&credentials, &headers).ok(), Some(expected), "{config} {headers:?}");
        let expected_calls: Vec<CredentialCall> = verified
            .iter()
            .map(|(key_id, secret)| CredentialCall::VerifyApiKey { key_id: (*key_id).into(), secret: (*secret).into() })
            .collect();
        assert_eq!(credentials.calls(), expected_calls);
    }

    fn ci_runner() -> Decision<FakeIdentity> {
        Decision::Authenticated {
            identity: FakeIdentity("key ci-runner (user alice)".into()),
            response_headers: Vec::new(),
        }
    }

    #[test]
    fn keys_split_at_the_first_colon_from_the_header_or_authorization() {
        check("", &[("x-api-key", "ci-runner:s3:cret")], ci_runner(), &[("ci-runner", "s3:cret")]);
        check("", &[("X-API-KEY", "ci-runner:s3:cret")], ci_runner(), &[("ci-runner", "s3:cret")]);
        check("", &[("authorization", "ApiKey ci-runner:s3:cret")], ci_runner(), &[("ci-runner", "s3:cret")]);
        check("", &[("authorization", "apikey ci-runner:s3:cret")], ci_runner(), &[("ci-runner", "s3:cret")]);
        check(r#"{"header": "X-Key"}"#, &[("x-key", "ci-runner:s3:cret")], ci_runner(), &[("ci-runner", "s3:cret")]);
        check(
            "",
            &[("x-api-key", "ci-runner:wrong")],
            Decision::rejected("wrong secret for this API key"),
            &[("ci-runner", "wrong")],
        );
        // The header wins over the authorization.
        check(
            "",
            &[("authorization", "ApiKey ci-runner:s3:cret"), ("x-api-key", "other:x")],
            Decision::rejected("unknown API key"),
            &[("other", "x")],
        );
    }

    #[test]
    fn malformed_keys_are_rejected_without_asking_the_host() {
        let in_header = "malformed API key in the header: expected `<key-id>:<secret>`";
        let in_authorization = "malformed API key in the ApiKey authorization: expected `<key-id>:<secret>`";
        check("", &[("x-api-key", "no-colon")], Decision::rejected(in_header), &[]);
        check("", &[("x-api-key", ":secret")], Decision::rejected(in_header), &[]);
        check("", &[("x-api-key", "ci-runner:")], Decision::rejected(in_header), &[]);
        check("", &[("x-api-key", "")], Decision::rejected(in_header), &[]);
        check("", &[("authorization", "ApiKey")], Decision::rejected(in_authorization), &[]);
    }

    #[test]
    fn no_key_is_not_applicable() {
        check("", &[], Decision::NotApplicable, &[]);
        check("", &[("authorization", "Bearer ci-runner:s3:cret")], Decision::NotApplicable, &[]);
        check(r#"{"header": "x-key"}"#, &[("x-api-key", "ci-runner:s3:cret")], Decision::NotApplicable, &[]);
    }

    #[test]
    fn throttling_carries_the_retry_delay() {
        let scheme = ApiKeyScheme::from_config("").ok();
        let credentials = FakeCredentials::new().failing_with(CredentialError::Throttled(5));
        let headers = vec![("x-api-key".to_owned(), "ci-runner:s3:cret".to_owned())];
        match scheme.map(|scheme| scheme.authenticate(&credentials, &headers)) {
            Some(Ok(Decision::Rejected { retry_after_secs: Some(5), .. })) => {}
            other => panic!("expected a throttled rejection, got {other:?}"),
        }
    }

    #[test]
    fn config_is_strict() {
        for (config, fragment) in
            [(r#"{"heder": "x"}"#, "heder"), (r#"{"header": ""}"#, "header"), (r#"{"header": "x:y"}"#, "header")]
        {
            match ApiKeyScheme::from_config(config) {
                Err(SchemeError::InvalidConfig(message)) => assert!(message.contains(fragment), "{message}"),
                other => panic!("expected invalid-config for {config}, got {other:?}"),
            }
        }
    }
}
