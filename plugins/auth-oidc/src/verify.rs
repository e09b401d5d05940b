//! Checking a bearer JWT against the issuer's keys and the configured claims, then asking the
//! host for the identity it maps to (`external-identity`).
//!
//! Only asymmetric signatures are accepted (an `HS256` token would let anyone who knows a
//! public key forge one). Keys come from the config or from `jwks_url`, cached in the instance
//! and refetched at most once per [`MIN_SECS_BETWEEN_KEY_FETCHES`] when a token names an unknown
//! `kid`. Rejections say which check failed and never echo the token.

use std::sync::{Mutex, PoisonError};

use hyperplane_guest::auth::{Credentials, Decision, SchemeError, authorization_credentials, looks_like_jwt};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::{HttpsOrHttpUrl, KeySource, OidcSettings};

/// The challenge sent when no bearer token came.
pub const BEARER_CHALLENGE: &str = "Bearer realm=\"hyperplane\"";

/// A token naming an unknown key refetches the key set at most this often.
pub const MIN_SECS_BETWEEN_KEY_FETCHES: u64 = 30;

/// The signing algorithms accepted: asymmetric only.
const ACCEPTED_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Fetches the issuer's key set (the body of a `GET` on `jwks_url`). Inside a component this
/// is outgoing `wasi:http`; tests serve key sets from memory.
pub trait KeySetFetcher {
    fn fetch_key_set(&self, url: &HttpsOrHttpUrl) -> Result<String, String>;
}

/// Why a token was not accepted. Never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("the token's signing algorithm {0} is not accepted (only RSA, ECDSA and EdDSA signatures are)")]
    UnsupportedAlgorithm(String),
    #[error("the token's signing key `{0}` is not in the issuer's key set")]
    UnknownKey(String),
    #[error("no key in the issuer's key set fits the token's signing algorithm {0}")]
    NoFittingKey(String),
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token's claims are not a JSON object")]
    MalformedClaims,
    #[error("the token's issuer (`iss`) is not the configured issuer")]
    WrongIssuer,
    #[error("the token's audience (`aud`) does not include `{0}`")]
    WrongAudience(String),
    #[error("the token has no expiry (`exp`)")]
    MissingExpiry,
    #[error("the token has expired (`exp`)")]
    Expired,
    #[error("the token is not valid yet (`nbf`)")]
    NotYetValid,
    #[error("the token has no subject (`sub`)")]
    MissingSubject,
}

/// What a valid token asserts, as passed on to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedClaims {
    pub subject: String,
    pub username: String,
    pub groups: Vec<String>,
}

/// The instance's copy of the issuer's keys.
#[derive(Debug, Default)]
struct KeyCache {
    keys: Option<JwkSet>,
    last_fetch_attempt_unix_secs: Option<u64>,
    last_fetch_error: Option<String>,
}

impl KeyCache {
    /// Fetches the key set unless the last attempt was less than
    /// [`MIN_SECS_BETWEEN_KEY_FETCHES`] ago. A failed fetch keeps the keys already known.
    fn refresh(&mut self, url: &HttpsOrHttpUrl, fetcher: &impl KeySetFetcher, now_unix_secs: u64) {
        if let Some(last_attempt) = self.last_fetch_attempt_unix_secs
            && now_unix_secs < last_attempt.saturating_add(MIN_SECS_BETWEEN_KEY_FETCHES)
        {
            return;
        }
        self.last_fetch_attempt_unix_secs = Some(now_unix_secs);
        let fetched = fetcher.fetch_key_set(url).and_then(|body| {
            serde_json::from_str::<JwkSet>(&body).map_err(|error| format!("the response is not a JWK set: {error}"))
        });
        match fetched {
            Ok(keys) => {
                self.keys = Some(keys);
                self.last_fetch_error = None;
            }
            Err(problem) => {
                hyperplane_guest::log::warn(
                    "fetching the issuer's key set failed",
                    &[("url", &url.full), ("error", &problem)],
                );
                self.last_fetch_error = Some(problem);
            }
        }
    }
}

