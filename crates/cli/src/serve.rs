//! `seek serve`: flags -> `seek_server` configs, models loaded behind a listening server.
//!
//! ```text
//! seek serve models/SmolLM2-135M-Instruct-Q4_1.gguf --port 8000
//! curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \
//!   -d '{"model":"SmolLM2-135M-Instruct-Q4_1","messages":[{"role":"user","content":"Hi"}]}'
//! ```
//!
//! The socket is bound first, so `/health` answers 503 while the models load; each model gets
//! its own engine thread. SIGINT or SIGTERM drains (see `seek_server::serve`); a second one
//! exits at once.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use clap::Args;
use seek_engine::serve::{EngineConfig, EngineHandle};
use seek_server::{
    ApiKeys, AppState, ConnLimits, Limits, Prices, RateLimits, ServedModel, ServerConfig,
};

use crate::source::open;
use crate::ModelArg;

/// `seek serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Models to serve, each a local .gguf file or Hugging Face folder (one engine each). The
    /// server makes no outbound connections, so repo ids are not fetched: download them first.
    #[arg(value_name = "MODEL", required_unless_present = "upstream")]
    models: Vec<String>,
    /// Read GGUF models into memory instead of mapping them (llama.cpp's --no-mmap).
    #[arg(long)]
    no_mmap: bool,
    /// Lock the weights in memory (llama.cpp's --mlock).
    #[arg(long)]
    mlock: bool,
    /// Gateway mode: serve the model of another OpenAI-compatible server (a vLLM or SGLang
    /// cluster, a hosted API; e.g. http://10.0.0.5:8000/v1) instead of local models, behind
    /// this server's keys, guard, audit and cost accounting. The only outbound connection
    /// `seek serve` ever makes.
    #[arg(long, value_name = "URL", conflicts_with = "models")]
    upstream: Option<String>,
    /// The model name the upstream serves (default: the served name).
    #[arg(long, value_name = "NAME", requires = "upstream")]
    upstream_model: Option<String>,
    /// The environment variable that holds the upstream's API key, if it needs one.
    #[arg(long, value_name = "VAR", default_value = "SEEK_UPSTREAM_API_KEY")]
    upstream_api_key_env: String,
    /// Address to bind. Anything but loopback requires API keys (or --insecure-no-auth).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to bind (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Serve the first MODEL with a LoRA adapter as another model: `NAME=DIR` (repeatable;
    /// vLLM's --lora-modules). A GGUF base's weights are shared through the page cache.
    #[arg(long = "lora", value_name = "NAME=DIR", conflicts_with = "upstream")]
    loras: Vec<String>,
    /// The name clients pass as `model`, once per MODEL in order
    /// (default: the file stem, the folder name, or the repo id).
    #[arg(long = "served-model-name", value_name = "NAME")]
    served_model_names: Vec<String>,
    /// Most sequences decoded together, per model.
    #[arg(long, default_value_t = 8)]
    max_running: usize,
    /// Most requests waiting for a place in the batch, per model; more get 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Most prompt tokens prefilled per engine step, so long prompts do not stall streams.
    #[arg(long, default_value_t = 256)]
    prefill_chunk: usize,
    /// KV memory in tokens, per model with paged KV (GGUF llama/qwen2 on the CPU): shared by
    /// running sequences in blocks; blocks no sequence holds serve as the prefix cache.
    #[arg(long, default_value_t = EngineConfig::default().kv_cache_tokens)]
    kv_cache_tokens: usize,
    /// Most tokens the prefix cache keeps, per model without paged KV (0 disables it).
    #[arg(long, default_value_t = EngineConfig::default().prefix_cache_tokens)]
    prefix_cache_tokens: usize,
    /// An API key clients must send as `Authorization: Bearer KEY` (repeatable; tenant "default").
    #[arg(
        long = "api-key",
        value_name = "KEY",
        env = "SEEK_API_KEY",
        hide_env_values = true
    )]
    api_keys: Vec<String>,
    /// A file of API keys: one `tenant:key` (or bare `key`) per line; `#` starts a comment.
    /// A tenant's own rate limits may follow its key: `team-a:sk-... rpm=60 tpm=40000`.
    #[arg(long, value_name = "FILE")]
    api_keys_file: Option<PathBuf>,
    /// Requests per minute each tenant may send (all its keys together; without keys, all
    /// clients together) unless the keys file gives it `rpm=`; more get 429 with Retry-After.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    rpm_limit: Option<u32>,
    /// Prompt plus completion tokens per minute each tenant may use unless the keys file gives
    /// it `tpm=`. A request's tokens are counted when it ends; while a tenant's balance is
    /// spent, its requests get 429 with Retry-After.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    tpm_limit: Option<u64>,
    /// Serve a non-loopback address without API keys (only on a network you trust completely).
    #[arg(long)]
    insecure_no_auth: bool,
    /// Seconds in-flight requests may run after SIGINT/SIGTERM before they are cancelled.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    shutdown_grace: f64,
    /// US dollars per million prompt tokens served from the prefix cache
    /// (default: DeepSeek-R1's launch price, for comparison).
    #[arg(long, value_name = "USD", default_value_t = Prices::DEEPSEEK_R1_LAUNCH.input_cache_hit)]
    price_input_hit: f64,
    /// US dollars per million prompt tokens computed (default: DeepSeek-R1's launch price).
    #[arg(long, value_name = "USD", default_value_t = Prices::DEEPSEEK_R1_LAUNCH.input_cache_miss)]
    price_input_miss: f64,
    /// US dollars per million generated tokens (default: DeepSeek-R1's launch price).
    #[arg(long, value_name = "USD", default_value_t = Prices::DEEPSEEK_R1_LAUNCH.output)]
    price_output: f64,
    /// The guard policy (TOML; see examples/policies/) applied to every request whose tenant
    /// has none of its own.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// A tenant's own policy, as TENANT=FILE (repeatable); needs --policy for the others.
    #[arg(
        long = "tenant-policy",
        value_name = "TENANT=FILE",
        requires = "policy"
    )]
    tenant_policies: Vec<String>,
    /// Write every request to this SQLite audit log (WAL; created if missing); read it with
    /// `seek audit --db PATH`.
    #[arg(long, value_name = "PATH", env = "SEEK_AUDIT_DB")]
    audit_db: Option<PathBuf>,
    /// Most client connections open at once (default: sized from the open-file limit, which
    /// is raised to its hard limit at start). At the cap, the oldest connection with no
    /// request in flight is closed to make room; if all are busy, new ones get a fast 503.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Most connections open at once from one client address (default: a quarter of
    /// --max-connections; 0 turns the per-client cap off, e.g. behind a proxy).
    #[arg(long, value_name = "N")]
    max_connections_per_client: Option<usize>,
    /// Seconds a request's header may take from its first byte (slow clients are cut off).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    header_timeout: f64,
    /// Seconds a request's body may take after its header (408), and a response may stay
    /// unread by the client before the connection is closed.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    body_timeout: f64,
    /// Seconds a connection may stay open without a request (keep-alive).
    #[arg(long, value_name = "SECS", default_value_t = 15.0)]
    idle_timeout: f64,
    /// Serve HTTPS: the certificate chain (PEM), with --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Per-model prices, a JSON object:
    /// {"NAME": {"input_cache_hit": 0.14, "input_cache_miss": 0.55, "output": 2.19}, ...};
    /// models it leaves out use the --price-* flags.
    #[arg(long, value_name = "FILE")]
    prices: Option<PathBuf>,
}

