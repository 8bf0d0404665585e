//! `seek bench MODEL`: prefill and decode speed, time to first token, peak memory and load
//! time, with decode set against the memory-bandwidth bound measured in the same run.
//!
//! ```text
//! cargo build --release -p seek-cli
//! target/release/seek --threads 2 bench models/Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf
//! target/release/seek --threads 2 bench MODEL --prefill 128,512 --decode-context 0,512 --json
//! ```
//!
//! Every figure is the median of `--repeats` timed runs after `--warmup` untimed ones, with
//! min, max and standard deviation beside it. The model is called directly (no sampler, no
//! detokenizer): prefill is one forward over T tokens from an empty KV cache, as `seek run`
//! does; decode at context C fills the cache with C tokens (untimed), then times
//! `--decode-tokens` single-token forwards, each followed by the greedy argmax of its logits.
//!
//! Decode on CPU is bound by memory bandwidth: every step reads every weight matrix and the
//! whole KV cache once. So the run also measures read bandwidth (the best of 10 streaming
//! sums, with software prefetch, over a buffer several times the last-level cache, on the
//! same number of threads) and reports decode as a percentage of
//! `bandwidth / bytes read per token`.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context};
use candle_core::Tensor;
use clap::Args;
use seek_models::{CausalLm, KvCache, LoadOptions, LoadedModel, ModelFormat, ModelInfo};
use seek_types::TokenId;
use serde::Serialize;

use crate::source::{load_options_for, tokenizer_for};
use crate::ModelArg;

/// `seek bench MODEL`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Prompt lengths to time prefill at (comma-separated tokens).
    #[arg(long, value_name = "TOKENS", value_delimiter = ',', default_values_t = [128, 512, 2048])]
    prefill: Vec<usize>,
    /// Tokens already in the KV cache when decode is timed (comma-separated).
    #[arg(long, value_name = "TOKENS", value_delimiter = ',', default_values_t = [0, 512, 2048])]
    decode_context: Vec<usize>,
    /// Tokens decoded per timed decode run.
    #[arg(long, value_name = "N", default_value_t = 32)]
    decode_tokens: usize,
    /// Timed runs per measurement; the median is reported.
    #[arg(long, value_name = "N", default_value_t = 3)]
    repeats: usize,
    /// Untimed runs before each measurement.
    #[arg(long, value_name = "N", default_value_t = 1)]
    warmup: usize,
    /// Size of the bandwidth buffer in MiB (default: 4x the last-level cache, at least 1024;
    /// 0 skips the bandwidth measurement and the bound).
    #[arg(long, value_name = "MIB")]
    bandwidth_mib: Option<usize>,
    /// Also time decode steps of N sequences at once (comma-separated N): the batched
    /// throughput a server gets, every weight read once per step for all of them.
    #[arg(long, value_name = "N", value_delimiter = ',')]
    batch: Vec<usize>,
    /// The machine's price per hour in USD: prints what a million output tokens cost at each
    /// measured decode speed.
    #[arg(long, value_name = "USD")]
    hourly_price: Option<f64>,
    /// Print one JSON object with every figure.
    #[arg(long)]
    json: bool,
}

/// The flags, checked: every count is at least 1.
struct BenchPlan {
    prefill: Vec<usize>,
    decode_context: Vec<usize>,
    decode_tokens: usize,
    repeats: usize,
    warmup: usize,
    bandwidth_bytes: Option<usize>,
    batch: Vec<usize>,
    hourly_price: Option<f64>,
}

impl BenchPlan {
    fn new(a: &BenchArgs) -> anyhow::Result<Self> {
        ensure!(
            a.prefill.iter().all(|&t| t > 0),
            "--prefill: every length must be at least 1 token (got {:?})",
            a.prefill
        );
        ensure!(
            !a.prefill.is_empty() || !a.decode_context.is_empty(),
            "--prefill and --decode-context are both empty: nothing to measure"
        );
        ensure!(
            a.decode_tokens > 0,
            "--decode-tokens must be at least 1 (got 0)"
        );
        ensure!(
            a.repeats > 0,
            "--repeats must be at least 1 (got 0): it is the number of timed runs"
        );
        ensure!(
            a.batch.iter().all(|&b| (1..=1024).contains(&b)),
            "--batch: every size must be between 1 and 1024 sequences (got {:?})",
            a.batch
        );
        if let Some(p) = a.hourly_price {
            ensure!(
                p.is_finite() && p > 0.0,
                "--hourly-price must be a positive amount of USD per hour (got {p})"
            );
        }
        let bandwidth_bytes = match a.bandwidth_mib {
            Some(0) => None,
            Some(mib) => Some(mib << 20),
            None => Some(default_bandwidth_bytes()),
        };
        Ok(Self {
            prefill: a.prefill.clone(),
            decode_context: a.decode_context.clone(),
            decode_tokens: a.decode_tokens,
            repeats: a.repeats,
            warmup: a.warmup,
            bandwidth_bytes,
            batch: a.batch.clone(),
            hourly_price: a.hourly_price,
        })
    }
}