/// The configured scheme with its key cache.
#[derive(Debug)]
pub struct OidcScheme {
    settings: OidcSettings,
    cache: Mutex<KeyCache>,
}

impl OidcScheme {
    pub fn new(settings: OidcSettings) -> Self {
        let keys = match &settings.key_source {
            KeySource::Inline(keys) => Some(keys.clone()),
            KeySource::Url(_) => None,
        };
        OidcScheme { settings, cache: Mutex::new(KeyCache { keys, ..KeyCache::default() }) }
    }

    /// Decides for a request with these headers at `now_unix_secs`.
    pub fn authenticate<C: Credentials>(
        &self,
        credentials: &C,
        fetcher: &impl KeySetFetcher,
        headers: &[(String, String)],
        now_unix_secs: u64,
    ) -> Result<Decision<C::Identity>, SchemeError> {
        let Some(bearer_token) = authorization_credentials(headers, "Bearer") else {
            return Ok(Decision::Challenge(BEARER_CHALLENGE.into()));
        };
        if !looks_like_jwt(bearer_token) {
            return Ok(Decision::NotApplicable);
        }
        let Ok(header) = jsonwebtoken::decode_header(bearer_token) else {
            return Ok(Decision::NotApplicable);
        };
        let claims = match self.verify(bearer_token, header.alg, header.kid.as_deref(), fetcher, now_unix_secs)? {
            Ok(claims) => claims,
            Err(rejection) => return Ok(Decision::rejected(rejection.to_string())),
        };
        Decision::from_verification(credentials.external_identity(
            &self.settings.issuer,
            &claims.subject,
            &claims.username,
            &claims.groups,
        ))
    }