impl ServeArgs {
    /// Caps and timeouts from the flags, the caps sized from the open-file limit (raised to
    /// its hard limit first).
    fn connection_limits(&self) -> anyhow::Result<ConnLimits> {
        let files = raise_open_file_limit();
        let mut l = ConnLimits::for_open_files(files.now);
        if let Some(n) = self.max_connections {
            l.max_connections = n;
            l.max_connections_per_client = (n / 4).max(1);
        }
        if let Some(n) = self.max_connections_per_client {
            l.max_connections_per_client = n;
        }
        for (name, v) in [
            ("--header-timeout", self.header_timeout),
            ("--body-timeout", self.body_timeout),
            ("--idle-timeout", self.idle_timeout),
        ] {
            ensure!(
                v.is_finite() && v > 0.0 && v < 1e6,
                "{name} must be a number of seconds above 0"
            );
        }
        l.header_timeout = Duration::from_secs_f64(self.header_timeout);
        l.body_timeout = Duration::from_secs_f64(self.body_timeout);
        l.idle_timeout = Duration::from_secs_f64(self.idle_timeout);
        l.check().map_err(anyhow::Error::msg)?;
        let needed = l.max_connections as u64 + seek_server::RESERVED_FILES;
        eprintln!(
            "seek: open files {}{}; at most {} connections ({} per client address{})",
            files.now,
            if files.now > files.before {
                format!(" (raised from {})", files.before)
            } else {
                String::new()
            },
            l.max_connections,
            l.max_connections_per_client,
            if l.max_connections_per_client == 0 {
                ": off"
            } else {
                ""
            },
        );
        if files.now < needed {
            tracing::warn!(
                open_files = files.now,
                max_connections = l.max_connections,
                "the open-file limit is below what --max-connections needs ({needed}); raise the \
                 hard limit (`ulimit -Hn`, systemd LimitNOFILE=) or lower --max-connections"
            );
        } else if files.now < 4096 {
            tracing::warn!(
                open_files = files.now,
                "the open-file limit is low for a server; raise it (`ulimit -n`, systemd LimitNOFILE=)"
            );
        }
        Ok(l)
    }

