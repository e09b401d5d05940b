//! Auth scheme plugins (`hyperplane:auth/auth-scheme@0.1.0`): a pool of component instances
//! behind [`AuthScheme`], and the host side of `hyperplane:auth/credentials`.
//!
//! A scheme never sees a stored secret: it passes what the client sent to a credential check of
//! the host ([`Credentials`]), which answers with an `identity` resource. Only the host creates
//! identities, and only during the request being authenticated: leftovers of an earlier
//! request are deleted before the next one starts, so `authenticated` can only carry a caller
//! the host verified for this request. A trap, timeout or memory-cap hit fails the request
//! (503 naming the scheme) and discards the instance, as for drivers.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::Store;
use wasmtime::component::{Instance as ComponentInstance, InstancePre, Linker, Resource};

use super::bindings::auth::exports::hyperplane::auth::scheme::Outcome;
use super::bindings::auth::hyperplane::auth::credentials::{self, CredentialError as WitCredentialError, Session};
use super::bindings::auth::hyperplane::auth::types::{self, Error as SchemeError, Request, SchemeInfo};
use super::bindings::auth::{Scheme, SchemeIndices};
use super::errors::{CallError, LoadError};
use super::http::OutgoingHttpAllowList;
use super::pool::{GuestExports, InstancePool, PoolSettings, PoolStatistics};
use super::response_size::EstimatedSize;
use super::runtime::{PluginRuntime, RuntimeShared};
use super::settings::ComponentSource;
use super::state::MemoryStateStore;
use super::store_data::{ProviderContext, StoreData, truncate_to_char_boundary};
use super::version::check_auth_scheme_exports;
use crate::auth::chain::{AuthRequest, AuthScheme, SchemeFailure, SchemeOutcome};
use crate::auth::{CredentialError, Credentials, Principal, PrincipalKind};

/// Response headers a scheme may add, lowercase: `set-cookie` (a session cookie),
/// `www-authenticate` (a challenge) and `authentication-info` (RFC 7615). Anything else
/// (`location`, `content-type`, CORS headers, …) could change what the response means, so it is
/// dropped with a warning.
pub const ALLOWED_RESPONSE_HEADERS: [&str; 3] = ["set-cookie", "www-authenticate", "authentication-info"];
/// Most response headers kept from one answer.
const MAX_RESPONSE_HEADERS: usize = 8;
/// Longest response header value kept, in bytes.
const MAX_RESPONSE_HEADER_BYTES: usize = 4096;
/// Longest rejection message or challenge kept, in bytes.
const MAX_MESSAGE_BYTES: usize = 1024;
/// Most identities the host issues while authenticating one request; a scheme needs one.
const MAX_IDENTITIES_PER_REQUEST: usize = 8;

/// What the operator configured for one auth scheme.
#[derive(Debug, Clone)]
pub struct AuthSchemeSettings {
    /// The operator's name for the scheme; labels its logs and metrics.
    pub name: String,
    pub component: ComponentSource,
    /// Passed to `init` on every fresh instance.
    pub config_json: String,
    /// Deadline of one `authenticate` (including the credential checks it asks for).
    pub call_timeout: Duration,
    pub memory_limit_bytes: usize,
    /// Outgoing HTTP allow-list, as for drivers (`host[:port]`).
    pub allowed_http_hosts: Vec<String>,
    /// Issuers whose assertions `external-identity` accepts for this scheme.
    pub trusted_issuers: Vec<String>,
    pub max_response_bytes: usize,
}

/// What the credential checks of one scheme's instances need.
pub(crate) struct SchemeGrants {
    pub(crate) credentials: Arc<dyn Credentials>,
    pub(crate) trusted_issuers: Vec<String>,
}

/// The request an instance is authenticating: the client's address and the identities issued
/// for it so far.
#[derive(Default)]
pub(crate) struct AuthCallState {
    source: String,
    serial: u64,
    issued: Vec<u32>,
}

/// The host's side of an `identity` resource: a principal a credential check returned, and
/// the request (by serial) it was issued for.
pub struct IssuedIdentity {
    principal: Principal,
    serial: u64,
}

/// A loaded auth scheme plugin. Cheap to clone; clones share the instance pool.
#[derive(Clone)]
pub struct AuthSchemePlugin {
    pool: Arc<InstancePool<Scheme>>,
    needs_body: bool,
}

