//! An OpenAI- and DeepSeek-compatible HTTP server over Seek's engines: chat and text
//! completions (streamed or not), Anthropic's Messages API ([`anthropic`]), models, health and
//! Prometheus metrics, with API keys per tenant, rate limits per tenant and the cost of every
//! request.
//!
//! Design decision: the server holds no tensors and runs no model code. Each served model is
//! an [`seek_engine::serve::EngineHandle`] (a synchronous loop on its own thread); a handler
//! checks its request once ([`wire`] -> `ValidRequest`), submits it with a sink that pushes
//! events into a channel, and turns the events into one JSON body or a server-sent event
//! stream. Dropping the handler or the stream (the client went away) aborts the sequences.
//! Every error becomes HTTP in one place, [`AppError`]'s `IntoResponse`.
//!
//! ```no_run
//! # async fn f(state: seek_server::AppState) -> Result<(), seek_server::ServeError> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! let (_stop, stopped) = tokio::sync::oneshot::channel::<()>(); // the CLI waits for SIGINT/SIGTERM
//! seek_server::serve(listener, state, async {
//!     let _ = stopped.await;
//! })
//! .await
//! # }
//! ```
#![deny(missing_docs)]

pub mod anthropic;
pub mod auth;
mod conn;
mod error;
mod guarded;
mod metrics;
pub mod price;
pub mod ratelimit;
pub mod rewards;
mod routes;
mod run;
mod state;
mod toolcalls;
pub mod upstream;
mod valid;
pub mod wire;

use std::future::Future;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

pub use auth::ApiKeys;
pub use conn::{BodyTimeout, ConnLimits, Tls, RESERVED_FILES};
pub use error::AppError;
pub use price::Prices;
pub use ratelimit::{Limits, RateLimits};
pub use state::{AppState, Backend, Phase, ServedModel, ServerConfig};
pub use upstream::Upstream;
pub use valid::{DEFAULT_COMPLETION_MAX_TOKENS, MAX_N};

/// The routes. DeepSeek's base URL works with and without `/v1`, so both are served.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(routes::chat))
        .route("/chat/completions", post(routes::chat))
        .route("/v1/completions", post(routes::completions))
        .route("/completions", post(routes::completions))
        .route("/v1/messages", post(routes::messages))
        .route("/messages", post(routes::messages))
        .route("/v1/messages/count_tokens", post(routes::count_tokens))
        .route("/messages/count_tokens", post(routes::count_tokens))
        .route("/v1/models", get(routes::models))
        .route("/models", get(routes::models))
        // A model name may hold slashes (`deepseek-ai/DeepSeek-R1`).
        .route("/v1/models/{*id}", get(routes::model))
        .route("/models/{*id}", get(routes::model))
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .layer(DefaultBodyLimit::max(routes::BODY_LIMIT))
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            close_when_draining,
        ))
        .with_state(state)
}

/// While draining, every answer closes its connection, so clients stop reusing connections
/// before the idle ones are closed (a request sent on a connection as it closes is lost to a
/// client that does not retry POSTs).
async fn close_when_draining(
    axum::extract::State(state): axum::extract::State<AppState>,
    mut res: axum::response::Response,
) -> axum::response::Response {
    if state.phase() == Phase::Draining {
        res.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    res
}

/// Why [`serve`] stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A non-loopback address without keys.
    #[error(transparent)]
    Exposed(#[from] auth::ExposedWithoutKeys),
    /// The socket failed.
    #[error("the server socket failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves `state` on `listener` (with the caps, timeouts and TLS of its
/// [`ServerConfig::connections`] and [`ServerConfig::tls`]) until `shutdown` completes, then drains: `/health` turns 503,
/// new requests get 503, in-flight ones finish within [`ServerConfig::shutdown_grace`] (the
/// engines cancel what is left), and the server returns once every connection has closed.
///
/// Refuses a non-loopback address without keys unless [`ServerConfig::insecure_no_auth`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = listener.local_addr()?;
    let cfg = state.config();
    auth::check_exposure(&addr, &cfg.api_keys, cfg.insecure_no_auth)?;
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let draining = state.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!(
            grace_s = draining.config().shutdown_grace.as_secs_f64(),
            "draining"
        );
        draining.drain().await;
        tracing::info!("every engine has stopped");
        let _ = stopped_tx.send(());
    });
    let limits = cfg.connections;
    let tls = cfg.tls.clone();
    let stats = state.connection_stats();
    conn::serve_connections(listener, app(state), limits, tls, stats, async move {
        let _ = stopped_rx.await;
    })
    .await;
    Ok(())
}