    /// The keys, and the rate limits of the flags and the keys file.
    fn keys(&self) -> anyhow::Result<(ApiKeys, RateLimits)> {
        let mut limits = RateLimits {
            default: Limits {
                requests_per_minute: self.rpm_limit,
                tokens_per_minute: self.tpm_limit,
            },
            ..RateLimits::default()
        };
        let mut keys = ApiKeys::none();
        for k in &self.api_keys {
            keys.add(seek_server::auth::DEFAULT_TENANT, k)
                .context("--api-key")?;
        }
        if let Some(f) = &self.api_keys_file {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the keys file {}", f.display()))?;
            limits.tenants = keys
                .add_file(&text)
                .with_context(|| format!("{}", f.display()))?;
            ensure!(
                !keys.is_empty(),
                "{}: the keys file has no keys; write one `tenant:key` per line",
                f.display()
            );
        }
        Ok((keys, limits))
    }

    fn names(&self) -> anyhow::Result<Vec<String>> {
        if self.upstream.is_some() {
            return match (self.served_model_names.as_slice(), &self.upstream_model) {
                ([], Some(m)) => Ok(vec![m.clone()]),
                ([name], _) => Ok(vec![name.clone()]),
                ([], None) => bail!(
                    "gateway mode needs a name for the upstream model: --served-model-name NAME (or --upstream-model NAME)"
                ),
                _ => bail!("gateway mode serves one upstream model: give --served-model-name once"),
            };
        }
        let names: Vec<String> = if self.served_model_names.is_empty() {
            self.models.iter().map(|m| default_name(m)).collect()
        } else {
            ensure!(
                self.served_model_names.len() == self.models.len(),
                "--served-model-name is given {} times for {} models; give it once per MODEL, in order",
                self.served_model_names.len(),
                self.models.len()
            );
            self.served_model_names.clone()
        };
        for (i, n) in names.iter().enumerate() {
            ensure!(!n.is_empty(), "a served model name is empty");
            if names[..i].contains(n) {
                bail!("two models would be served as {n:?}; name them with --served-model-name");
            }
        }
        Ok(names)
    }

