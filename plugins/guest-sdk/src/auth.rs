//! Building blocks for auth scheme plugins (`hyperplane:auth/auth-scheme`): the host's credential
//! checks behind a trait, a plain-Rust decision type, config parsing and header helpers.
//!
//! A scheme's decision logic is written against [`Credentials`] and returns a [`Decision`], so it
//! runs natively in unit tests against [`crate::auth_testing::FakeCredentials`]; inside a
//! component [`HostCredentials`] calls the host and [`Decision::into_outcome`] turns the answer
//! into the WIT `outcome`.

use std::sync::{Arc, PoisonError, RwLock};

use serde::de::DeserializeOwned;

use crate::auth_bindings::hyperplane::auth::credentials;

/// The trait a scheme plugin implements, and the WIT records of its answer.
pub use crate::auth_bindings::exports::hyperplane::auth::scheme::{
    Authenticated, Guest as SchemeGuest, Outcome, Rejection,
};
/// A failure of the plugin itself (`hyperplane:auth/types.error`), not of the caller's credential.
pub use crate::auth_bindings::hyperplane::auth::types::Error as SchemeError;
/// The request a scheme sees (`hyperplane:auth/types.request`).
pub use crate::auth_bindings::hyperplane::auth::types::Request;
/// What a scheme reports about itself in `init`.
pub use crate::auth_bindings::hyperplane::auth::types::SchemeInfo;
/// Why the host did not accept a credential.
pub use credentials::CredentialError;
/// The identity resource only the host creates.
pub use credentials::Identity as HostIdentity;
/// A session the host started.
pub use credentials::Session;

/// The host's credential checks (`hyperplane:auth/credentials`), one method per function.
/// [`HostCredentials`] calls the host; tests use [`crate::auth_testing::FakeCredentials`].
pub trait Credentials {
    /// What a successful check returns; only the host (or a test double) makes one.
    type Identity;

    fn verify_password(&self, user: &str, password: &str) -> Result<Self::Identity, CredentialError>;
    fn verify_api_key(&self, key_id: &str, secret: &str) -> Result<Self::Identity, CredentialError>;
    fn verify_session(&self, token: &str) -> Result<Self::Identity, CredentialError>;
    fn verify_token(&self, token: &str) -> Result<Self::Identity, CredentialError>;
    fn create_session(&self, who: &Self::Identity) -> Result<Session, CredentialError>;
    fn external_identity(
        &self,
        issuer: &str,
        subject: &str,
        username: &str,
        groups: &[String],
    ) -> Result<Self::Identity, CredentialError>;
}

/// The host's checks. Only usable inside a component: natively the imports do not exist.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostCredentials;

impl Credentials for HostCredentials {
    type Identity = HostIdentity;

    fn verify_password(&self, user: &str, password: &str) -> Result<HostIdentity, CredentialError> {
        credentials::verify_password(user, password)
    }

    fn verify_api_key(&self, key_id: &str, secret: &str) -> Result<HostIdentity, CredentialError> {
        credentials::verify_api_key(key_id, secret)
    }

    fn verify_session(&self, token: &str) -> Result<HostIdentity, CredentialError> {
        credentials::verify_session(token)
    }

    fn verify_token(&self, token: &str) -> Result<HostIdentity, CredentialError> {
        credentials::verify_token(token)
    }

    fn create_session(&self, who: &HostIdentity) -> Result<Session, CredentialError> {
        credentials::create_session(who)
    }

    fn external_identity(
        &self,
        issuer: &str,
        subject: &str,
        username: &str,
        groups: &[String],
    ) -> Result<HostIdentity, CredentialError> {
        credentials::external_identity(issuer, subject, username, groups)
    }
}

/// A scheme's answer for one request, generic over the identity so that tests can inspect it.
/// Mirrors the WIT `outcome`: `Authenticated` and `Rejected` decide, the other two pass the
/// request on to the next scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<Identity> {
    Authenticated {
        identity: Identity,
        response_headers: Vec<(String, String)>,
    },
    Rejected {
        message: String,
        retry_after_secs: Option<u32>,
    },
    /// No credential of this scheme was sent; the `WWW-Authenticate` value says how to send one.
    Challenge(String),
    NotApplicable,
}

impl<Identity> Decision<Identity> {
    /// A rejection without a retry hint.
    pub fn rejected(message: impl Into<String>) -> Self {
        Decision::Rejected { message: message.into(), retry_after_secs: None }
    }

    /// The decision for the host's answer to a credential check: its identity (without extra
    /// response headers) or its rejection. An unavailable host store is a plugin error
    /// ([`SchemeError::Unavailable`]), not a verdict on the caller.
    pub fn from_verification(verification: Result<Identity, CredentialError>) -> Result<Self, SchemeError> {
        match verification {
            Ok(identity) => Ok(Decision::Authenticated { identity, response_headers: Vec::new() }),
            Err(failure) => Decision::from_credential_error(failure),
        }
    }