impl std::fmt::Debug for AuthSchemePlugin {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AuthSchemePlugin")
            .field("name", &self.pool.name())
            .field("needs_body", &self.needs_body)
            .field("statistics", &self.statistics())
            .finish_non_exhaustive()
    }
}

impl AuthSchemePlugin {
    /// Compiles the component (or takes it from the cache), links it against the auth world and
    /// runs `init` on a first instance.
    pub async fn load(
        runtime: &PluginRuntime,
        settings: AuthSchemeSettings,
        credentials: Arc<dyn Credentials>,
    ) -> Result<AuthSchemePlugin, LoadError> {
        let name: Arc<str> = settings.name.as_str().into();
        let http_allow_list = OutgoingHttpAllowList::parse(name.clone(), &settings.allowed_http_hosts)?;
        let context = Arc::new(ProviderContext {
            name,
            endpoints: Default::default(),
            http_allow_list,
            // Not reachable: the auth world imports no state interface.
            state_store: Arc::new(MemoryStateStore::new()),
            memory_limit_bytes: settings.memory_limit_bytes,
            auth: Some(SchemeGrants { credentials, trusted_issuers: settings.trusted_issuers }),
            granted_directory: None,
        });
        let (pool, info) = InstancePool::<Scheme>::load(
            runtime,
            PoolSettings {
                component: settings.component,
                context,
                config_json: settings.config_json,
                call_timeout: settings.call_timeout,
                max_response_bytes: settings.max_response_bytes,
            },
        )
        .await?;
        tracing::info!(scheme = %pool.name(), needs_body = info.needs_body, "loaded auth scheme");
        Ok(AuthSchemePlugin { pool, needs_body: info.needs_body })
    }

    pub fn statistics(&self) -> PoolStatistics {
        self.pool.statistics()
    }
}

#[async_trait::async_trait]
impl AuthScheme for AuthSchemePlugin {
    fn name(&self) -> &str {
        self.pool.name()
    }

    fn needs_body(&self) -> bool {
        self.needs_body
    }

    async fn authenticate(&self, request: &AuthRequest) -> Result<SchemeOutcome, SchemeFailure> {
        let wit_request = Request {
            method: request.method.clone(),
            path: request.path.clone(),
            headers: request.headers.clone(),
            source: request.source.clone(),
            body: if self.needs_body { request.body.clone() } else { None },
        };
        let scheme_name = self.pool.name();
        self.pool
            .call("authenticate", move |mut instance| async move {
                instance.store.data_mut().begin_authentication(wit_request.source.clone());
                let result = match instance.exports.call_authenticate(&mut instance.store, &wit_request).await {
                    Ok(Ok(outcome)) => host_outcome(instance.store.data_mut(), scheme_name, outcome).map(Ok),
                    Ok(Err(error)) => Ok(Err(error)),
                    Err(trap) => Err(trap),
                };
                instance.store.data_mut().end_authentication();
                (instance, result)
            })
            .await
            .map_err(|error| SchemeFailure { kind: error.kind(), message: error.to_string() })
    }
}

/// The host's side of a scheme's answer. The identity of `authenticated` must be one the host
/// issued for this request; anything else is the plugin misbehaving (an error that discards
/// the instance).
fn host_outcome(data: &mut StoreData, scheme: &str, outcome: Outcome) -> wasmtime::Result<SchemeOutcome> {
    Ok(match outcome {
        Outcome::Authenticated(authenticated) => {
            let identity = data.table.delete(authenticated.identity).map_err(|error| {
                wasmtime::format_err!("auth scheme {scheme} returned an identity the host does not know: {error}")
            })?;
            if identity.serial != data.auth_call.serial {
                wasmtime::bail!("auth scheme {scheme} returned an identity issued for an earlier request");
            }
            let response_headers = allowed_response_headers(scheme, authenticated.response_headers);
            SchemeOutcome::Authenticated { principal: identity.principal, response_headers }
        }
        Outcome::Rejected(rejection) => SchemeOutcome::Rejected {
            message: truncate_to_char_boundary(&rejection.message, MAX_MESSAGE_BYTES).to_owned(),
            retry_after: rejection.retry_after_secs.map(|secs| Duration::from_secs(secs.into())),
        },
        Outcome::Challenge(challenge) => {
            SchemeOutcome::Challenge(truncate_to_char_boundary(&challenge, MAX_MESSAGE_BYTES).to_owned())
        }
        Outcome::NotApplicable => SchemeOutcome::NotApplicable,
    })
}