    fn price_table(&self, names: &[String]) -> anyhow::Result<Vec<Prices>> {
        let flags = Prices {
            input_cache_hit: self.price_input_hit,
            input_cache_miss: self.price_input_miss,
            output: self.price_output,
        };
        flags.check().context("--price-* flags")?;
        let mut table: HashMap<String, Prices> = match &self.prices {
            None => HashMap::new(),
            Some(f) => {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read the prices file {}", f.display()))?;
                serde_json::from_str(&text).with_context(|| {
                    format!(
                        "{}: expected {{\"MODEL\": {{\"input_cache_hit\": .., \"input_cache_miss\": .., \"output\": ..}}}} in US dollars per million tokens",
                        f.display()
                    )
                })?
            }
        };
        for (name, p) in &table {
            ensure!(
                names.contains(name),
                "the prices file names {name:?}, which is not served (served: {})",
                names.join(", ")
            );
            p.check().with_context(|| format!("prices of {name}"))?;
        }
        Ok(names
            .iter()
            .map(|n| table.remove(n).unwrap_or(flags))
            .collect())
    }

    fn address(&self) -> anyhow::Result<SocketAddr> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .with_context(|| {
                format!(
                    "--host {}: not an address or a name that resolves",
                    self.host
                )
            })?
            .next()
            .with_context(|| format!("--host {} resolves to no address", self.host))
    }
}

/// Refuses a MODEL that is not a local file or folder (serving never downloads).
fn check_local(models: &[String]) -> anyhow::Result<()> {
    for m in models {
        ensure!(
            Path::new(m).exists(),
            "{m}: no such file or folder. `seek serve` makes no outbound connections, so it does not \
             fetch repo ids; download the model first (e.g. `huggingface-cli download {m} --local-dir DIR`) \
             and pass the local path"
        );
    }
    Ok(())
}

/// The default served name: a file's stem, a folder's name, or the argument as given.
pub(crate) fn default_name(model: &str) -> String {
    let p = Path::new(model);
    let name = if p.is_file() {
        p.file_stem()
    } else if p.is_dir() {
        p.file_name()
    } else {
        None
    };
    name.map_or_else(|| model.to_string(), |n| n.to_string_lossy().into_owned())
}

