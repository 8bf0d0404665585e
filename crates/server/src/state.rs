//! What every handler shares: the served models (one engine each), the keys, the rate
//! limiter, the metrics and the server's phase (loading, ready, draining).

use seek_structured::{Grammars, StructuredError};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use seek_engine::chat::{default_sampling, is_reasoning_model};
use seek_engine::serve::EngineHandle;
use seek_tokenizer::Tokenizer;
use seek_types::SamplingParams;

use crate::auth::ApiKeys;
use crate::conn::{ConnLimits, ConnStats, Tls};
use crate::error::AppError;
use crate::metrics::{EngineGauges, Format, Metrics};
use crate::price::Prices;
use crate::ratelimit::{RateLimiter, RateLimits};
use crate::upstream::Upstream;
use seek_audit::AuditLog;
use seek_guard::PolicySet;

/// Settings of the HTTP server.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    /// The keys clients must send; empty means open (allowed on loopback only, see
    /// [`crate::auth::check_exposure`]).
    pub api_keys: ApiKeys,
    /// Serve a non-loopback address without keys.
    pub insecure_no_auth: bool,
    /// The names of the models that will be served; until each is added with
    /// [`AppState::add_model`], requests for it get 503 and `/health` says loading.
    pub model_names: Vec<String>,
    /// How long draining lets in-flight requests finish before they are cancelled.
    pub shutdown_grace: Duration,
    /// Guard policies: a default and one per tenant (none: no rails).
    pub guard: Option<Arc<PolicySet>>,
    /// The audit log every request is written to (none: no audit trail).
    pub audit: Option<Arc<AuditLog>>,
    /// Caps and timeouts of client connections.
    pub connections: ConnLimits,
    /// Serve HTTPS with this certificate (none: plain HTTP).
    pub tls: Option<Tls>,
    /// Requests and tokens per minute, per tenant (default: no limits).
    pub rate_limits: RateLimits,
}

/// Where a served model runs.
pub enum Backend {
    /// On this machine: its engine, tokenizer and chat template.
    Local {
        /// The engine thread.
        engine: EngineHandle,
        /// The tokenizer and chat template.
        tokenizer: Arc<Tokenizer>,
    },
    /// Gateway mode: another OpenAI-compatible server.
    Upstream(Arc<Upstream>),
}

/// One model behind the server.
pub struct ServedModel {
    /// The name clients pass as `model`.
    pub name: String,
    /// Where it runs.
    pub backend: Backend,
    /// What its tokens cost.
    pub prices: Prices,
    /// Sampling when the request leaves a setting out (DeepSeek's for R1 models).
    pub(crate) defaults: SamplingParams,
    /// Whether it writes a `<think>` block.
    pub(crate) reasoning: bool,
    /// Unix seconds when it was added.
    pub(crate) created: u64,
    /// The vocabulary indexed for constrained decoding, built on first use.
    grammars: OnceLock<Result<Arc<Grammars>, StructuredError>>,
}

impl ServedModel {
    /// A served model named `name`, running on `engine`.
    pub fn new(
        name: impl Into<String>,
        engine: EngineHandle,
        tokenizer: Arc<Tokenizer>,
        prices: Prices,
    ) -> Self {
        Self {
            name: name.into(),
            defaults: default_sampling(&tokenizer),
            reasoning: is_reasoning_model(&tokenizer),
            backend: Backend::Local { engine, tokenizer },
            prices,
            created: unix_now(),
            grammars: OnceLock::new(),
        }
    }

    /// A model served by an upstream OpenAI-compatible server (gateway mode). Its replies
    /// may carry reasoning, so `reasoning_content` is passed on when the upstream sends it.
    pub fn upstream(name: impl Into<String>, upstream: Upstream, prices: Prices) -> Self {
        Self {
            name: name.into(),
            defaults: SamplingParams::default(),
            reasoning: true,
            backend: Backend::Upstream(Arc::new(upstream)),
            prices,
            created: unix_now(),
            grammars: OnceLock::new(),
        }
    }

    /// The local engine, unless the model is upstream.
    pub fn engine(&self) -> Option<&EngineHandle> {
        match &self.backend {
            Backend::Local { engine, .. } => Some(engine),
            Backend::Upstream(_) => None,
        }
    }

    /// The grammar engine over this model's vocabulary (a local model's), built on first use.
    pub(crate) fn grammars(&self) -> Result<Arc<Grammars>, AppError> {
        let Backend::Local { tokenizer, .. } = &self.backend else {
            return Err(AppError::bad(
                "response_format",
                "constrained decoding needs a local model; this one is served by an upstream server",
            ));
        };
        self.grammars
            .get_or_init(|| {
                let start = std::time::Instant::now();
                let g = Grammars::new(tokenizer).map(Arc::new);
                tracing::info!(model = %self.name, ms = start.elapsed().as_millis() as u64, ok = g.is_ok(), "indexed the vocabulary for constrained decoding");
                g
            })
            .clone()
            .map_err(|e| AppError::bad("response_format", e.to_string()))
    }

