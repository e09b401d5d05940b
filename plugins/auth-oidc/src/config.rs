//! The provider config of `auth-oidc` and its validation into [`OidcSettings`].

use hyperplane_guest::auth::{SchemeError, scheme_config};
use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;

/// The config as the operator writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOidcConfig {
    issuer: String,
    audience: String,
    #[serde(default)]
    jwks_url: Option<String>,
    #[serde(default)]
    jwks: Option<serde_json::Value>,
    #[serde(default = "default_leeway_secs")]
    leeway_secs: u64,
    #[serde(default = "default_username_claim")]
    username_claim: String,
    #[serde(default = "default_groups_claim")]
    groups_claim: String,
}

fn default_leeway_secs() -> u64 {
    60
}

fn default_username_claim() -> String {
    "preferred_username".into()
}

fn default_groups_claim() -> String {
    "groups".into()
}

/// Where the issuer's signing keys come from.
#[derive(Debug, Clone, PartialEq)]
pub enum KeySource {
    /// Fetched over outgoing HTTP (the operator grants the host), refetched on an unknown `kid`.
    Url(HttpsOrHttpUrl),
    /// Given inline in the config (air-gapped setups, tests).
    Inline(JwkSet),
}

/// An absolute `http` or `https` URL, split for `wasi:http`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsOrHttpUrl {
    pub full: String,
    pub is_https: bool,
    /// `host` or `host:port`.
    pub authority: String,
    /// Path and query, at least `/`.
    pub path_with_query: String,
}

impl HttpsOrHttpUrl {
    /// Parses `url`; the error says what is wrong with it.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (is_https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!("{url:?} is not an http:// or https:// URL"));
        };
        let (authority, path_with_query) = match rest.find(['/', '?']) {
            Some(index) if rest[index..].starts_with('/') => (&rest[..index], rest[index..].to_owned()),
            Some(index) => (&rest[..index], format!("/{}", &rest[index..])),
            None => (rest, "/".to_owned()),
        };
        if authority.is_empty() || authority.contains(['@', '#', ' ']) {
            return Err(format!("{url:?} has no usable host"));
        }
        if path_with_query.contains('#') {
            return Err(format!("{url:?} has a fragment"));
        }
        Ok(HttpsOrHttpUrl { full: url.to_owned(), is_https, authority: authority.to_owned(), path_with_query })
    }
}

/// The validated config.
#[derive(Debug, Clone, PartialEq)]
pub struct OidcSettings {
    /// The `iss` every token must carry, and the issuer reported to the host.
    pub issuer: String,
    /// A value every token's `aud` must contain.
    pub audience: String,
    pub key_source: KeySource,
    /// Clock skew tolerated for `exp` and `nbf`.
    pub leeway_secs: u64,
    /// The claim that names the user; `sub` when the token lacks it.
    pub username_claim: String,
    /// The claim that lists the user's groups (a list of strings, or one string).
    pub groups_claim: String,
}

fn invalid(key: &str, problem: impl std::fmt::Display) -> SchemeError {
    SchemeError::InvalidConfig(format!("invalid config at `{key}`: {problem}"))
}