/// `seek serve`.
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (keys, rate_limits) = args.keys()?;
    let addr = args.address()?;
    // Refuse before spending minutes on loading.
    seek_server::auth::check_exposure(&addr, &keys, args.insecure_no_auth)?;
    if keys.is_empty() && !seek_server::auth::is_loopback(&addr) {
        tracing::warn!(%addr, "serving a non-loopback address without API keys (--insecure-no-auth)");
    }
    check_local(&args.models)?;
    let names = args.names()?;
    let prices = args.price_table(&names)?;
    ensure!(
        args.shutdown_grace.is_finite() && args.shutdown_grace >= 0.0,
        "--shutdown-grace must be 0 or more seconds"
    );
    let engine = EngineConfig {
        max_running: args.max_running,
        max_queue: args.max_queue,
        prefill_chunk: args.prefill_chunk,
        kv_cache_tokens: args.kv_cache_tokens,
        prefix_cache_tokens: args.prefix_cache_tokens,
        ..EngineConfig::default()
    };
    ensure!(
        engine.max_running >= 1 && engine.prefill_chunk >= 1,
        "--max-running and --prefill-chunk must be at least 1"
    );
    let guard = match &args.policy {
        Some(default) => {
            let mut per_tenant = Vec::new();
            for t in &args.tenant_policies {
                let (tenant, file) = t
                    .split_once('=')
                    .with_context(|| format!("--tenant-policy {t:?}: write it as TENANT=FILE"))?;
                per_tenant.push((tenant.to_string(), PathBuf::from(file)));
            }
            let set = seek_guard::PolicySet::load(default, &per_tenant)?;
            eprintln!(
                "seek: guard policy {:?} for every tenant{}",
                set.default_policy().name(),
                if per_tenant.is_empty() {
                    String::new()
                } else {
                    format!(" but {}", set.tenants().join(", "))
                }
            );
            Some(Arc::new(set))
        }
        None => None,
    };
    let audit = match &args.audit_db {
        Some(path) => {
            let log = seek_audit::AuditLog::open(path)
                .with_context(|| format!("cannot open the audit log {}", path.display()))?;
            eprintln!("seek: auditing every request to {}", path.display());
            Some(Arc::new(log))
        }
        None => None,
    };
    let connections = args.connection_limits()?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(seek_server::Tls::from_pem_files(cert, key).map_err(anyhow::Error::msg)?)
        }
        _ => None,
    };
    let cfg = ServerConfig {
        connections,
        tls,
        api_keys: keys,
        insecure_no_auth: args.insecure_no_auth,
        model_names: names.clone(),
        shutdown_grace: Duration::from_secs_f64(args.shutdown_grace),
        guard,
        audit,
        rate_limits,
    };
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let models: Vec<(String, Source, Prices)> = match &args.upstream {
        Some(url) => {
            let name = names[0].clone();
            let key = std::env::var(&args.upstream_api_key_env).ok();
            let model = args.upstream_model.clone().unwrap_or_else(|| name.clone());
            vec![(
                name,
                Source::Upstream(seek_server::Upstream::new(url, model, key)),
                prices[0],
            )]
        }
        None => {
            let mut v: Vec<(String, Source, Prices)> = names
                .iter()
                .cloned()
                .zip(&args.models)
                .zip(prices.iter().copied())
                .map(|((name, model), p)| {
                    let arg = ModelArg {
                        model: model.clone(),
                        revision: "main".into(),
                        lora: None,
                        no_mmap: args.no_mmap,
                        mlock: args.mlock,
                    };
                    (name, Source::Local(arg), p)
                })
                .collect();
            for spec in &args.loras {
                let Some((name, dir)) = spec.split_once('=') else {
                    bail!("--lora {spec:?}: write NAME=DIR (the served name, then the adapter folder)");
                };
                if name.is_empty()
                    || names
                        .iter()
                        .chain(v.iter().map(|m| &m.0))
                        .any(|n| n == name)
                {
                    bail!("--lora {spec:?}: the name {name:?} is empty or already served");
                }
                let arg = ModelArg {
                    model: args.models[0].clone(),
                    revision: "main".into(),
                    lora: Some(PathBuf::from(dir)),
                    no_mmap: args.no_mmap,
                    mlock: args.mlock,
                };
                v.push((name.to_string(), Source::Local(arg), prices[0]));
            }
            v
        }
    };
    let result = rt.block_on(run(addr, cfg, models, engine));
    // A signal during loading leaves a loading thread behind; do not wait for it.
    rt.shutdown_background();
    result
}

/// The open-file soft limit before and after raising it.
struct OpenFiles {
    before: u64,
    now: u64,
}

/// Raises the open-file soft limit to the hard limit (every connection holds a descriptor).
fn raise_open_file_limit() -> OpenFiles {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit write/read the struct we own.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                let before = lim.rlim_cur;
                // An unlimited hard limit is still capped by the kernel (fs.nr_open).
                let target = lim.rlim_max.min(1 << 20);
                if lim.rlim_cur < target {
                    let raised = libc::rlimit {
                        rlim_cur: target,
                        rlim_max: lim.rlim_max,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                        return OpenFiles {
                            before,
                            now: target,
                        };
                    }
                }
                return OpenFiles {
                    before,
                    now: before,
                };
            }
        }
    }
    OpenFiles {
        before: 1024,
        now: 1024,
    }
}

/// Where a served model comes from.
enum Source {
    /// A local file or folder, loaded here.
    Local(ModelArg),
    /// Gateway mode.
    Upstream(seek_server::Upstream),
}

