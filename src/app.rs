//! The worker as a whole, built one way: by `dialex-worker run`, and by whatever runs a worker
//! in-process (the tests, the demo, the bench).
//!
//! [`App::build`] binds the health endpoint and builds the CCC client from settings and
//! credentials; [`App::run`] runs the worker until shutdown, keeping the endpoint up through
//! the drain (it answers not ready) and closing it once the worker has stopped. [`serve`] is
//! the process around it: settings and credentials from the environment, until SIGTERM.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::ccc::{ClientBuildError, HttpCccClient};
use crate::config::{ConfigError, Settings};
use crate::credentials::{CredentialSource, CredentialsError};
use crate::health::{self, Health};
use crate::metrics::Metrics;
use crate::startup::{self, RunError};
use crate::telemetry;

/// Why the worker could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("the CCC client could not be built: {0}")]
    Client(#[from] ClientBuildError),
    #[error("binding http.listen {listen}: {source}")]
    Listen {
        listen: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Run(#[from] RunError),
}

/// A worker ready to run: its health endpoint is listening, nothing else is connected yet.
pub struct App {
    settings: Settings,
    client: HttpCccClient,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    endpoint: SocketAddr,
    endpoint_stop: CancellationToken,
}

impl App {
    /// Binds the health endpoint on `settings.http.listen` (`/healthz` answers from now on)
    /// and builds the CCC client. `metrics` may be shared, as the tests' harness does.
    pub async fn build(
        settings: Settings,
        credentials: impl Into<CredentialSource>,
        metrics: Arc<Metrics>,
    ) -> Result<App, AppError> {
        let client = HttpCccClient::new(&settings.ccc, credentials)?;
        let health = Arc::new(Health::default());
        let endpoint_stop = CancellationToken::new();
        let listen = settings.http.listen;
        let endpoint = health::start(listen, &metrics, Arc::clone(&health), endpoint_stop.clone())
            .await
            .map_err(|source| AppError::Listen { listen, source })?;
        Ok(App {
            settings,
            client,
            metrics,
            health,
            endpoint,
            endpoint_stop,
        })
    }

    /// Where the health endpoint listens (the bound port when `http.listen` asked for 0).
    pub fn health_endpoint(&self) -> SocketAddr {
        self.endpoint
    }

    /// Runs the worker with the store `store.backend` names until `shutdown`, then drains
    /// and closes; the health endpoint closes last.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RunError> {
        let result = startup::run_with_configured_store(
            &self.settings,
            self.client,
            self.metrics,
            self.health,
            shutdown,
        )
        .await;
        self.endpoint_stop.cancel();
        result
    }
}

/// `dialex-worker run`: the settings (defaults, then `config`, then `DIALEX_*` variables),
/// the CCC credentials from the environment, and the worker until SIGTERM or SIGINT.
pub async fn serve(config: Option<&Path>) -> Result<(), AppError> {
    let settings = Settings::load(config)?;
    telemetry::init(&settings.log);
    let credentials = CredentialSource::start(crate::credentials::from_env()?).await;
    tracing::info!(provider = credentials.provider(), "credentials ready");
    let metrics = Arc::new(Metrics::for_limits(&settings.limits));
    let app = App::build(settings, credentials, metrics).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    Ok(app.run(shutdown).await?)
}

/// Cancels `token` on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
pub async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
    token.cancel();
}