impl OidcSettings {
    /// Parses and validates the provider config given to `init`.
    pub fn from_config(config_json: &str) -> Result<Self, SchemeError> {
        let raw: RawOidcConfig = scheme_config(config_json)?;
        if raw.issuer.trim().is_empty() {
            return Err(invalid("issuer", "must not be empty"));
        }
        if raw.audience.trim().is_empty() {
            return Err(invalid("audience", "must not be empty"));
        }
        for (key, claim) in [("username_claim", &raw.username_claim), ("groups_claim", &raw.groups_claim)] {
            if claim.is_empty() {
                return Err(invalid(key, "must not be empty"));
            }
        }
        let key_source = match (raw.jwks_url, raw.jwks) {
            (Some(url), None) => {
                KeySource::Url(HttpsOrHttpUrl::parse(&url).map_err(|problem| invalid("jwks_url", problem))?)
            }
            (None, Some(inline)) => KeySource::Inline(
                serde_json::from_value(inline).map_err(|error| invalid("jwks", format!("not a JWK set: {error}")))?,
            ),
            (Some(_), Some(_)) => return Err(invalid("jwks", "give either `jwks_url` or `jwks`, not both")),
            (None, None) => return Err(invalid("jwks_url", "one of `jwks_url` or `jwks` is required")),
        };
        Ok(OidcSettings {
            issuer: raw.issuer,
            audience: raw.audience,
            key_source,
            leeway_secs: raw.leeway_secs,
            username_claim: raw.username_claim,
            groups_claim: raw.groups_claim,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUER_AND_AUDIENCE: &str = r#""issuer": "https://idp.example.com", "audience": "hyperplane""#;

    fn check_invalid(config: &str, fragment: &str) {
        match OidcSettings::from_config(config) {
            Err(SchemeError::InvalidConfig(message)) => {
                assert!(message.contains(fragment), "{message} lacks {fragment}")
            }
            other => panic!("expected invalid-config for {config}, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_a_key_url() {
        let config = format!(r#"{{{ISSUER_AND_AUDIENCE}, "jwks_url": "https://idp.example.com:8443/keys?x=1"}}"#);
        let settings = OidcSettings::from_config(&config).unwrap_or_else(|error| panic!("{error:?}"));
        assert_eq!(settings.leeway_secs, 60);
        assert_eq!(settings.username_claim, "preferred_username");
        assert_eq!(settings.groups_claim, "groups");
        let expected_url = HttpsOrHttpUrl {
            full: "https://idp.example.com:8443/keys?x=1".into(),
            is_https: true,
            authority: "idp.example.com:8443".into(),
            path_with_query: "/keys?x=1".into(),
        };
        assert_eq!(settings.key_source, KeySource::Url(expected_url));
    }

    #[test]
    fn urls_are_split_for_wasi_http() {
        let url = HttpsOrHttpUrl::parse("http://idp:8080").ok();
        assert_eq!(
            url.map(|url| (url.is_https, url.authority, url.path_with_query)),
            Some((false, "idp:8080".into(), "/".into()))
        );
        let url = HttpsOrHttpUrl::parse("https://idp?a=b").ok();
        assert_eq!(url.map(|url| url.path_with_query), Some("/?a=b".into()));
        for bad in ["ftp://idp/keys", "https:///keys", "https://user@idp/keys", "https://idp/keys#frag", "idp/keys"] {
            assert!(HttpsOrHttpUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_is_strict_and_names_the_key() {
        check_invalid(r#"{"audience": "hyperplane", "jwks": {"keys": []}}"#, "issuer");
        check_invalid(r#"{"issuer": "https://idp.example.com", "jwks": {"keys": []}}"#, "audience");
        check_invalid(&format!("{{{ISSUER_AND_AUDIENCE}}}"), "jwks_url");
        check_invalid(
            &format!(r#"{{{ISSUER_AND_AUDIENCE}, "jwks": {{"keys": []}}, "jwks_url": "https://i/k"}}"#),
            "jwks",
        );
        check_invalid(&format!(r#"{{{ISSUER_AND_AUDIENCE}, "jwks": {{"keys": 3}}}}"#), "jwks");
        check_invalid(&format!(r#"{{{ISSUER_AND_AUDIENCE}, "jwks_url": "ftp://idp/keys"}}"#), "jwks_url");
        check_invalid(&format!(r#"{{{ISSUER_AND_AUDIENCE}, "jwks": {{"keys": []}}, "leeway": 5}}"#), "leeway");
        check_invalid(
            &format!(r#"{{{ISSUER_AND_AUDIENCE}, "jwks": {{"keys": []}}, "leeway_secs": -1}}"#),
            "leeway_secs",
        );
        check_invalid(
            &format!(r#"{{{ISSUER_AND_AUDIENCE}, "jwks": {{"keys": []}}, "groups_claim": ""}}"#),
            "groups_claim",
        );
        check_invalid(r#"{"issuer": " ", "audience": "a", "jwks": {"keys": []}}"#, "issuer");
    }
}
