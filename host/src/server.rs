//! The composition root: from a validated [`Config`] to a listening server. Used by
//! `hyperplane serve`, and by tests and benchmarks that want a real server in-process.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::auth::{self, Authenticator, TokenSource};
use crate::config::Config;
use crate::plugins::{PluginRuntime, RuntimeSettings};
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
    let runtime = PluginRuntime::new(RuntimeSettings { cache_dir: Some(config.plugin_cache_dir()) })
        .context("cannot start the plugin runtime")?;
    let providers = service::load_providers(&config, &runtime, &store).await;
    let service = Service::new(store, providers, ServiceSettings::from_config(&config));
    service.start().await.context("cannot start the service")?;

    let state = AppState { service: service.clone(), authenticator: Authenticator::new(&admin_token), metrics };
    let listener =
        TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let app = api::router(state);
    let serving = tokio::spawn(async move {
        let result = axum::serve(listener, app).with_graceful_shutdown(async move { stopped.cancelled().await }).await;
        if let Err(error) = result {
            tracing::error!(error = %error, "server stopped with an error");
        }
    });
    tracing::info!(%address, "hyperplane is listening");
    Ok(RunningServer { address, admin_token, service, stop, _runtime: runtime, serving })
}
