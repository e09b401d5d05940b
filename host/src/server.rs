//! The composition root: from a validated [`Config`] to a listening server. Used by
//! `hyperplane serve`, and by tests and benchmarks that want a real server in-process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::auth::chain::{AuthChain, AuthScheme};
use crate::auth::{self, AdminToken, Credentials, TokenSource};
use crate::config::{self, AuthSchemeConfig, Config};
use crate::plugins::{AuthSchemePlugin, AuthSchemeSettings, ComponentSource, PluginRuntime, RuntimeSettings};
use crate::service::{self, Service, ServiceSettings};
use crate::store::Store;

/// A started server. Dropping it does not stop it; call [`RunningServer::shutdown`].
pub struct RunningServer {
    pub address: SocketAddr,
    pub admin_token: String,
    pub service: Service,
    stop: CancellationToken,
    /// Owns the wasmtime engine shared by every loaded driver.
    _runtime: PluginRuntime,
    serving: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// Stops accepting requests, ends streams and background work, and waits for the server.
    pub async fn shutdown(self) {
        self.service.shutdown().await;
        self.stop.cancel();
        let _ = self.serving.await;
    }

    /// Waits until the server stops (it stops on [`RunningServer::shutdown`] only).
    pub async fn wait(self) {
        let _ = self.serving.await;
    }
}

/// Opens the database, loads the providers, starts the service and serves the API.
pub async fn start(config: Config, admin_token_from_environment: Option<String>) -> anyhow::Result<RunningServer> {
    // Installed first, so that metrics recorded while starting (plugin loads) are kept.
    let metrics = api::metrics::prometheus();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let (admin_token, source) = auth::load_or_create_admin_token(admin_token_from_environment, &config.data_dir)
        .context("cannot read or write the admin token")?;
    if source == TokenSource::Generated {
        let path = config.data_dir.join("admin.token");
        println!("Generated an admin token (saved to {}, mode 0600):\n  {admin_token}", path.display());
    }

    let store = Store::open(&config.database_url()).await.context("cannot open the database")?;
    let runtime = PluginRuntime::new(RuntimeSettings {
        cache_dir: Some(config.plugin_cache_dir()),
        idle_instance_timeout: Some(Duration::from_secs_f64(config.plugins.idle_instance_secs)),
    })
    .context("cannot start the plugin runtime")?;
    let providers = service::load_providers(&config, &runtime, &store).await;
    let blobs = service::load_storage(&config, &runtime).await.context("loading the storage backend ([storage])")?;
    let service = Service::new(store, providers, blobs, ServiceSettings::from_config(&config));
    service.start().await.context("cannot start the service")?;

    let credentials = service.credentials(AdminToken::new(&admin_token));
    let auth = load_auth_chain(&config, &runtime, credentials).await?;
    let state = AppState { service: service.clone(), auth, metrics };
    let listener =
        TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let app = api::router(state);
    let serving = tokio::spawn(async move {
        let result = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move { stopped.cancelled().await })
            .await;
        if let Err(error) = result {
            tracing::error!(error = %error, "server stopped with an error");
        }
    });
    tracing::info!(%address, "hyperplane is listening");
    Ok(RunningServer { address, admin_token, service, stop, _runtime: runtime, serving })
}

/// The auth schemes built from `plugins/` and bundled into the binary, by the name configs use.
const BUNDLED_AUTH_SCHEMES: [(&str, &[u8]); 5] = [
    (config::BUNDLED_AUTH_TOKEN, include_bytes!(env!("BUNDLED_AUTH_TOKEN_WASM"))),
    (config::BUNDLED_AUTH_BASIC, include_bytes!(env!("BUNDLED_AUTH_BASIC_WASM"))),
    (config::BUNDLED_AUTH_SESSION, include_bytes!(env!("BUNDLED_AUTH_SESSION_WASM"))),
    (config::BUNDLED_AUTH_APIKEY, include_bytes!(env!("BUNDLED_AUTH_APIKEY_WASM"))),
    (config::BUNDLED_AUTH_OIDC, include_bytes!(env!("BUNDLED_AUTH_OIDC_WASM"))),
];

/// Loads the configured auth schemes in order. A scheme that does not load stops the start:
/// serving with fewer schemes than the operator chose would lock out (or let in) the wrong
/// callers.
pub async fn load_auth_chain(
    config: &Config,
    runtime: &PluginRuntime,
    credentials: Arc<dyn Credentials>,
) -> anyhow::Result<AuthChain> {
    let mut schemes: Vec<Arc<dyn AuthScheme>> = Vec::new();
    for (index, scheme) in config.auth.schemes.iter().enumerate() {
        let settings = auth_scheme_settings(config, scheme);
        let plugin = AuthSchemePlugin::load(runtime, settings, credentials.clone()).await.with_context(|| {
            format!("cannot load auth scheme {} (auth.schemes[{index}], plugin {})", scheme.name, scheme.plugin)
        })?;
        schemes.push(Arc::new(plugin));
    }
    let chain = AuthChain::new(schemes);
    tracing::info!(schemes = ?chain.scheme_names(), "auth schemes loaded");
    Ok(chain)
}

/// The plugin runtime's settings of one configured scheme.
pub fn auth_scheme_settings(config: &Config, scheme: &AuthSchemeConfig) -> AuthSchemeSettings {
    let component = match BUNDLED_AUTH_SCHEMES.iter().find(|(name, _)| *name == scheme.plugin) {
        Some((name, bytes)) => ComponentSource::Bytes { label: (*name).into(), bytes: Arc::from(*bytes) },
        None => ComponentSource::File(scheme.plugin.clone().into()),
    };
    let mib = |value: u64| usize::try_from(value).unwrap_or(usize::MAX).saturating_mul(1024 * 1024);
    AuthSchemeSettings {
        name: scheme.name.clone(),
        component,
        config_json: scheme.config.to_string(),
        call_timeout: Duration::from_secs_f64(
            scheme.call_timeout_secs.unwrap_or(config::DEFAULT_AUTH_CALL_TIMEOUT_SECS),
        ),
        memory_limit_bytes: mib(scheme.memory_limit_mib.unwrap_or(config.plugins.memory_limit_mib)),
        allowed_http_hosts: scheme.allowed_http_hosts.clone(),
        trusted_issuers: scheme.trusted_issuers.clone(),
        max_response_bytes: mib(config.plugins.max_response_mib),
    }
}