/// Keeps the headers of [`ALLOWED_RESPONSE_HEADERS`] (names lowercased), at most
/// [`MAX_RESPONSE_HEADERS`], each at most [`MAX_RESPONSE_HEADER_BYTES`]; warns about the rest.
fn allowed_response_headers(scheme: &str, headers: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut kept = Vec::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        if !ALLOWED_RESPONSE_HEADERS.contains(&name.as_str()) {
            tracing::warn!(scheme, header = %name, "auth scheme set a response header it may not set; dropped");
        } else if value.len() > MAX_RESPONSE_HEADER_BYTES || kept.len() == MAX_RESPONSE_HEADERS {
            tracing::warn!(scheme, header = %name, "auth scheme response header too long or too many; dropped");
        } else {
            kept.push((name, value));
        }
    }
    kept
}

impl StoreData {
    /// Forgets the identities of the previous request (the guest's handles to them dangle) and
    /// starts a new one from `source`.
    fn begin_authentication(&mut self, source: String) {
        self.end_authentication();
        self.auth_call.serial += 1;
        self.auth_call.source = source;
    }

    /// Deletes the identities issued for this request that the scheme did not hand back.
    fn end_authentication(&mut self) {
        for representation in std::mem::take(&mut self.auth_call.issued) {
            let _ = self.table.delete(Resource::<IssuedIdentity>::new_own(representation));
        }
    }

    fn grants(&self) -> wasmtime::Result<&SchemeGrants> {
        self.provider.auth.as_ref().ok_or_else(|| wasmtime::format_err!("credential checks are only for auth schemes"))
    }

    fn credentials(&self) -> wasmtime::Result<Arc<dyn Credentials>> {
        Ok(self.grants()?.credentials.clone())
    }

    /// Turns a credential check's answer into what the guest gets: a fresh identity or the
    /// error.
    fn issue(
        &mut self,
        checked: Result<Principal, CredentialError>,
    ) -> wasmtime::Result<Result<Resource<IssuedIdentity>, WitCredentialError>> {
        let principal = match checked {
            Ok(principal) => principal,
            Err(error) => return Ok(Err(wit_credential_error(error))),
        };
        if self.auth_call.issued.len() >= MAX_IDENTITIES_PER_REQUEST {
            wasmtime::bail!("auth scheme asked for more than {MAX_IDENTITIES_PER_REQUEST} identities in one request");
        }
        let identity = self.table.push(IssuedIdentity { principal, serial: self.auth_call.serial })?;
        self.auth_call.issued.push(identity.rep());
        Ok(Ok(identity))
    }

    /// The identity behind a handle the guest passed in, if it belongs to this request.
    fn current_identity(&self, identity: &Resource<IssuedIdentity>) -> wasmtime::Result<&IssuedIdentity> {
        let issued = self.table.get(identity)?;
        if issued.serial != self.auth_call.serial {
            wasmtime::bail!("auth scheme used an identity issued for an earlier request");
        }
        Ok(issued)
    }
}

fn wit_credential_error(error: CredentialError) -> WitCredentialError {
    match error {
        CredentialError::Rejected(message) => WitCredentialError::Rejected(message),
        CredentialError::Throttled(retry_after) => WitCredentialError::Throttled(
            u32::try_from(crate::auth::chain::retry_after_secs(retry_after)).unwrap_or(u32::MAX),
        ),
        CredentialError::Unavailable(message) => WitCredentialError::Unavailable(message),
    }
}

/// `identity.describe`: `admin`, `user alice`, `key ci-runner (user alice)`; never a secret.
fn describe(principal: &Principal) -> String {
    match &principal.kind {
        PrincipalKind::Admin => "admin".to_owned(),
        PrincipalKind::User { .. } => format!("user {}", principal.name),
        PrincipalKind::ApiKey { key_id, .. } => {
            // A key's principal is named `<user>/<key>`.
            let user = principal.name.split_once('/').map_or(principal.name.as_str(), |(user, _)| user);
            format!("key {key_id} (user {user})")
        }
        PrincipalKind::System => "system".to_owned(),
    }
}

impl credentials::HostIdentity for StoreData {
    async fn describe(&mut self, identity: Resource<IssuedIdentity>) -> wasmtime::Result<String> {
        Ok(describe(&self.current_identity(&identity)?.principal))
    }

    async fn drop(&mut self, identity: Resource<IssuedIdentity>) -> wasmtime::Result<()> {
        // An identity of an earlier request is already gone.
        let representation = identity.rep();
        if self.table.delete(identity).is_ok() {
            self.auth_call.issued.retain(|issued| *issued != representation);
        }
        Ok(())
    }
}