async fn run(
    addr: SocketAddr,
    cfg: ServerConfig,
    models: Vec<(String, Source, Prices)>,
    engine: EngineConfig,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    let state = AppState::new(cfg);
    eprintln!(
        "seek: listening on {scheme}://{local} ({} model{} loading; /health says 503 until ready)",
        models.len(),
        if models.len() == 1 { "" } else { "s" }
    );
    let mut server = tokio::spawn(seek_server::serve(
        listener,
        state.clone(),
        shutdown_signal(),
    ));
    let loader = {
        let state = state.clone();
        tokio::spawn(async move {
            for (name, source, prices) in models {
                let served = match source {
                    Source::Upstream(up) => {
                        eprintln!(
                            "seek: {name} is served by {} (model {:?}, gateway mode)",
                            up.base_url, up.model
                        );
                        ServedModel::upstream(name, up, prices)
                    }
                    Source::Local(arg) => {
                        let cfg = engine.clone();
                        let n = name.clone();
                        tokio::task::spawn_blocking(move || load(n, &arg, prices, cfg))
                            .await
                            .context("the loading thread panicked")??
                    }
                };
                state.add_model(served);
            }
            anyhow::Ok(())
        })
    };
    tokio::select! {
        r = &mut server => return Ok(r.context("the server task panicked")??),
        r = loader => r.context("the loading task panicked")??,
    }
    let names: Vec<String> = state.models().iter().map(|m| m.name.clone()).collect();
    eprintln!("seek: ready; serving {}", names.join(", "));
    server.await.context("the server task panicked")??;
    eprintln!("seek: stopped");
    Ok(())
}

fn load(
    name: String,
    arg: &ModelArg,
    prices: Prices,
    cfg: EngineConfig,
) -> anyhow::Result<ServedModel> {
    let opened = open(arg).with_context(|| format!("loading {}", arg.model))?;
    let s = &opened.loaded.info;
    eprintln!(
        "seek: loaded {name} ({}, {} context tokens) in {:.1} s",
        s.architecture, s.context_length, opened.load_s
    );
    let tokenizer = Arc::new(opened.tokenizer);
    let engine = EngineHandle::start(opened.loaded.model, tokenizer.clone(), cfg)
        .with_context(|| format!("starting the engine for {name}"))?;
    Ok(ServedModel::new(name, engine, tokenizer, prices))
}