    /// Checks the signature, then the claims. The outer error is the plugin's (keys
    /// unavailable), the inner one the token's.
    fn verify(
        &self,
        token: &str,
        algorithm: Algorithm,
        key_id: Option<&str>,
        fetcher: &impl KeySetFetcher,
        now_unix_secs: u64,
    ) -> Result<Result<VerifiedClaims, TokenRejection>, SchemeError> {
        if !ACCEPTED_ALGORITHMS.contains(&algorithm) {
            return Ok(Err(TokenRejection::UnsupportedAlgorithm(format!("{algorithm:?}"))));
        }
        let keys = match self.candidate_keys(algorithm, key_id, fetcher, now_unix_secs)? {
            Ok(keys) => keys,
            Err(rejection) => return Ok(Err(rejection)),
        };
        // Claims are checked below, with our clock and our messages.
        let mut validation = Validation::new(algorithm);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        for key in &keys {
            match jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation) {
                Ok(data) => return Ok(self.check_claims(&data.claims, now_unix_secs)),
                Err(error)
                    if matches!(error.kind(), ErrorKind::Json(_) | ErrorKind::Utf8(_) | ErrorKind::Base64(_)) =>
                {
                    return Ok(Err(TokenRejection::MalformedClaims));
                }
                Err(_) => continue,
            }
        }
        Ok(Err(TokenRejection::BadSignature))
    }

    /// The keys that may have signed a token with this algorithm and key id, fetching the key
    /// set first when it is not known yet or lacks the key id.
    fn candidate_keys(
        &self,
        algorithm: Algorithm,
        key_id: Option<&str>,
        fetcher: &impl KeySetFetcher,
        now_unix_secs: u64,
    ) -> Result<Result<Vec<DecodingKey>, TokenRejection>, SchemeError> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let knows_key = |keys: &JwkSet| key_id.is_none_or(|key_id| keys.find(key_id).is_some());
        if let KeySource::Url(url) = &self.settings.key_source
            && !cache.keys.as_ref().is_some_and(knows_key)
        {
            cache.refresh(url, fetcher, now_unix_secs);
        }
        let Some(keys) = &cache.keys else {
            let problem = cache.last_fetch_error.as_deref().unwrap_or("no fetch has succeeded yet");
            return Err(SchemeError::Unavailable(format!("the issuer's key set is not available: {problem}")));
        };
        let fitting: Vec<DecodingKey> = keys
            .keys
            .iter()
            .filter(|jwk| key_id.is_none_or(|key_id| jwk.common.key_id.as_deref() == Some(key_id)))
            .filter(|jwk| key_fits_algorithm(jwk, algorithm))
            .filter_map(|jwk| DecodingKey::from_jwk(jwk).ok())
            .collect();
        if !fitting.is_empty() {
            return Ok(Ok(fitting));
        }
        Ok(Err(match key_id {
            Some(key_id) if keys.find(key_id).is_none() => TokenRejection::UnknownKey(key_id.to_owned()),
            _ => TokenRejection::NoFittingKey(format!("{algorithm:?}")),
        }))
    }

    /// Checks `iss`, `aud`, `exp` (required) and `nbf` (when present) with the leeway, and picks
    /// the subject, user name and groups.
    fn check_claims(&self, claims: &Map<String, Value>, now_unix_secs: u64) -> Result<VerifiedClaims, TokenRejection> {
        let settings = &self.settings;
        if claims.get("iss").and_then(Value::as_str) != Some(settings.issuer.as_str()) {
            return Err(TokenRejection::WrongIssuer);
        }
        let audience_matches = match claims.get("aud") {
            Some(Value::String(audience)) => *audience == settings.audience,
            Some(Value::Array(audiences)) => {
                audiences.iter().any(|audience| audience.as_str() == Some(&settings.audience))
            }
            _ => false,
        };
        if !audience_matches {
            return Err(TokenRejection::WrongAudience(settings.audience.clone()));
        }
        let now = now_unix_secs as f64;
        let leeway = settings.leeway_secs as f64;
        let expiry = claims.get("exp").and_then(Value::as_f64).ok_or(TokenRejection::MissingExpiry)?;
        if now > expiry + leeway {
            return Err(TokenRejection::Expired);
        }
        if let Some(not_before) = claims.get("nbf").and_then(Value::as_f64)
            && now + leeway < not_before
        {
            return Err(TokenRejection::NotYetValid);
        }
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|subject| !subject.is_empty())
            .ok_or(TokenRejection::MissingSubject)?;
        let username = claims
            .get(&settings.username_claim)
            .and_then(Value::as_str)
            .filter(|username| !username.is_empty())
            .unwrap_or(subject);
        let groups = match claims.get(&settings.groups_claim) {
            Some(Value::Array(groups)) => groups.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            Some(Value::String(group)) => vec![group.clone()],
            _ => Vec::new(),
        };
        Ok(VerifiedClaims { subject: subject.to_owned(), username: username.to_owned(), groups })
    }
}