impl credentials::Host for StoreData {
    async fn verify_password(
        &mut self,
        user: String,
        password: String,
    ) -> wasmtime::Result<Result<Resource<IssuedIdentity>, WitCredentialError>> {
        let checked = self.credentials()?.verify_password(&user, &password, &self.auth_call.source).await;
        self.issue(checked)
    }

    async fn verify_api_key(
        &mut self,
        id: String,
        secret: String,
    ) -> wasmtime::Result<Result<Resource<IssuedIdentity>, WitCredentialError>> {
        let checked = self.credentials()?.verify_api_key(&id, &secret, &self.auth_call.source).await;
        self.issue(checked)
    }

    async fn verify_session(
        &mut self,
        token: String,
    ) -> wasmtime::Result<Result<Resource<IssuedIdentity>, WitCredentialError>> {
        let checked = self.credentials()?.verify_session(&token, &self.auth_call.source).await;
        self.issue(checked)
    }

    async fn verify_token(
        &mut self,
        token: String,
    ) -> wasmtime::Result<Result<Resource<IssuedIdentity>, WitCredentialError>> {
        let checked = self.credentials()?.verify_token(&token, &self.auth_call.source).await;
        self.issue(checked)
    }

    async fn create_session(
        &mut self,
        who: Resource<IssuedIdentity>,
    ) -> wasmtime::Result<Result<Session, WitCredentialError>> {
        let principal = self.current_identity(&who)?.principal.clone();
        let created = self.credentials()?.create_session(&principal).await;
        Ok(created
            .map(|session| Session {
                token: session.token,
                idle_timeout_secs: u32::try_from(session.idle_timeout.as_secs()).unwrap_or(u32::MAX),
            })
            .map_err(wit_credential_error))
    }

    async fn external_identity(
        &mut self,
        issuer: String,
        subject: String,
        username: String,
        groups: Vec<String>,
    ) -> wasmtime::Result<Result<Resource<IssuedIdentity>, WitCredentialError>> {
        if !self.grants()?.trusted_issuers.contains(&issuer) {
            tracing::warn!(scheme = %self.provider.name, %issuer, "auth scheme asserted an identity of an untrusted issuer");
            return Ok(Err(WitCredentialError::Rejected(format!(
                "issuer {issuer} is not trusted by auth scheme {}",
                self.provider.name
            ))));
        }
        let checked = self.credentials()?.external_identity(&issuer, &subject, &username, &groups).await;
        self.issue(checked)
    }
}

/// `types` holds only data: the host side of its (empty) import.
impl types::Host for StoreData {}

impl From<SchemeError> for CallError {
    fn from(error: SchemeError) -> Self {
        CallError::Scheme(match error {
            SchemeError::InvalidConfig(message) => format!("invalid config: {message}"),
            SchemeError::Unavailable(message) => format!("unavailable: {message}"),
            SchemeError::Internal(message) => format!("internal error: {message}"),
        })
    }
}

impl EstimatedSize for SchemeError {
    fn estimated_size_bytes(&self) -> usize {
        match self {
            SchemeError::InvalidConfig(message)
            | SchemeError::Unavailable(message)
            | SchemeError::Internal(message) => message.len(),
        }
    }
}

impl EstimatedSize for SchemeOutcome {
    fn estimated_size_bytes(&self) -> usize {
        match self {
            SchemeOutcome::Authenticated { principal, response_headers } => response_headers
                .iter()
                .fold(principal.name.len(), |total, (name, value)| total.saturating_add(name.len() + value.len())),
            SchemeOutcome::Rejected { message, .. } => message.len(),
            SchemeOutcome::Challenge(challenge) => challenge.len(),
            SchemeOutcome::NotApplicable => 0,
        }
    }
}

impl GuestExports for Scheme {
    type Indices = SchemeIndices;
    type InitOutput = SchemeInfo;

    fn linker(runtime: &RuntimeShared) -> &Linker<StoreData> {
        &runtime.auth_linker
    }