/// Completes at the first SIGINT or SIGTERM; a second one exits at once.
async fn shutdown_signal() {
    wait_for_signal().await;
    eprintln!("seek: draining: finishing in-flight requests (again to quit at once)");
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("seek: quitting without draining");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: ServeArgs,
    }

    fn args(a: &[&str]) -> ServeArgs {
        T::try_parse_from(std::iter::once("serve").chain(a.iter().copied()))
            .unwrap()
            .a
    }

    #[test]
    fn names_default_to_stems_folders_and_repo_ids() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("My-Model.Q4_K_M.gguf");
        std::fs::write(&file, b"").unwrap();
        assert_eq!(default_name(file.to_str().unwrap()), "My-Model.Q4_K_M");
        assert_eq!(
            default_name(&format!("{}/", dir.path().display())),
            dir.path().file_name().unwrap().to_str().unwrap()
        );
        assert_eq!(
            default_name("deepseek-ai/DeepSeek-R1"),
            "deepseek-ai/DeepSeek-R1"
        );
        // Two files with the same stem in different folders.
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for d in [&a, &b] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("m.gguf"), b"").unwrap();
        }
        let (a, b) = (a.join("m.gguf"), b.join("m.gguf"));
        let two = args(&[a.to_str().unwrap(), b.to_str().unwrap()]);
        let e = two.names().unwrap_err().to_string();
        assert!(
            e.contains("--served-model-name") && e.contains("\"m\""),
            "{e}"
        );
        let a = args(&[
            "a/x",
            "b/x",
            "--served-model-name",
            "one",
            "--served-model-name",
            "two",
        ]);
        assert_eq!(a.names().unwrap(), ["one", "two"]);
        let a = args(&["a/x", "b/x", "--served-model-name", "one"]);
        assert!(a.names().is_err());
    }

    #[test]
    fn prices_come_from_flags_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("prices.json");
        std::fs::write(
            &f,
            r#"{"big": {"input_cache_hit": 1, "input_cache_miss": 2, "output": 3}}"#,
        )
        .unwrap();
        let a = args(&["x", "--price-output", "5", "--prices", f.to_str().unwrap()]);
        let names = vec!["big".to_string(), "small".to_string()];
        let t = a.price_table(&names).unwrap();
        assert_eq!(
            t[0],
            Prices {
                input_cache_hit: 1.0,
                input_cache_miss: 2.0,
                output: 3.0
            }
        );
        assert_eq!(
            t[1],
            Prices {
                output: 5.0,
                ..Prices::DEEPSEEK_R1_LAUNCH
            }
        );
        // A name that is not served is a typo.
        assert!(a.price_table(&["other".to_string()]).is_err());
        let a = args(&["x", "--price-input-hit=-1"]);
        assert!(a.price_table(&names).is_err());
    }

    #[test]
    fn keys_from_flags_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("keys");
        std::fs::write(&f, "# team keys\nteam-a:sk-a\n").unwrap();
        let a = args(&[
            "x",
            "--api-key",
            "sk-1",
            "--api-keys-file",
            f.to_str().unwrap(),
        ]);
        let (k, limits) = a.keys().unwrap();
        assert_eq!(k.tenants().collect::<Vec<_>>(), ["default", "team-a"]);
        assert_eq!(limits, RateLimits::default());
        std::fs::write(&f, "# nothing\n").unwrap();
        let a = args(&["x", "--api-keys-file", f.to_str().unwrap()]);
        assert!(a.keys().is_err());
    }

    #[test]
    fn rate_limits_from_flags_and_the_keys_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("keys");
        std::fs::write(&f, "team-a:sk-a rpm=60 tpm=40000\nteam-b:sk-b tpm=100\n").unwrap();
        let a = args(&[
            "x",
            "--api-keys-file",
            f.to_str().unwrap(),
            "--rpm-limit",
            "5",
            "--tpm-limit",
            "1000",
        ]);
        let (_, limits) = a.keys().unwrap();
        let l = |rpm, tpm| Limits {
            requests_per_minute: Some(rpm),
            tokens_per_minute: Some(tpm),
        };
        assert_eq!(limits.default, l(5, 1000));
        assert_eq!(limits.for_tenant("team-a"), l(60, 40000));
        assert_eq!(limits.for_tenant("team-b"), l(5, 100));
        assert_eq!(limits.for_tenant("default"), l(5, 1000));
        // A bad field names the file and the line.
        std::fs::write(&f, "team-a:sk-a\nteam-b:sk-b rmp=5\n").unwrap();
        let a = args(&["x", "--api-keys-file", f.to_str().unwrap()]);
        let e = format!("{:#}", a.keys().unwrap_err());
        assert!(
            e.contains("line 2 of the keys file") && e.contains("unknown field \"rmp\""),
            "{e}"
        );
        // Zero is refused by the flag parser.
        let cmd = || std::iter::once("serve");
        assert!(T::try_parse_from(cmd().chain(["x", "--rpm-limit", "0"])).is_err());
        assert!(T::try_parse_from(cmd().chain(["x", "--tpm-limit", "0"])).is_err());
    }

    #[test]
    fn repo_ids_are_not_fetched() {
        let e = serve(args(&["deepseek-ai/DeepSeek-R1", "--port", "0"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no outbound connections"), "{e}");
    }

    #[test]
    fn a_public_address_without_keys_is_refused_before_loading() {
        let e = serve(args(&[
            "/nonexistent/model.gguf",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--insecure-no-auth") && e.contains("--api-key"),
            "{e}"
        );
    }
}