    /// The context window, when known (a local model's).
    pub fn max_context(&self) -> Option<usize> {
        self.engine().map(EngineHandle::max_context)
    }
}

/// The server's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Some model is still loading.
    Loading,
    /// Serving.
    Ready,
    /// Shutting down: new requests get 503.
    Draining,
}

struct Shared {
    cfg: ServerConfig,
    models: RwLock<Vec<Arc<ServedModel>>>,
    phase: AtomicU8,
    metrics: Metrics,
    connections: Arc<ConnStats>,
    limiter: RateLimiter,
}

/// The state every handler gets; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

impl AppState {
    /// A server that will serve `cfg.model_names`; it is loading until all are added.
    pub fn new(cfg: ServerConfig) -> Self {
        let phase = if cfg.model_names.is_empty() {
            Phase::Ready
        } else {
            Phase::Loading
        };
        let connections = Arc::<ConnStats>::default();
        Self {
            inner: Arc::new(Shared {
                limiter: RateLimiter::new(cfg.rate_limits.clone()),
                cfg,
                models: RwLock::new(Vec::new()),
                phase: AtomicU8::new(phase as u8),
                metrics: Metrics::new(connections.clone()),
                connections,
            }),
        }
    }

    /// A ready server for models already loaded.
    pub fn with_models(mut cfg: ServerConfig, models: Vec<ServedModel>) -> Self {
        cfg.model_names = models.iter().map(|m| m.name.clone()).collect();
        let state = Self::new(cfg);
        for m in models {
            state.add_model(m);
        }
        state
    }

    /// Adds a loaded model; once every named model is here, the server is ready.
    pub fn add_model(&self, model: ServedModel) {
        let mut models = self.inner.models.write().unwrap_or_else(|p| p.into_inner());
        models.retain(|m| m.name != model.name);
        models.push(Arc::new(model));
        let all = self
            .inner
            .cfg
            .model_names
            .iter()
            .all(|n| models.iter().any(|m| &m.name == n));
        if all {
            let _ = self.inner.phase.compare_exchange(
                Phase::Loading as u8,
                Phase::Ready as u8,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
    }

    /// The phase now.
    pub fn phase(&self) -> Phase {
        match self.inner.phase.load(Ordering::SeqCst) {
            0 => Phase::Loading,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.cfg
    }

    /// The loaded models.
    pub fn models(&self) -> Vec<Arc<ServedModel>> {
        self.inner
            .models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The model named `name`: 404 `model_not_found` when it is not served, 503 while it
    /// loads or the server drains.
    pub(crate) fn model(&self, name: &str) -> Result<Arc<ServedModel>, AppError> {
        if self.phase() == Phase::Draining {
            return Err(AppError::shutting_down());
        }
        if let Some(m) = self.models().into_iter().find(|m| m.name == name) {
            return Ok(m);
        }
        if self.inner.cfg.model_names.iter().any(|n| n == name) {
            return Err(AppError::Unavailable {
                message: format!("the model `{name}` is still loading; retry shortly"),
                code: "model_loading",
            });
        }
        Err(AppError::ModelNotFound(format!(
            "the model `{name}` does not exist; this server serves: {}",
            self.inner.cfg.model_names.join(", ")
        )))
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub(crate) fn rate_limiter(&self) -> &RateLimiter {
        &self.inner.limiter
    }

    /// The Prometheus exposition of the server's metrics (the classic text format).
    pub fn metrics_text(&self) -> String {
        self.metrics_in(Format::Prometheus)
    }

    /// The exposition of the server's metrics in `format`.
    pub(crate) fn metrics_in(&self, format: Format) -> String {
        let gauges: Vec<EngineGauges> = self
            .models()
            .iter()
            .map(|m| EngineGauges {
                name: m.name.clone(),
                stats: m.engine().map(|e| e.stats()).unwrap_or_default(),
                prices: m.prices,
                max_context: m.max_context().unwrap_or(0),
            })
            .collect();
        self.inner
            .metrics
            .render(gauges, self.phase() == Phase::Draining, format)
    }

    pub(crate) fn connection_stats(&self) -> Arc<ConnStats> {
        self.inner.connections.clone()
    }

    /// Starts draining: `/health` says 503, new requests get 503, in-flight ones may finish
    /// within the grace period, after which the engines cancel them. Returns when every engine
    /// has stopped.
    pub async fn drain(&self) {
        self.inner
            .phase
            .store(Phase::Draining as u8, Ordering::SeqCst);
        let grace = self.inner.cfg.shutdown_grace;
        let stops: Vec<_> = self
            .models()
            .into_iter()
            .map(|m| {
                tokio::task::spawn_blocking(move || {
                    if let Some(e) = m.engine() {
                        e.shutdown(grace)
                    }
                })
            })
            .collect();
        for s in stops {
            let _ = s.await;
        }
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