    fn check_exports<'a>(label: &str, export_names: impl Iterator<Item = &'a str>) -> Result<(), LoadError> {
        check_auth_scheme_exports(label, export_names)
    }

    fn world() -> &'static str {
        "hyperplane:auth@0.1.0"
    }

    fn indices(instance_pre: &InstancePre<StoreData>) -> wasmtime::Result<Self::Indices> {
        SchemeIndices::new(instance_pre)
    }

    fn load(
        indices: &Self::Indices,
        store: &mut Store<StoreData>,
        instance: &ComponentInstance,
    ) -> wasmtime::Result<Self> {
        indices.load(store, instance)
    }

    async fn init(
        &self,
        store: &mut Store<StoreData>,
        config_json: &str,
    ) -> wasmtime::Result<Result<SchemeInfo, CallError>> {
        Ok(self.call_init(store, config_json).await?.map_err(CallError::from))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::auth::NewSession;
    use crate::plugins::bindings::auth::exports::hyperplane::auth::scheme::Authenticated as WitAuthenticated;
    use credentials::{Host as _, HostIdentity as _};

    /// Accepts the token `good` as the admin and any external identity; remembers what it was
    /// asked, with the source.
    #[derive(Default)]
    struct Recorded {
        calls: Mutex<Vec<String>>,
    }

    impl Recorded {
        fn record(&self, call: String) {
            self.calls.lock().expect("not poisoned").push(call);
        }
    }

    #[async_trait::async_trait]
    impl Credentials for Recorded {
        async fn verify_password(&self, user: &str, _: &str, source: &str) -> Result<Principal, CredentialError> {
            self.record(format!("password {user} from {source}"));
            Err(CredentialError::Throttled(Duration::from_millis(1500)))
        }

        async fn verify_api_key(&self, id: &str, _: &str, _: &str) -> Result<Principal, CredentialError> {
            self.record(format!("api key {id}"));
            Err(CredentialError::Rejected("unknown API key".into()))
        }

        async fn verify_session(&self, _: &str, _: &str) -> Result<Principal, CredentialError> {
            Err(CredentialError::Unavailable("store down".into()))
        }

        async fn verify_token(&self, token: &str, source: &str) -> Result<Principal, CredentialError> {
            self.record(format!("token from {source}"));
            if token == "good" {
                Ok(Principal::admin())
            } else {
                Err(CredentialError::Rejected("invalid token".into()))
            }
        }

        async fn create_session(&self, principal: &Principal) -> Result<NewSession, CredentialError> {
            self.record(format!("session for {}", principal.name));
            Ok(NewSession { token: "s1".into(), idle_timeout: Duration::from_secs(600) })
        }

        async fn external_identity(
            &self,
            issuer: &str,
            subject: &str,
            username: &str,
            _: &[String],
        ) -> Result<Principal, CredentialError> {
            self.record(format!("external {issuer} {subject}"));
            Ok(Principal { kind: PrincipalKind::Admin, name: username.into() })
        }
    }

    fn store_data(credentials: Arc<Recorded>) -> StoreData {
        let name: Arc<str> = "oidc".into();
        let mut data = StoreData::new(Arc::new(ProviderContext {
            name: name.clone(),
            endpoints: Default::default(),
            http_allow_list: OutgoingHttpAllowList::parse(name, &[]).expect("an empty allow-list parses"),
            state_store: Arc::new(MemoryStateStore::new()),
            memory_limit_bytes: 16 * 1024 * 1024,
            auth: Some(SchemeGrants { credentials, trusted_issuers: vec!["https://login.example.com".into()] }),
            granted_directory: None,
        }));
        data.begin_authentication("192.0.2.7:5000".into());
        data
    }

    fn authenticated(identity: Resource<IssuedIdentity>) -> Outcome {
        Outcome::Authenticated(WitAuthenticated {
            identity,
            response_headers: vec![("location".into(), "/elsewhere".into())],
        })
    }

    #[tokio::test]
    async fn an_identity_counts_only_for_the_request_it_was_issued_for() {
        let credentials = Arc::new(Recorded::default());
        let mut data = store_data(credentials.clone());
        let identity = data.verify_token("good".into()).await.expect("no trap").expect("verified");
        let again = Resource::<IssuedIdentity>::new_own(identity.rep());
        assert_eq!(data.describe(Resource::new_borrow(identity.rep())).await.expect("described"), "admin");
        let outcome = host_outcome(&mut data, "token", authenticated(identity)).expect("accepted");
        assert_eq!(outcome, SchemeOutcome::Authenticated { principal: Principal::admin(), response_headers: vec![] });
        assert_eq!(*credentials.calls.lock().expect("not poisoned"), ["token from 192.0.2.7:5000"]);

        // Kept by the guest and handed back for the next request: refused.
        let kept = data.verify_token("good".into()).await.expect("no trap").expect("verified");
        data.end_authentication();
        data.begin_authentication("198.51.100.1:1".into());
        let error = host_outcome(&mut data, "token", authenticated(kept)).expect_err("a stale identity");
        assert!(error.to_string().contains("returned an identity the host does not know"), "{error}");
        // Nor is a handed-back identity good twice.
        let error = host_outcome(&mut data, "token", authenticated(again)).expect_err("already used");
        assert!(error.to_string().contains("does not know"), "{error}");
    }

    #[tokio::test]
    async fn failed_checks_issue_nothing_and_keep_their_reason() {
        let credentials = Arc::new(Recorded::default());
        let mut data = store_data(credentials.clone());
        let rejected = data.verify_token("forged".into()).await.expect("no trap");
        assert!(matches!(rejected, Err(WitCredentialError::Rejected(ref message)) if message == "invalid token"));
        let throttled = data.verify_password("alice".into(), "pw".into()).await.expect("no trap");
        assert!(matches!(throttled, Err(WitCredentialError::Throttled(2))), "rounded up to whole seconds");
        let unavailable = data.verify_session("s".into()).await.expect("no trap");
        assert!(matches!(unavailable, Err(WitCredentialError::Unavailable(_))));
        assert!(data.auth_call.issued.is_empty());
        assert_eq!(
            *credentials.calls.lock().expect("not poisoned"),
            ["token from 192.0.2.7:5000", "password alice from 192.0.2.7:5000"]
        );
    }

    #[tokio::test]
    async fn external_identities_need_a_trusted_issuer() {
        let credentials = Arc::new(Recorded::default());
        let mut data = store_data(credentials.clone());
        let refused = data
            .external_identity("https://evil.example".into(), "sub".into(), "alice".into(), vec![])
            .await
            .expect("no trap");
        match refused {
            Err(WitCredentialError::Rejected(message)) => {
                assert_eq!(message, "issuer https://evil.example is not trusted by auth scheme oidc")
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        assert!(credentials.calls.lock().expect("not poisoned").is_empty(), "the host was not asked");
        let identity = data
            .external_identity("https://login.example.com".into(), "sub".into(), "alice".into(), vec![])
            .await
            .expect("no trap")
            .expect("trusted");
        let session = data.create_session(Resource::new_borrow(identity.rep())).await.expect("no trap");
        assert_eq!(session.expect("started").idle_timeout_secs, 600);
        assert_eq!(
            *credentials.calls.lock().expect("not poisoned"),
            ["external https://login.example.com sub", "session for alice"]
        );
    }

    #[tokio::test]
    async fn one_request_gets_a_bounded_number_of_identities() {
        let mut data = store_data(Arc::new(Recorded::default()));
        for _ in 0..MAX_IDENTITIES_PER_REQUEST {
            data.verify_token("good".into()).await.expect("no trap").expect("verified");
        }
        let error = data.verify_token("good".into()).await.expect_err("a trap");
        assert!(error.to_string().contains("more than 8 identities"), "{error}");
        data.begin_authentication("192.0.2.7:5000".into());
        assert!(data.verify_token("good".into()).await.expect("no trap").is_ok(), "a new request starts afresh");
    }

    #[test]
    fn only_safe_response_headers_are_kept() {
        let headers = vec![
            ("Set-Cookie".to_owned(), "session=abc; HttpOnly".to_owned()),
            ("location".to_owned(), "https://elsewhere.example".to_owned()),
            ("WWW-Authenticate".to_owned(), "Bearer".to_owned()),
            ("access-control-allow-origin".to_owned(), "*".to_owned()),
            ("authentication-info".to_owned(), "x".repeat(MAX_RESPONSE_HEADER_BYTES + 1)),
        ];
        assert_eq!(
            allowed_response_headers("token", headers),
            vec![
                ("set-cookie".to_owned(), "session=abc; HttpOnly".to_owned()),
                ("www-authenticate".to_owned(), "Bearer".to_owned()),
            ]
        );
    }

    #[test]
    fn identities_describe_the_principal_without_secrets() {
        let user_id = uuid::Uuid::nil();
        let check = |kind: PrincipalKind, name: &str, expected: &str| {
            assert_eq!(describe(&Principal { kind, name: name.into() }), expected);
        };
        check(PrincipalKind::Admin, "admin", "admin");
        check(PrincipalKind::User { user_id, session_id: None }, "alice", "user alice");
        check(PrincipalKind::ApiKey { user_id, key_id: "ci".into() }, "alice/ci", "key ci (user alice)");
    }
}