/// Whether `jwk` is a signing key of the type `algorithm` needs (and, when the key names its
/// algorithm, that very one).
fn key_fits_algorithm(jwk: &Jwk, algorithm: Algorithm) -> bool {
    if jwk.common.public_key_use.as_ref().is_some_and(|key_use| *key_use != PublicKeyUse::Signature) {
        return false;
    }
    if let Some(key_algorithm) = &jwk.common.key_algorithm
        && key_algorithm.to_string() != format!("{algorithm:?}")
    {
        return false;
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => matches!(
            algorithm,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        AlgorithmParameters::EllipticCurve(parameters) => matches!(
            (&parameters.curve, algorithm),
            (EllipticCurve::P256, Algorithm::ES256) | (EllipticCurve::P384, Algorithm::ES384)
        ),
        AlgorithmParameters::OctetKeyPair(_) => algorithm == Algorithm::EdDSA,
        AlgorithmParameters::OctetKey(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use hyperplane_guest::auth::CredentialError;
    use hyperplane_guest::auth_testing::{CredentialCall, FakeCredentials, FakeIdentity};
    use jsonwebtoken::{EncodingKey, Header};
    use p256::pkcs8::EncodePrivateKey;
    use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
    use rsa::traits::PublicKeyParts;
    use serde_json::json;

    use super::*;

    const ISSUER: &str = "https://idp.example.com";
    const AUDIENCE: &str = "hyperplane";
    /// The tests' "now"; tokens are issued around it.
    const NOW: u64 = 1_800_000_000;
    /// A 2048-bit RSA key made for these tests only (generating one here would be slow in a
    /// debug build).
    const TEST_ONLY_RSA_KEY_PEM: &str = include_str!("../tests/fixtures/test-only-rsa-2048.pem");

    /// A signing key of the test issuer with its public JWK.
    struct TestKey {
        algorithm: Algorithm,
        key_id: &'static str,
        encoding_key: EncodingKey,
        public_jwk: Value,
    }

    fn ec_key(key_id: &'static str, secret_scalar_byte: u8) -> TestKey {
        let secret = p256::SecretKey::from_slice(&[secret_scalar_byte; 32]).unwrap_or_else(|error| panic!("{error}"));
        let der = secret.to_pkcs8_der().unwrap_or_else(|error| panic!("{error}"));
        let point = p256::EncodedPoint::from(secret.public_key());
        let coordinate =
            |bytes: Option<&p256::FieldBytes>| URL_SAFE_NO_PAD.encode(bytes.map(|b| b.to_vec()).unwrap_or_default());
        TestKey {
            algorithm: Algorithm::ES256,
            key_id,
            encoding_key: EncodingKey::from_ec_der(der.as_bytes()),
            public_jwk: json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": key_id,
                "x": coordinate(point.x()), "y": coordinate(point.y()),
            }),
        }
    }

    fn rsa_key(key_id: &'static str) -> TestKey {
        let private =
            rsa::RsaPrivateKey::from_pkcs1_pem(TEST_ONLY_RSA_KEY_PEM).unwrap_or_else(|error| panic!("{error}"));
        let der = private.to_pkcs1_der().unwrap_or_else(|error| panic!("{error}"));
        TestKey {
            algorithm: Algorithm::RS256,
            key_id,
            encoding_key: EncodingKey::from_rsa_der(der.as_bytes()),
            public_jwk: json!({
                "kty": "RSA", "kid": key_id,
                "n": URL_SAFE_NO_PAD.encode(private.n().to_bytes_be()),
                "e": URL_SAFE_NO_PAD.encode(private.e().to_bytes_be()),
            }),
        }
    }

    fn key_set(keys: &[&TestKey]) -> Value {
        json!({ "keys": keys.iter().map(|key| key.public_jwk.clone()).collect::<Vec<_>>() })
    }

    fn valid_claims() -> Value {
        json!({
            "iss": ISSUER, "aud": [AUDIENCE, "other"], "sub": "subject-42",
            "preferred_username": "alice", "groups": ["ops", "dev"],
            "iat": NOW - 10, "nbf": NOW - 10, "exp": NOW + 300,
        })
    }

    fn sign(key: &TestKey, claims: &Value) -> String {
        let mut header = Header::new(key.algorithm);
        header.kid = Some(key.key_id.to_owned());
        jsonwebtoken::encode(&header, claims, &key.encoding_key).unwrap_or_else(|error| panic!("{error}"))
    }

    fn bearer(token: &str) -> Vec<(String, String)> {
        vec![("authorization".to_owned(), format!("Bearer {token}"))]
    }

    fn inline_scheme(keys: &[&TestKey], extra_config: Value) -> OidcScheme {
        let mut config = json!({ "issuer": ISSUER, "audience": AUDIENCE, "jwks": key_set(keys) });
        if let (Some(config), Some(extra)) = (config.as_object_mut(), extra_config.as_object()) {
            config.extend(extra.clone());
        }
        let settings = OidcSettings::from_config(&config.to_string()).unwrap_or_else(|error| panic!("{error:?}"));
        OidcScheme::new(settings)
    }

    /// Serves key sets from memory and counts the fetches.
    struct FakeFetcher {
        served: Mutex<Result<String, String>>,
        fetches: Mutex<u32>,
    }

    impl Default for FakeFetcher {
        /// A fetcher for schemes with inline keys, which never fetch.
        fn default() -> Self {
            FakeFetcher::serving(Err("no fetch expected".into()))
        }
    }

    impl FakeFetcher {
        fn serving(response: Result<String, String>) -> Self {
            FakeFetcher { served: Mutex::new(response), fetches: Mutex::new(0) }
        }
        fn serve(&self, response: Result<String, String>) {
            *self.served.lock().unwrap_or_else(PoisonError::into_inner) = response;
        }
        fn fetches(&self) -> u32 {
            *self.fetches.lock().unwrap_or_else(PoisonError::into_inner)
        }
    }

    impl KeySetFetcher for FakeFetcher {
        fn fetch_key_set(&self, url: &HttpsOrHttpUrl) -> Result<String, String> {
            assert_eq!(url.full, "https://idp.example.com/jwks");
            *self.fetches.lock().unwrap_or_else(PoisonError::into_inner) += 1;
            self.served.lock().unwrap_or_else(PoisonError::into_inner).clone()
        }
    }

    fn credentials() -> FakeCredentials {
        FakeCredentials::new().with_trusted_issuer(ISSUER)
    }

    fn decide(
        scheme: &OidcScheme,
        headers: &[(String, String)],
        now: u64,
    ) -> Result<Decision<FakeIdentity>, SchemeError> {
        scheme.authenticate(&credentials(), &FakeFetcher::default(), headers, now)
    }

    fn alice() -> Decision<FakeIdentity> {
        Decision::Authenticated { identity: FakeIdentity("user alice".into()), response_headers: Vec::new() }
    }

    fn check_rejected(scheme: &OidcScheme, token: &str, expected: TokenRejection) {
        let decision = decide(scheme, &bearer(token), NOW).ok();
        assert_eq!(decision, Some(Decision::rejected(expected.to_string())));
        assert!(!expected.to_string().contains(token));
    }

    #[test]
    fn es256_and_rs256_tokens_become_the_hosts_external_identity() {
        let (ec, rsa) = (ec_key("ec-1", 7), rsa_key("rsa-1"));
        let scheme = inline_scheme(&[&ec, &rsa], json!({}));
        for key in [&ec, &rsa] {
            let credentials = credentials();
            let fetcher = FakeFetcher::default();
            let decision = scheme.authenticate(&credentials, &fetcher, &bearer(&sign(key, &valid_claims())), NOW).ok();
            assert_eq!(decision, Some(alice()), "{:?}", key.algorithm);
            let expected_call = CredentialCall::ExternalIdentity {
                issuer: ISSUER.into(),
                subject: "subject-42".into(),
                username: "alice".into(),
                groups: vec!["ops".into(), "dev".into()],
            };
            assert_eq!(credentials.calls(), [expected_call]);
            assert_eq!(fetcher.fetches(), 0);
        }
    }

    #[test]
    fn each_failed_check_is_named() {
        let (ec, rsa) = (ec_key("ec-1", 7), rsa_key("rsa-1"));
        let scheme = inline_scheme(&[&ec, &rsa], json!({}));
        let with = |changes: Value| {
            let mut claims = valid_claims();
            if let (Some(claims), Some(changes)) = (claims.as_object_mut(), changes.as_object()) {
                for (name, value) in changes {
                    if value.is_null() {
                        claims.remove(name);
                    } else {
                        claims.insert(name.clone(), value.clone());
                    }
                }
            }
            sign(&ec, &claims)
        };
        check_rejected(&scheme, &with(json!({"exp": NOW - 61})), TokenRejection::Expired);
        check_rejected(&scheme, &with(json!({"exp": null})), TokenRejection::MissingExpiry);
        check_rejected(&scheme, &with(json!({"nbf": NOW + 61})), TokenRejection::NotYetValid);
        check_rejected(&scheme, &with(json!({"iss": "https://evil.example.com"})), TokenRejection::WrongIssuer);
        check_rejected(&scheme, &with(json!({"aud": "someone-else"})), TokenRejection::WrongAudience(AUDIENCE.into()));
        check_rejected(&scheme, &with(json!({"aud": null})), TokenRejection::WrongAudience(AUDIENCE.into()));
        check_rejected(&scheme, &with(json!({"sub": ""})), TokenRejection::MissingSubject);

        // Signed by a key the issuer does not have, under a known or an unknown key id.
        let impostor = ec_key("ec-1", 9);
        check_rejected(&scheme, &sign(&impostor, &valid_claims()), TokenRejection::BadSignature);
        check_rejected(&scheme, &sign(&ec_key("ec-2", 9), &valid_claims()), TokenRejection::UnknownKey("ec-2".into()));
        // A valid signature with a payload swapped in.
        let genuine = sign(&ec, &valid_claims());
        let forged_payload = URL_SAFE_NO_PAD.encode(json!({"sub": "admin"}).to_string());
        let parts: Vec<&str> = genuine.split('.').collect();
        check_rejected(&scheme, &format!("{}.{forged_payload}.{}", parts[0], parts[2]), TokenRejection::BadSignature);
        // An RSA key id used with an ECDSA signature.
        let mismatched = TestKey { key_id: "rsa-1", ..ec_key("rsa-1", 7) };
        check_rejected(&scheme, &sign(&mismatched, &valid_claims()), TokenRejection::NoFittingKey("ES256".into()));
        // A symmetric algorithm is never accepted.
        let hmac = TestKey {
            algorithm: Algorithm::HS256,
            key_id: "ec-1",
            encoding_key: EncodingKey::from_secret(b"public knowledge"),
            public_jwk: Value::Null,
        };
        check_rejected(&scheme, &sign(&hmac, &valid_claims()), TokenRejection::UnsupportedAlgorithm("HS256".into()));
    }

    #[test]
    fn the_leeway_applies_to_exp_and_nbf() {
        let ec = ec_key("ec-1", 7);
        let token = sign(&ec, &json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "s", "nbf": NOW, "exp": NOW}));
        let scheme = inline_scheme(&[&ec], json!({"leeway_secs": 5}));
        let accepted =
            Decision::Authenticated { identity: FakeIdentity("user s".into()), response_headers: Vec::new() };
        assert_eq!(decide(&scheme, &bearer(&token), NOW + 5).ok(), Some(accepted.clone()));
        assert_eq!(decide(&scheme, &bearer(&token), NOW - 5).ok(), Some(accepted));
        let expired = Decision::rejected(TokenRejection::Expired.to_string());
        assert_eq!(decide(&scheme, &bearer(&token), NOW + 6).ok(), Some(expired));
        let early = Decision::rejected(TokenRejection::NotYetValid.to_string());
        assert_eq!(decide(&scheme, &bearer(&token), NOW - 6).ok(), Some(early));
    }

    #[test]
    fn username_and_groups_claims_are_configurable() {
        let ec = ec_key("ec-1", 7);
        let claims = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "subject-42", "exp": NOW + 60,
            "email": "bob@example.com", "roles": "admins",
        });
        let token = sign(&ec, &claims);
        for (config, username, groups) in [
            (json!({}), "subject-42", vec![]),
            (json!({"username_claim": "email", "groups_claim": "roles"}), "bob@example.com", vec!["admins".to_owned()]),
        ] {
            let credentials = credentials();
            let scheme = inline_scheme(&[&ec], config);
            let decision = scheme.authenticate(&credentials, &FakeFetcher::default(), &bearer(&token), NOW);
            assert!(matches!(decision, Ok(Decision::Authenticated { .. })));
            let expected_call = CredentialCall::ExternalIdentity {
                issuer: ISSUER.into(),
                subject: "subject-42".into(),
                username: username.into(),
                groups,
            };
            assert_eq!(credentials.calls(), [expected_call]);
        }
    }

    #[test]
    fn the_hosts_refusal_of_the_issuer_is_a_rejection() {
        let ec = ec_key("ec-1", 7);
        let scheme = inline_scheme(&[&ec], json!({}));
        let untrusting = FakeCredentials::new();
        let decision =
            scheme.authenticate(&untrusting, &FakeFetcher::default(), &bearer(&sign(&ec, &valid_claims())), NOW);
        assert_eq!(decision.ok(), Some(Decision::rejected("issuer not trusted for this provider")));
        let unavailable = FakeCredentials::new().failing_with(CredentialError::Unavailable("store down".into()));
        let decision =
            scheme.authenticate(&unavailable, &FakeFetcher::default(), &bearer(&sign(&ec, &valid_claims())), NOW);
        assert!(matches!(decision, Err(SchemeError::Unavailable(_))));
    }

    #[test]
    fn other_bearers_pass_and_no_bearer_is_a_challenge() {
        let scheme = inline_scheme(&[&ec_key("ec-1", 7)], json!({}));
        assert_eq!(decide(&scheme, &bearer("hp_0123456789abcdef"), NOW).ok(), Some(Decision::NotApplicable));
        assert_eq!(decide(&scheme, &bearer("bm90.anNvbg.c2ln"), NOW).ok(), Some(Decision::NotApplicable));
        assert_eq!(decide(&scheme, &[], NOW).ok(), Some(Decision::Challenge(BEARER_CHALLENGE.into())));
        let basic = vec![("authorization".to_owned(), "Basic YTpi".to_owned())];
        assert_eq!(decide(&scheme, &basic, NOW).ok(), Some(Decision::Challenge(BEARER_CHALLENGE.into())));
    }

    #[test]
    fn fetched_keys_are_cached_and_refetched_at_most_every_30_seconds_for_an_unknown_key() {
        let (first, second) = (ec_key("first", 7), rsa_key("second"));
        let config = json!({ "issuer": ISSUER, "audience": AUDIENCE, "jwks_url": "https://idp.example.com/jwks" });
        let settings = OidcSettings::from_config(&config.to_string()).unwrap_or_else(|error| panic!("{error:?}"));
        let scheme = OidcScheme::new(settings);
        let fetcher = FakeFetcher::serving(Ok(key_set(&[&first]).to_string()));
        let decide_at = |key: &TestKey, now: u64| {
            scheme.authenticate(&credentials(), &fetcher, &bearer(&sign(key, &valid_claims())), now).ok()
        };

        assert_eq!(decide_at(&first, NOW), Some(alice()));
        assert_eq!(decide_at(&first, NOW + 1), Some(alice()));
        assert_eq!(fetcher.fetches(), 1, "a known key needs no fetch");

        // The issuer rotates in a new key: within 30 s of the last fetch it stays unknown.
        fetcher.serve(Ok(key_set(&[&first, &second]).to_string()));
        let unknown = Some(Decision::rejected(TokenRejection::UnknownKey("second".into()).to_string()));
        assert_eq!(decide_at(&second, NOW + 29), unknown);
        assert_eq!(fetcher.fetches(), 1);
        assert_eq!(decide_at(&second, NOW + 30), Some(alice()));
        assert_eq!(fetcher.fetches(), 2);

        // A failed refetch keeps the keys already known.
        fetcher.serve(Err("connection refused".into()));
        let unknown_third = Some(Decision::rejected(TokenRejection::UnknownKey("third".into()).to_string()));
        assert_eq!(decide_at(&ec_key("third", 8), NOW + 60), unknown_third);
        assert_eq!(fetcher.fetches(), 3);
        assert_eq!(decide_at(&first, NOW + 61), Some(alice()));
        assert_eq!(fetcher.fetches(), 3);
    }

    #[test]
    fn an_unreachable_key_set_is_unavailable() {
        let config = json!({ "issuer": ISSUER, "audience": AUDIENCE, "jwks_url": "https://idp.example.com/jwks" });
        let scheme =
            OidcScheme::new(OidcSettings::from_config(&config.to_string()).unwrap_or_else(|error| panic!("{error:?}")));
        let ec = ec_key("ec-1", 7);
        for served in [Err("connection refused".to_owned()), Ok("<html>".to_owned())] {
            let fetcher = FakeFetcher::serving(served);
            match scheme.authenticate(&credentials(), &fetcher, &bearer(&sign(&ec, &valid_claims())), NOW + 100_000) {
                Err(SchemeError::Unavailable(message)) => assert!(message.contains("key set"), "{message}"),
                other => panic!("expected unavailable, got {other:?}"),
            }
        }
    }
}