    /// The decision for a failed credential check; see [`Decision::from_verification`].
    pub fn from_credential_error(failure: CredentialError) -> Result<Self, SchemeError> {
        match failure {
            CredentialError::Rejected(message) => Ok(Decision::rejected(message)),
            CredentialError::Throttled(retry_after_secs) => Ok(Decision::Rejected {
                message: format!("too many failed attempts; retry in {retry_after_secs} seconds"),
                retry_after_secs: Some(retry_after_secs),
            }),
            CredentialError::Unavailable(message) => {
                Err(SchemeError::Unavailable(format!("the host cannot check credentials now: {message}")))
            }
        }
    }
}

impl Decision<HostIdentity> {
    /// The WIT `outcome` the component returns to the host.
    pub fn into_outcome(self) -> Outcome {
        match self {
            Decision::Authenticated { identity, response_headers } => {
                Outcome::Authenticated(Authenticated { identity, response_headers })
            }
            Decision::Rejected { message, retry_after_secs } => {
                Outcome::Rejected(Rejection { message, retry_after_secs })
            }
            Decision::Challenge(www_authenticate) => Outcome::Challenge(www_authenticate),
            Decision::NotApplicable => Outcome::NotApplicable,
        }
    }
}

/// The scheme a component instance was configured with in `init`, for `authenticate` to use.
/// Meant for a `static` in the component glue.
#[derive(Debug)]
pub struct ConfiguredScheme<Scheme> {
    scheme: RwLock<Option<Arc<Scheme>>>,
}

impl<Scheme> ConfiguredScheme<Scheme> {
    pub const fn new() -> Self {
        ConfiguredScheme { scheme: RwLock::new(None) }
    }

    /// Replaces the configured scheme (`init` may run again on the same instance).
    pub fn configure(&self, scheme: Scheme) {
        *self.scheme.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(scheme));
    }

    /// The configured scheme; [`SchemeError::Internal`] before `init`.
    pub fn get(&self) -> Result<Arc<Scheme>, SchemeError> {
        self.scheme
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| SchemeError::Internal("`authenticate` was called before `init` on this instance".into()))
    }
}

impl<Scheme> Default for ConfiguredScheme<Scheme> {
    fn default() -> Self {
        ConfiguredScheme::new()
    }
}

/// Parses the provider config given to `init` into `T` like [`crate::config()`] (an empty
/// config takes `T`'s defaults; with `#[serde(deny_unknown_fields)]` an unknown key is an error
/// naming it), failing with [`SchemeError::InvalidConfig`].
pub fn scheme_config<T: DeserializeOwned>(json: &str) -> Result<T, SchemeError> {
    crate::config::<T>(json).map_err(|error| match error {
        crate::types::Error::Invalid(message) => SchemeError::InvalidConfig(message),
        other => SchemeError::Internal(format!("parsing the config failed unexpectedly: {other:?}")),
    })
}

/// Every value of the header `name` (matched case-insensitively), in the order sent.
pub fn header_values<'request>(
    headers: &'request [(String, String)],
    name: &'request str,
) -> impl Iterator<Item = &'request str> + 'request {
    headers
        .iter()
        .filter(move |(header_name, _)| header_name.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// The first value of the header `name` (matched case-insensitively).
pub fn header<'request>(headers: &'request [(String, String)], name: &str) -> Option<&'request str> {
    headers.iter().find(|(header_name, _)| header_name.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
}

/// The credentials of the first `Authorization` header that uses `scheme` (compared
/// case-insensitively, as HTTP auth schemes are): `abc` for `Bearer abc`, trimmed. `Some("")`
/// when the scheme is sent without credentials.
pub fn authorization_credentials<'request>(
    headers: &'request [(String, String)],
    scheme: &str,
) -> Option<&'request str> {
    header_values(headers, "authorization").find_map(|value| {
        let value = value.trim_start();
        let (sent_scheme, credentials) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
        sent_scheme.eq_ignore_ascii_case(scheme).then(|| credentials.trim())
    })
}

/// The value of the cookie `name` (cookie names are case-sensitive) from any `Cookie` header,
/// without surrounding double quotes.
pub fn cookie<'request>(headers: &'request [(String, String)], name: &str) -> Option<&'request str> {
    header_values(headers, "cookie").flat_map(|value| value.split(';')).find_map(|pair| {
        let (cookie_name, cookie_value) = pair.split_once('=')?;
        (cookie_name.trim() == name).then(|| {
            let cookie_value = cookie_value.trim();
            cookie_value.strip_prefix('"').and_then(|inner| inner.strip_suffix('"')).unwrap_or(cookie_value)
        })
    })
}