/// Median, spread and raw samples of one measurement.
#[derive(Debug, Clone, Serialize)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
    mean: f64,
    /// Sample standard deviation (0 for one sample).
    stdev: f64,
    samples: Vec<f64>,
}

impl Stats {
    fn of(samples: Vec<f64>) -> Self {
        assert!(!samples.is_empty(), "statistics of no samples");
        let mut s = samples.clone();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        let mean = s.iter().sum::<f64>() / n as f64;
        let stdev = if n > 1 {
            (s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Self {
            median,
            min: s[0],
            max: s[n - 1],
            mean,
            stdev,
            samples,
        }
    }
}

#[derive(Debug, Serialize)]
struct PrefillResult {
    tokens: usize,
    /// Why the length was not measured.
    skipped: Option<String>,
    tokens_per_s: Option<Stats>,
    /// The forward over the prompt.
    seconds: Option<Stats>,
    /// The forward plus picking the first token from the last logits.
    time_to_first_token_s: Option<Stats>,
}

#[derive(Debug, Serialize)]
struct DecodeResult {
    /// Tokens in the KV cache before the first timed step.
    context: usize,
    /// Tokens decoded per timed run.
    tokens: usize,
    skipped: Option<String>,
    tokens_per_s: Option<Stats>,
    ms_per_token: Option<Stats>,
    /// Weight bytes plus the KV-cache bytes of the mean context a timed step attends to.
    bytes_read_per_token: u64,
    /// `bandwidth / bytes_read_per_token`, when bandwidth was measured.
    bound_tokens_per_s: Option<f64>,
    /// Median tokens/s as a percentage of the bound.
    percent_of_bound: Option<f64>,
    /// USD per million output tokens at the median speed and `--hourly-price`.
    cost_per_million_output_usd: Option<f64>,
}

/// Decode steps of several sequences at once.
#[derive(Debug, Serialize)]
struct BatchedResult {
    /// Sequences per step.
    sequences: usize,
    /// Tokens per second summed over the sequences.
    tokens_per_s: Stats,
    /// Milliseconds per step.
    ms_per_step: Stats,
    /// USD per million output tokens at the median throughput and `--hourly-price`.
    cost_per_million_output_usd: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Memory {
    /// VmHWM: the most resident memory the process held (memory-mapped weights included),
    /// read before the bandwidth buffer is allocated.
    peak_rss_bytes: Option<u64>,
    /// VmRSS right after loading.
    rss_after_load_bytes: Option<u64>,
    model_file_bytes: u64,
    /// The largest KV cache held during the run.
    kv_cache_peak_bytes: u64,
    /// `peak_rss_bytes / (model_file_bytes + kv_cache_peak_bytes)`.
    peak_over_model_and_kv: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Bandwidth {
    /// Best run, in 10^9 bytes per second.
    gb_per_s: f64,
    runs_gb_per_s: Vec<f64>,
    buffer_bytes: usize,
    threads: usize,
    /// The last-level cache the buffer was sized against, when the system reports it.
    last_level_cache_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Threads {
    /// Threads the tensor kernels use.
    effective: usize,
    /// `RAYON_NUM_THREADS` as the process saw it (`--threads` sets it).
    rayon_num_threads: Option<String>,
    /// Logical cores available to the process.
    available: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    seek_version: &'static str,
    model: ModelInfo,
    threads: Threads,
    load_s: f64,
    tokenizer_load_s: Option<f64>,
    /// `tokenizer` (a repeated English text, encoded) or `synthetic` (pseudo-random ids).
    token_source: &'static str,
    token_source_note: Option<String>,
    warmup: usize,
    repeats: usize,
    decode_tokens: usize,
    /// Bytes of weights a decode step reads: every tensor as stored, less the embedding
    /// table when the output projection is separate (a lookup reads one row).
    decode_weight_bytes_per_token: u64,
    decode_weight_bytes_note: &'static str,
    kv_bytes_per_token: u64,
    prefill: Vec<PrefillResult>,
    decode: Vec<DecodeResult>,
    batched: Vec<BatchedResult>,
    /// `--hourly-price`, USD.
    hourly_price_usd: Option<f64>,
    memory: Memory,
    bandwidth: Option<Bandwidth>,
}

/// Text to encode for realistic token ids; repeated as needed.
const TEXT: &str = "The history of mathematics deals with the origin of discoveries in mathematics and \
the mathematical methods and notation of the past. Before the modern age and the worldwide spread of \
knowledge, written examples of new mathematical developments have come to light only in a few locales. \
From 3000 BC the Mesopotamian states of Sumer, Akkad and Assyria, followed closely by Ancient Egypt and \
the Levantine state of Ebla, began using arithmetic, algebra and geometry for purposes of taxation, \
commerce, trade and also in the patterns in nature, the field of astronomy and to record time. ";

/// `seek bench MODEL`.
pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let plan = BenchPlan::new(&args)?;
    let opts = load_options_for(&args.model)?;
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = Threads {
        // What the model's kernel pool is built with (seek_models::load's rule).
        effective: opts.threads.unwrap_or(available),
        rayon_num_threads: std::env::var("RAYON_NUM_THREADS").ok(),
        available,
    };
    let path = args.model.resolve()?;
    let progress = Progress(!args.json && std::io::stderr().is_terminal());

    let start = Instant::now();
    let loaded = seek_models::load(&path, &opts)?;
    let load_s = start.elapsed().as_secs_f64();
    let rss_after_load = proc_status_bytes("VmRSS");
    let memory = seek_models::MemoryPlan::new(&loaded.info, loaded.info.context_length.min(4096));
    if memory.fits() == Some(false) {
        eprintln!("{}", memory.message(!opts.no_mmap));
    }
    let model = loaded.model.as_ref();
    let info = loaded.info.clone();
    let context = model.max_context();

    let start = Instant::now();
    let (ids_from_text, token_source_note) = match tokenizer_for(&loaded.format) {
        Ok(t) if t.vocab_size() <= model.vocab_size() => (Some(t), None),
        Ok(t) => (
            None,
            Some(format!(
                "the tokenizer has {} tokens but the model {}; using pseudo-random ids",
                t.vocab_size(),
                model.vocab_size()
            )),
        ),
        Err(e) => (
            None,
            Some(format!("no tokenizer ({e:#}); using pseudo-random ids")),
        ),
    };
    let tokenizer_load_s = ids_from_text
        .as_ref()
        .map(|_| start.elapsed().as_secs_f64());

    let prefill_fits = |t: usize| -> Option<String> {
        (t > context)
            .then(|| format!("{t} tokens do not fit in the model's context of {context} tokens"))
    };
    let n = plan.decode_tokens;
    let decode_fits = |c: usize| -> Option<String> {
        (c + n > context).then(|| {
            format!(
                "a context of {c} plus {n} decoded tokens does not fit in the model's context of {context} tokens"
            )
        })
    };
    let needed = plan
        .prefill
        .iter()
        .filter(|&&t| prefill_fits(t).is_none())
        .chain(
            plan.decode_context
                .iter()
                .filter(|&&c| decode_fits(c).is_none()),
        )
        .copied()
        .max()
        .unwrap_or(0)
        .max(1);
    let (ids, token_source) = match &ids_from_text {
        Some(tok) => (text_ids(tok, needed)?, "tokenizer"),
        None => (synthetic_ids(needed, model.vocab_size()), "synthetic"),
    };

    let mut kv_peak = 0u64;
    let mut prefill = Vec::new();
    for &t in &plan.prefill {
        if let Some(reason) = prefill_fits(t) {
            prefill.push(PrefillResult {
                tokens: t,
                skipped: Some(reason),
                tokens_per_s: None,
                seconds: None,
                time_to_first_token_s: None,
            });
            continue;
        }
        let (mut secs, mut ttft) = (Vec::new(), Vec::new());
        for run in 0..plan.warmup + plan.repeats {
            progress.say(format_args!("prefill {t}: run {}", run + 1));
            let (forward_s, first_s, kv) =
                time_prefill(model, &ids[..t]).with_context(|| format!("prefill of {t} tokens"))?;
            kv_peak = kv_peak.max(kv);
            if run >= plan.warmup {
                secs.push(forward_s);
                ttft.push(first_s);
            }
        }
        prefill.push(PrefillResult {
            tokens: t,
            skipped: None,
            tokens_per_s: Some(Stats::of(secs.iter().map(|s| t as f64 / s).collect())),
            seconds: Some(Stats::of(secs)),
            time_to_first_token_s: Some(Stats::of(ttft)),
        });
    }

    let (weight_bytes, weight_note) = decode_weight_bytes(&loaded, &opts);
    let mut decode = Vec::new();
    for &c in &plan.decode_context {
        // The step at cache length p attends to p + 1 positions; the timed steps cover
        // p = c..c+n, so on average c + (n + 1) / 2 positions of keys and values are read.
        let kv_read = info.kv_bytes_per_token as f64 * (c as f64 + (n as f64 + 1.0) / 2.0);
        let bytes_read_per_token = weight_bytes + kv_read.round() as u64;
        let mut result = DecodeResult {
            context: c,
            tokens: n,
            skipped: decode_fits(c),
            tokens_per_s: None,
            ms_per_token: None,
            bytes_read_per_token,
            bound_tokens_per_s: None,
            percent_of_bound: None,
            cost_per_million_output_usd: None,
        };
        if result.skipped.is_none() {
            let secs = time_decode(model, &ids, c, n, &plan, &mut kv_peak, &progress)
                .with_context(|| format!("decode at a context of {c} tokens"))?;
            result.ms_per_token =
                Some(Stats::of(secs.iter().map(|s| 1e3 * s / n as f64).collect()));
            let tps = Stats::of(secs.iter().map(|s| n as f64 / s).collect());
            result.cost_per_million_output_usd =
                plan.hourly_price.map(|p| cost_per_million(p, tps.median));
            result.tokens_per_s = Some(tps);
        }
        decode.push(result);
    }
    let mut batched = Vec::new();
    for &b in &plan.batch {
        let secs = time_batched(model, &ids, b, n, &plan, &progress)
            .with_context(|| format!("decode of {b} sequences at once"))?;
        let tps = Stats::of(secs.iter().map(|s| (b * n) as f64 / s).collect());
        batched.push(BatchedResult {
            sequences: b,
            cost_per_million_output_usd: plan.hourly_price.map(|p| cost_per_million(p, tps.median)),
            tokens_per_s: tps,
            ms_per_step: Stats::of(secs.iter().map(|s| 1e3 * s / n as f64).collect()),
        });
    }

    // Read the peak before the bandwidth buffer inflates it.
    let peak_rss = proc_status_bytes("VmHWM");
    let model_file_bytes = model_file_bytes(&loaded)?;
    let memory = Memory {
        peak_rss_bytes: peak_rss,
        rss_after_load_bytes: rss_after_load,
        model_file_bytes,
        kv_cache_peak_bytes: kv_peak,
        peak_over_model_and_kv: peak_rss
            .map(|p| p as f64 / (model_file_bytes + kv_peak).max(1) as f64),
    };

    let bandwidth = plan.bandwidth_bytes.map(|bytes| {
        progress.say(format_args!(
            "memory bandwidth: {} over {} threads",
            fmt_bytes(bytes as u64),
            threads.effective
        ));
        measure_bandwidth(bytes, threads.effective, 10)
    });
    if let Some(bw) = &bandwidth {
        for d in decode.iter_mut() {
            let bound = bw.gb_per_s * 1e9 / d.bytes_read_per_token.max(1) as f64;
            d.bound_tokens_per_s = Some(bound);
            d.percent_of_bound = d.tokens_per_s.as_ref().map(|s| 100.0 * s.median / bound);
        }
    }
    progress.clear();

    let report = Report {
        seek_version: env!("CARGO_PKG_VERSION"),
        model: info,
        threads,
        load_s,
        tokenizer_load_s,
        token_source,
        token_source_note,
        warmup: plan.warmup,
        repeats: plan.repeats,
        decode_tokens: n,
        decode_weight_bytes_per_token: weight_bytes,
        decode_weight_bytes_note: weight_note,
        kv_bytes_per_token: loaded.info.kv_bytes_per_token,
        prefill,
        decode,
        batched,
        hourly_price_usd: plan.hourly_price,
        memory,
        bandwidth,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// One prefill from an empty cache: (forward seconds, time to first token, KV-cache bytes).
fn time_prefill(model: &dyn CausalLm, ids: &[TokenId]) -> anyhow::Result<(f64, f64, u64)> {
    let start = Instant::now();
    let mut cache = model.new_cache();
    cache.reserve(ids.len());
    // (1, T)
    let input = Tensor::new(ids, model.device())?.unsqueeze(0)?;
    let logits = model.forward_last(&input, &mut cache)?;
    let forward_s = start.elapsed().as_secs_f64();
    std::hint::black_box(last_argmax(&logits)?);
    let first_s = start.elapsed().as_secs_f64();
    Ok((forward_s, first_s, cache.bytes() as u64))
}

/// Seconds of each timed decode run at context `c`.
fn time_decode(
    model: &dyn CausalLm,
    ids: &[TokenId],
    c: usize,
    n: usize,
    plan: &BenchPlan,
    kv_peak: &mut u64,
    progress: &Progress,
) -> anyhow::Result<Vec<f64>> {
    let mut cache = model.new_cache();
    // The positions this measurement fills, as a server sizes a sequence's cache.
    cache.reserve(c + n);
    let first = if c == 0 {
        ids[0]
    } else {
        progress.say(format_args!("decode {c}: filling the KV cache"));
        // (1, C)
        let input = Tensor::new(&ids[..c], model.device())?.unsqueeze(0)?;
        last_argmax(&model.forward_last(&input, &mut cache)?)?
    };
    let mut secs = Vec::new();
    for run in 0..plan.warmup + plan.repeats {
        progress.say(format_args!("decode {c}: run {}", run + 1));
        cache.truncate(c)?;
        let elapsed = decode_run(model, &mut cache, first, n)?;
        *kv_peak = (*kv_peak).max(cache.bytes() as u64);
        if run >= plan.warmup {
            secs.push(elapsed);
        }
    }
    Ok(secs)
}

/// `n` greedy single-token steps from `token`; the argmax is part of each step.
/// USD per million output tokens for a machine at `hourly` USD/h producing `tokens_per_s`.
fn cost_per_million(hourly: f64, tokens_per_s: f64) -> f64 {
    hourly / 3600.0 / tokens_per_s.max(1e-12) * 1e6
}

/// Seconds of each timed run of `n` decode steps of `b` sequences at once, each sequence
/// started from a one-token prompt of its own.
fn time_batched(
    model: &dyn CausalLm,
    ids: &[TokenId],
    b: usize,
    n: usize,
    plan: &BenchPlan,
    progress: &Progress,
) -> anyhow::Result<Vec<f64>> {
    let mut secs = Vec::new();
    for run in 0..plan.warmup + plan.repeats {
        progress.say(format_args!("batch {b}: run {}", run + 1));
        let mut caches: Vec<KvCache> = (0..b)
            .map(|_| {
                let mut c = model.new_cache();
                c.reserve(n);
                c
            })
            .collect();
        let mut tokens: Vec<TokenId> = (0..b).map(|i| ids[i % ids.len()]).collect();
        let start = Instant::now();
        for _ in 0..n {
            let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
            // (B, V)
            let logits = model.decode_batch(&tokens, &mut refs)?.to_vec2::<f32>()?;
            for (t, row) in tokens.iter_mut().zip(&logits) {
                *t = argmax(row);
            }
        }
        if run >= plan.warmup {
            secs.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(secs)
}

fn decode_run(
    model: &dyn CausalLm,
    cache: &mut KvCache,
    mut token: TokenId,
    n: usize,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    for _ in 0..n {
        // (1, 1)
        let input = Tensor::new(&[token], model.device())?.unsqueeze(0)?;
        token = last_argmax(&model.forward_last(&input, cache)?)?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// The greedy choice from the last position's logits `(1, V)`.
fn last_argmax(logits: &Tensor) -> anyhow::Result<TokenId> {
    // (1, V) -> (V,)
    Ok(argmax(&logits.flatten_all()?.to_vec1::<f32>()?))
}

/// The index of the largest value (the first on ties).
fn argmax(row: &[f32]) -> TokenId {
    let (best, _) = row
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        });
    best as TokenId
}

/// The first `n` ids of a repeated English text.
fn text_ids(tok: &seek_tokenizer::Tokenizer, n: usize) -> anyhow::Result<Vec<TokenId>> {
    let per_copy = tok.encode(TEXT, false)?.len().max(1);
    let copies = n.div_ceil(per_copy) + 1;
    let ids = tok.encode(&TEXT.repeat(copies), false)?;
    ensure!(
        ids.len() >= n,
        "the benchmark text encodes to {} tokens, fewer than the {n} needed",
        ids.len()
    );
    Ok(ids[..n].to_vec())
}

/// `n` pseudo-random ids over the vocabulary (a fixed xorshift sequence, so every run and
/// every engine sees the same ids).
fn synthetic_ids(n: usize, vocab: usize) -> Vec<TokenId> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % vocab as u64) as TokenId
        })
        .collect()
}

/// Bytes of weights one decode step reads, and how they were counted.
fn decode_weight_bytes(loaded: &LoadedModel, opts: &LoadOptions) -> (u64, &'static str) {
    match &loaded.format {
        ModelFormat::Gguf(file) => {
            let tied = !file.has_tensor("output.weight");
            let bytes = file
                .tensors
                .iter()
                .filter(|t| tied || t.name != "token_embd.weight")
                .map(|t| t.n_bytes)
                .sum();
            (
                bytes,
                if tied {
                    "GGUF tensor bytes as stored; the output projection is the embedding table"
                } else {
                    "GGUF tensor bytes as stored, less token_embd.weight (a lookup reads one row)"
                },
            )
        }
        ModelFormat::HfDir(dir) => {
            // Safetensors weights are computed in the load dtype whatever their file type.
            let i = &loaded.info;
            let elem = opts.dtype.size_in_bytes() as u64;
            let embed = (i.vocab_size * i.hidden_size) as u64;
            let tied = std::fs::read_to_string(dir.join("config.json"))
                .ok()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .and_then(|j| j.get("tie_word_embeddings")?.as_bool())
                .unwrap_or(false);
            let params = if tied {
                i.parameters
            } else {
                i.parameters.saturating_sub(embed)
            };
            (
                params * elem,
                "parameters x the load dtype's size, less the embedding table unless tied",
            )
        }
    }
}

/// The size of the weight files on disk.
fn model_file_bytes(loaded: &LoadedModel) -> anyhow::Result<u64> {
    let len = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .with_context(|| format!("cannot stat {}", p.display()))
    };
    match &loaded.format {
        ModelFormat::Gguf(file) => len(file.path()),
        ModelFormat::HfDir(dir) => {
            let mut total = 0;
            for e in
                std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?
            {
                let p = e?.path();
                if p.extension().is_some_and(|x| x == "safetensors") {
                    total += len(&p)?;
                }
            }
            Ok(total)
        }
    }
}

/// A `/proc/self/status` field given in kB, in bytes (None off Linux).
fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The last-level cache of CPU 0, from sysfs.
fn last_level_cache_bytes() -> Option<u64> {
    let base = Path::new("/sys/devices/system/cpu/cpu0/cache");
    let mut best = None;
    for e in std::fs::read_dir(base).ok()? {
        let dir = e.ok()?.path();
        let level: u32 = std::fs::read_to_string(dir.join("level"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let size = std::fs::read_to_string(dir.join("size")).ok()?;
        let size = size.trim();
        let bytes = match size.strip_suffix('K') {
            Some(k) => k.parse::<u64>().ok()? << 10,
            None => match size.strip_suffix('M') {
                Some(m) => m.parse::<u64>().ok()? << 20,
                None => size.parse().ok()?,
            },
        };
        if best.is_none_or(|(l, _)| level > l) {
            best = Some((level, bytes));
        }
    }
    best.map(|(_, b)| b)
}

/// 4x the last-level cache and at least 1 GiB, but no more than a quarter of free memory.
fn default_bandwidth_bytes() -> usize {
    let llc = last_level_cache_bytes().unwrap_or(0) as usize;
    let want = (4 * llc).max(1 << 30);
    match proc_meminfo_bytes("MemAvailable") {
        Some(avail) => want.min((avail / 4) as usize).max(64 << 20),
        None => want,
    }
}

fn proc_meminfo_bytes(field: &str) -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Read bandwidth: the best of `runs` streaming sums over a `bytes` buffer, one contiguous
/// slice per thread.
fn measure_bandwidth(bytes: usize, threads: usize, runs: usize) -> Bandwidth {
    let threads = threads.max(1);
    let n = (bytes / 8).max(threads * 8);
    // Zeroed pages are mapped lazily; each thread first writes its own slice, so the pages
    // are really backed (reading untouched zero pages would measure nothing) and placed near
    // the thread that reads them.
    let mut buf = vec![0u64; n];
    let chunk = n.div_ceil(threads);
    std::thread::scope(|s| {
        for (i, part) in buf.chunks_mut(chunk).enumerate() {
            s.spawn(move || {
                for (j, x) in part.iter_mut().enumerate() {
                    *x = (i * chunk + j) as u64 | 1;
                }
            });
        }
    });
    let mut results = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let total = std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(chunk)
                .map(|part| s.spawn(move || stream_sum(std::hint::black_box(part))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("bandwidth thread"))
                .fold(0u64, u64::wrapping_add)
        });
        std::hint::black_box(total);
        results.push((n * 8) as f64 / start.elapsed().as_secs_f64() / 1e9);
    }
    Bandwidth {
        gb_per_s: results.iter().copied().fold(0.0, f64::max),
        runs_gb_per_s: results,
        buffer_bytes: n * 8,
        threads,
        last_level_cache_bytes: last_level_cache_bytes(),
    }
}

/// A read-only pass with eight independent accumulators, so the loop vectorizes and keeps
/// many loads in flight.
fn stream_sum(xs: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        // The line 2 KiB ahead is asked for, as the decode kernels ask for their next rows:
        // on the machines measured here the hardware prefetcher alone leaves a fifth of the
        // bandwidth unused (21 vs 25 GB/s), and a bound below what the kernels reach is no
        // bound.
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch has no architectural effect and never faults.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(c.as_ptr().cast::<i8>().wrapping_add(2048));
        }
        for k in 0..8 {
            acc[k] = acc[k].wrapping_add(c[k]);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(0u64, |a, &x| a.wrapping_add(x));
    acc.iter().fold(tail, |a, &x| a.wrapping_add(x))
}

/// Progress lines on a terminal's stderr, each overwriting the last.
struct Progress(bool);

impl Progress {
    fn say(&self, what: std::fmt::Arguments) {
        if self.0 {
            eprint!("\r\x1b[2K{what}");
        }
    }
    fn clear(&self) {
        if self.0 {
            eprint!("\r\x1b[2K");
        }
    }
}

fn fmt_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// `median [min-max]` with a precision that suits the magnitude.
fn fmt_stats(s: &Stats) -> String {
    let p = |x: f64| {
        // Three significant digits below 100, whole numbers above.
        let digits = 2 - x.abs().max(1e-9).log10().floor() as i64;
        format!("{x:.*}", digits.clamp(0, 9) as usize)
    };
    format!("{} [{}-{}]", p(s.median), p(s.min), p(s.max))
}

/// `s` with every figure multiplied by `k` (for display units).
fn scaled(s: &Stats, k: f64) -> Stats {
    Stats::of(s.samples.iter().map(|x| x * k).collect())
}

fn print_table(r: &Report) {
    let i = &r.model;
    println!(
        "{} ({}, {}) · {} threads · load {:.2} s · ids from {} · median [min-max] of {} runs after {} warm-up",
        i.name.as_deref().unwrap_or("(unnamed)"),
        i.architecture,
        i.format,
        r.threads.effective,
        r.load_s,
        if r.token_source == "tokenizer" { "the tokenizer" } else { "a pseudo-random sequence" },
        r.repeats,
        r.warmup,
    );
    println!();
    println!(
        "{:<9} {:>7}  {:<24} {:<24}",
        "prefill", "tokens", "tok/s", "time to first token (ms)"
    );
    for p in &r.prefill {
        match (&p.skipped, &p.tokens_per_s, &p.time_to_first_token_s) {
            (Some(why), _, _) => println!("{:<9} {:>7}  skipped: {why}", "", p.tokens),
            (None, Some(tps), Some(ttft)) => println!(
                "{:<9} {:>7}  {:<24} {:<24}",
                "",
                p.tokens,
                fmt_stats(tps),
                fmt_stats(&scaled(ttft, 1e3))
            ),
            _ => {}
        }
    }
    println!();
    println!(
        "{:<9} {:>7}  {:<24} {:<22} {:>12} {:>11}",
        "decode", "context", "tok/s", "ms/token", "bound tok/s", "% of bound"
    );
    for d in &r.decode {
        match (&d.skipped, &d.tokens_per_s, &d.ms_per_token) {
            (Some(why), _, _) => println!("{:<9} {:>7}  skipped: {why}", "", d.context),
            (None, Some(tps), Some(ms)) => println!(
                "{:<9} {:>7}  {:<24} {:<22} {:>12} {:>11}",
                "",
                d.context,
                fmt_stats(tps),
                fmt_stats(ms),
                d.bound_tokens_per_s
                    .map_or("-".into(), |b| format!("{b:.1}")),
                d.percent_of_bound
                    .map_or("-".into(), |p| format!("{p:.1}%")),
            ),
            _ => {}
        }
    }
    if !r.batched.is_empty() {
        println!();
        println!(
            "{:<9} {:>7}  {:<24} {:<22}",
            "batched", "seqs", "tok/s (all sequences)", "ms/step"
        );
        for b in &r.batched {
            println!(
                "{:<9} {:>7}  {:<24} {:<22}",
                "",
                b.sequences,
                fmt_stats(&b.tokens_per_s),
                fmt_stats(&b.ms_per_step)
            );
        }
    }
    if let Some(price) = r.hourly_price_usd {
        let rows: Vec<String> = r
            .decode
            .iter()
            .filter_map(|d| {
                d.cost_per_million_output_usd
                    .map(|c| format!("1 stream @{} ${c:.2}", d.context))
            })
            .chain(r.batched.iter().filter_map(|b| {
                b.cost_per_million_output_usd
                    .map(|c| format!("{} streams ${c:.2}", b.sequences))
            }))
            .collect();
        println!();
        println!(
            "cost      per million output tokens at ${price}/h: {} (DeepSeek-R1 API at launch: $2.19)",
            rows.join(" · ")
        );
    }
    println!();
    let m = &r.memory;
    println!(
        "memory    peak RSS {} = {} x (model file {} + largest KV cache {})",
        m.peak_rss_bytes.map_or("unknown".into(), fmt_bytes),
        m.peak_over_model_and_kv
            .map_or("?".into(), |x| format!("{x:.2}")),
        fmt_bytes(m.model_file_bytes),
        fmt_bytes(m.kv_cache_peak_bytes),
    );
    match &r.bandwidth {
        Some(b) => println!(
            "bandwidth {:.1} GB/s (best of {}, {} buffer, {} threads) · decode reads {} of weights + {} per cached token",
            b.gb_per_s,
            b.runs_gb_per_s.len(),
            fmt_bytes(b.buffer_bytes as u64),
            b.threads,
            fmt_bytes(r.decode_weight_bytes_per_token),
            fmt_bytes(r.kv_bytes_per_token),
        ),
        None => println!("bandwidth not measured (--bandwidth-mib 0): no decode bound"),
    }
    if let Some(note) = &r.token_source_note {
        println!("note      {note}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_take_the_middle_and_the_spread() {
        let s = Stats::of(vec![3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max, s.mean), (2.0, 1.0, 3.0, 2.0));
        assert!((s.stdev - 1.0).abs() < 1e-12);
        assert_eq!(
            s.samples,
            vec![3.0, 1.0, 2.0],
            "raw samples keep their order"
        );
        assert_eq!(Stats::of(vec![4.0, 1.0, 2.0, 3.0]).median, 2.5);
        assert_eq!(Stats::of(vec![5.0]).stdev, 0.0);
    }

    #[test]
    fn synthetic_ids_are_fixed_and_inside_the_vocabulary() {
        let a = synthetic_ids(1000, 256);
        assert_eq!(a, synthetic_ids(1000, 256));
        assert!(a.iter().all(|&id| id < 256));
        assert!(a.iter().collect::<std::collections::BTreeSet<_>>().len() > 200);
    }

    #[test]
    fn stream_sum_adds_every_element() {
        let xs: Vec<u64> = (1..=1003).collect();
        assert_eq!(stream_sum(&xs), 1003 * 1004 / 2);
    }
}