/// Whether `name` is a valid HTTP header name (a non-empty RFC 9110 token).
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
}

/// Whether `name` is a valid cookie name (RFC 6265 `cookie-name`, which is a header-name token).
pub fn is_cookie_name(name: &str) -> bool {
    is_header_name(name)
}

/// Whether `value` has the shape of a JWT in compact serialization: three non-empty base64url
/// segments separated by dots. Says nothing about its validity.
pub fn looks_like_jwt(value: &str) -> bool {
    let segments: Vec<&str> = value.split('.').collect();
    segments.len() == 3
        && segments.iter().all(|segment| {
            !segment.is_empty()
                && segment.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect()
    }

    #[test]
    fn headers_match_case_insensitively_in_order() {
        let sent = headers(&[("x-api-key", "first"), ("Accept", "*/*"), ("X-Api-Key", "second")]);
        assert_eq!(header(&sent, "X-API-KEY"), Some("first"));
        assert_eq!(header_values(&sent, "x-api-key").collect::<Vec<_>>(), ["first", "second"]);
        assert_eq!(header(&sent, "nano-session"), None);
    }

    #[test]
    fn authorization_credentials_match_the_scheme_case_insensitively() {
        fn check(sent: &[(&str, &str)], scheme: &str, expected: Option<&str>) {
            assert_eq!(authorization_credentials(&headers(sent), scheme), expected, "{sent:?} {scheme}");
        }
        check(&[("authorization", "Bearer abc")], "bearer", Some("abc"));
        check(&[("authorization", "bearer   abc  ")], "Bearer", Some("abc"));
        check(&[("authorization", "Basic xyz"), ("authorization", "Bearer abc")], "Bearer", Some("abc"));
        check(&[("authorization", "Bearer")], "Bearer", Some(""));
        check(&[("authorization", "Bearerabc")], "Bearer", None);
        check(&[("authorization", "Basic xyz")], "Bearer", None);
        check(&[], "Bearer", None);
    }

    #[test]
    fn cookies_are_found_by_exact_name_across_headers() {
        let sent = headers(&[("cookie", "theme=dark; authenticationToken=abc"), ("cookie", "other=\"quoted\"")]);
        assert_eq!(cookie(&sent, "authenticationToken"), Some("abc"));
        assert_eq!(cookie(&sent, "other"), Some("quoted"));
        assert_eq!(cookie(&sent, "authenticationtoken"), None);
        assert_eq!(cookie(&sent, "missing"), None);
        assert_eq!(cookie(&headers(&[("cookie", "broken; a=1")]), "broken"), None);
    }

    #[test]
    fn header_and_cookie_names() {
        for valid in ["x-api-key", "Nano-Session", "authenticationToken", "a_b.c~1"] {
            assert!(is_header_name(valid) && is_cookie_name(valid), "{valid}");
        }
        for invalid in ["", "a b", "a:b", "a=b", "a;b", "a\"b", "é"] {
            assert!(!is_header_name(invalid) && !is_cookie_name(invalid), "{invalid}");
        }
    }

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl-_"));
        for not_a_jwt in ["hp_0123abcd", "a.b", "a.b.c.d", "a..c", "a.b.", "a.b+c.d", "a.b.c=", ""] {
            assert!(!looks_like_jwt(not_a_jwt), "{not_a_jwt}");
        }
    }

    #[test]
    fn credential_errors_become_rejections_or_plugin_errors() {
        let rejected = Decision::<()>::from_verification(Err(CredentialError::Rejected("unknown user".into())));
        assert_eq!(rejected.ok(), Some(Decision::rejected("unknown user")));
        match Decision::<()>::from_verification(Err(CredentialError::Throttled(30))) {
            Ok(Decision::Rejected { retry_after_secs: Some(30), message }) => assert!(message.contains("30 seconds")),
            other => panic!("expected a throttled rejection, got {other:?}"),
        }
        match Decision::<()>::from_verification(Err(CredentialError::Unavailable("store down".into()))) {
            Err(SchemeError::Unavailable(message)) => assert!(message.contains("store down")),
            other => panic!("expected unavailable, got {other:?}"),
        }
        assert_eq!(
            Decision::from_verification(Ok("alice")).ok(),
            Some(Decision::Authenticated { identity: "alice", response_headers: Vec::new() })
        );
    }

    #[test]
    fn config_errors_are_invalid_config_naming_the_key() {
        #[derive(Debug, Default, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        struct Example {
            #[allow(dead_code)]
            realm: String,
        }
        assert!(scheme_config::<Example>("").is_ok());
        match scheme_config::<Example>(r#"{"relm": "lab"}"#) {
            Err(SchemeError::InvalidConfig(message)) => assert!(message.contains("relm"), "{message}"),
            other => panic!("expected invalid-config, got {other:?}"),
        }
    }
}
