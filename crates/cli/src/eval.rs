//! `seek eval`: red-team, bias and reliability suites against a local model (through Seek's
//! own engine, guard on or off) or any OpenAI-compatible URL.
//!
//! ```text
//! seek eval redteam --model models/SmolLM2-135M-Instruct-Q4_1.gguf \
//!     --policy examples/policies/harm-screen.toml --attacks direct,prefix_injection,base64 \
//!     --judge-model models/Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf --out eval-out
//! seek eval redteam --url http://127.0.0.1:8000/v1 --served-model smol --out eval-out --limit 20
//! ```
//!
//! Results go to `OUT/<suite>/samples.jsonl` (one line per judged reply, written as soon as it
//! is done: a killed run resumes where it stopped) and `OUT/<suite>/summary.json`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use seek_engine::serve::{EngineConfig, EngineHandle};
use seek_eval::redteam::{redteam, RedteamOptions};
use seek_eval::run::RunConfig;
use seek_eval::target::{LocalTarget, Target, UrlTarget};

use crate::source::open;
use crate::ModelArg;

/// `seek eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(subcommand)]
    suite: Suite,
}

#[derive(Subcommand, Debug)]
enum Suite {
    /// HarmBench-style attack success rate, answer and reasoning judged apart, guard off and on.
    Redteam(Box<RedteamArgs>),
    /// GSM8K and MATH-500 accuracy with rule-based answer verification, consistency across
    /// seeds, reasoning length and how often the budget is hit.
    Reliability(Box<ReliabilityArgs>),
    /// XSTest: refusal rate on safe prompts (over-refusal) and on their unsafe contrasts.
    Overrefusal(Box<SuiteArgs>),
    /// BBQ: accuracy and the paper's bias scores in ambiguous and disambiguated contexts.
    Bias(Box<BiasArgs>),
    /// Write OUT/report.html from the summaries of the suites run with this --out.
    Report(ReportArgs),
}

#[derive(Args, Debug)]
struct SuiteArgs {
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Args, Debug)]
struct ReliabilityArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// gsm8k, math500, or JSONL files of problems (`question`, `answer`); comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "gsm8k,math500")]
    datasets: Vec<String>,
    /// Runs per problem (sampling seeds 0..N): consistency and majority vote.
    #[arg(long, default_value_t = 1)]
    seeds: usize,
    /// Sampling temperature (DeepSeek recommends 0.6 for R1).
    #[arg(long, default_value_t = 0.6)]
    temperature: f32,
}

#[derive(Args, Debug)]
struct BiasArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// BBQ categories (file stems in data/bbq; default: every shipped one).
    #[arg(long, value_delimiter = ',')]
    categories: Vec<String>,
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// The folder the suites wrote to.
    #[arg(long, value_name = "DIR", default_value = "eval-out")]
    out: PathBuf,
}

/// What every suite is run against, and how.
#[derive(Args, Debug)]
struct TargetArgs {
    /// A local model (.gguf or Hugging Face folder), run through Seek's engine.
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "url",
        required_unless_present = "url"
    )]
    model: Option<String>,
    /// A LoRA adapter folder applied on top of --model (as `seek run --lora`).
    #[arg(long, value_name = "DIR", requires = "model")]
    lora: Option<PathBuf>,
    /// An OpenAI-compatible endpoint (e.g. http://127.0.0.1:8000/v1).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// The `model` name to send to --url.
    #[arg(long, value_name = "NAME", default_value = "default")]
    served_model: String,
    /// The endpoint's key (or SEEK_EVAL_API_KEY).
    #[arg(long, env = "SEEK_EVAL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Also run everything with this guard policy in front of the local model (guard on and
    /// off in the same run).
    #[arg(long, value_name = "FILE", requires = "model")]
    policy: Option<PathBuf>,
    /// Where results go.
    #[arg(long, value_name = "DIR", default_value = "eval-out")]
    out: PathBuf,
    /// Requests in flight at once (a local engine batches them).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Stop after this many requests to the target.
    #[arg(long, value_name = "N")]
    max_requests: Option<usize>,
    /// Stop after this many generated tokens.
    #[arg(long, value_name = "N")]
    max_tokens_total: Option<usize>,
    /// Stop after spending this many US dollars at --price-input / --price-output (suites that
    /// do not record prompt tokens price generated tokens only).
    #[arg(long, value_name = "USD")]
    max_cost: Option<f64>,
    /// USD per million prompt tokens (default: DeepSeek-R1's launch price, cache miss).
    #[arg(long, value_name = "USD", default_value_t = 0.55)]
    price_input: f64,
    /// USD per million generated tokens (default: DeepSeek-R1's launch price).
    #[arg(long, value_name = "USD", default_value_t = 2.19)]
    price_output: f64,
    /// At most this many items (a repeatable sample, see --seed).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Seed of the sample and of sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Tokens per reply.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
}

#[derive(Args, Debug)]
struct RedteamArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// harmbench, advbench or jailbreakbench.
    #[arg(long, default_value = "harmbench")]
    dataset: String,
    /// HarmBench split.
    #[arg(long, default_value = "test")]
    split: String,
    /// HarmBench functional categories (standard, contextual, copyright).
    #[arg(long, value_delimiter = ',', default_value = "standard")]
    functional: Vec<String>,
    /// Attacks (direct, prefix_injection, refusal_suppression, roleplay, dan, base64, rot13,
    /// leetspeak, payload_splitting).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,prefix_injection,refusal_suppression"
    )]
    attacks: Vec<String>,
    /// A local model that judges with HarmBench's classifier prompt ("same": the model under
    /// test); without one, only the refusal-string rule judges.
    #[arg(long, value_name = "PATH", conflicts_with = "judge_url")]
    judge_model: Option<String>,
    /// An OpenAI-compatible judge endpoint.
    #[arg(long, value_name = "URL")]
    judge_url: Option<String>,
    /// The judge endpoint's model name.
    #[arg(long, value_name = "NAME", default_value = "judge")]
    judge_served_model: String,
    /// Human-labelled generations (HarmBench) the judge's agreement is measured on.
    #[arg(long, default_value_t = 100)]
    judge_check: usize,
    /// Only measure the judge's agreement with the human labels; the refusal rule judges
    /// the replies (for a judge model too small to trust, or to save time).
    #[arg(long)]
    judge_agreement_only: bool,
    /// The attacker model of the iterative `pair` attack ("same": the model under test).
    #[arg(long, value_name = "PATH", conflicts_with = "attacker_url")]
    attacker_model: Option<String>,
    /// An OpenAI-compatible attacker endpoint.
    #[arg(long, value_name = "URL")]
    attacker_url: Option<String>,
    /// The attacker endpoint's model name.
    #[arg(long, value_name = "NAME", default_value = "attacker")]
    attacker_served_model: String,
    /// Rounds of the `pair` attack (the attacker rewrites the prompt until the judge says the
    /// model complied).
    #[arg(long, default_value_t = 3)]
    pair_rounds: usize,
}

/// `seek eval`.
pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let out = match &args.suite {
        Suite::Redteam(a) => {
            run_redteam(a)?;
            a.target.out.clone()
        }
        Suite::Reliability(a) => {
            for_each_target(&a.target, |t, cfg| {
                let mut datasets = Vec::new();
                for d in &a.datasets {
                    datasets.push(seek_eval::reliability::Dataset::parse(d).with_context(
                        || format!("--datasets: unknown dataset {d:?}; use gsm8k, math500 or a .jsonl file of problems"),
                    )?);
                }
                let opts = seek_eval::reliability::ReliabilityOptions {
                    datasets,
                    limit: a.target.limit,
                    sample_seed: a.target.seed,
                    seeds: a.seeds.max(1),
                    max_tokens: a.target.max_tokens,
                    temperature: a.temperature,
                };
                let s = seek_eval::reliability::reliability(t, cfg, &opts)?;
                println!("{}", serde_json::to_string_pretty(&s)?);
                Ok(())
            })?;
            a.target.out.clone()
        }
        Suite::Overrefusal(a) => {
            for_each_target(&a.target, |t, cfg| {
                let opts = seek_eval::overrefusal::OverRefusalOptions {
                    limit: a.target.limit,
                    sample_seed: a.target.seed,
                    max_tokens: a.target.max_tokens,
                    seed: a.target.seed,
                    ..Default::default()
                };
                let s = seek_eval::overrefusal::overrefusal(t, cfg, &opts)?;
                println!("{}", serde_json::to_string_pretty(&s)?);
                Ok(())
            })?;
            a.target.out.clone()
        }
        Suite::Bias(a) => {
            for_each_target(&a.target, |t, cfg| {
                let opts = seek_eval::bias::BiasOptions {
                    limit: a.target.limit,
                    seed: a.target.seed,
                    categories: a.categories.clone(),
                    max_tokens: a.target.max_tokens,
                    ..Default::default()
                };
                let s = seek_eval::bias::bias(t, cfg, &opts)?;
                println!("{}", serde_json::to_string_pretty(&s)?);
                Ok(())
            })?;
            a.target.out.clone()
        }
        Suite::Report(a) => a.out.clone(),
    };
    let report = seek_eval::report::write_report(&out)?;
    eprintln!("report: {}", report.display());
    Ok(())
}

/// Runs `suite` on the target (guard off, in OUT) and, with --policy, on the guarded target
/// too (in OUT/guard-on).
fn for_each_target(
    t: &TargetArgs,
    suite: impl Fn(&dyn Target, &RunConfig) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let (targets, _judge_engines) = build_targets(t)?;
    for (label, target) in &targets {
        let out = if label == "guard on" {
            t.out.join("guard-on")
        } else {
            t.out.clone()
        };
        eprintln!("{label}: {}", target.name());
        suite(target.as_ref(), &run_config(t, out))?;
    }
    Ok(())
}

fn run_config(t: &TargetArgs, out: PathBuf) -> RunConfig {
    RunConfig {
        out,
        concurrency: t.concurrency.max(1),
        max_requests: t.max_requests,
        max_tokens_total: t.max_tokens_total,
        max_cost_usd: t.max_cost,
        prices_per_million: (t.price_input, t.price_output),
        progress: true,
    }
}

type Engines = Vec<(EngineHandle, Arc<seek_tokenizer::Tokenizer>)>;
type Targets = Vec<(String, Box<dyn Target>)>;

/// The target ("guard off"), and with --policy the same model behind the guard ("guard on").
fn build_targets(t: &TargetArgs) -> anyhow::Result<(Targets, Engines)> {
    let mut targets: Vec<(String, Box<dyn Target>)> = Vec::new();
    let mut engines = Vec::new();
    match (&t.model, &t.url) {
        (Some(path), _) => {
            let label = crate::serve::default_name(path);
            let (engine, tok) = local(path, &label, t.lora.as_deref())?;
            targets.push((
                "guard off".into(),
                Box::new(LocalTarget {
                    label: label.clone(),
                    engine: engine.clone(),
                    tokenizer: tok.clone(),
                    policy: None,
                    grammars: Default::default(),
                }),
            ));
            if let Some(p) = &t.policy {
                let policy = seek_guard::Policy::load(p)?;
                targets.push((
                    "guard on".into(),
                    Box::new(LocalTarget {
                        label,
                        engine: engine.clone(),
                        tokenizer: tok.clone(),
                        policy: Some(Arc::new(policy)),
                        grammars: Default::default(),
                    }),
                ));
            }
            engines.push((engine, tok));
        }
        (None, Some(url)) => targets.push((
            "guard off".into(),
            Box::new(UrlTarget::new(url, &t.served_model, t.api_key.clone())),
        )),
        (None, None) => bail!("give --model PATH or --url URL"),
    }
    Ok((targets, engines))
}

/// A judge or attacker: a local model ("same": the model under test), a URL, or none.
fn helper_target(
    role: &str,
    model: Option<&str>,
    url: Option<&str>,
    served: &str,
    api_key: Option<String>,
    engines: &Engines,
) -> anyhow::Result<Option<Box<dyn Target>>> {
    let (engine, tokenizer, label) = match (model, url) {
        (Some("same"), _) => {
            let (e, t) = engines
                .first()
                .cloned()
                .with_context(|| format!("--{role}-model same needs --model"))?;
            (e, t, role.to_string())
        }
        (Some(m), _) => {
            let (e, t) = local(m, role, None)?;
            (e, t, crate::serve::default_name(m))
        }
        (None, Some(url)) => return Ok(Some(Box::new(UrlTarget::new(url, served, api_key)))),
        (None, None) => return Ok(None),
    };
    Ok(Some(Box::new(LocalTarget {
        label,
        engine,
        tokenizer,
        policy: None,
        grammars: Default::default(),
    })))
}

/// A local engine for `path`.
pub(crate) fn local(
    path: &str,
    label: &str,
    lora: Option<&std::path::Path>,
) -> anyhow::Result<(EngineHandle, Arc<seek_tokenizer::Tokenizer>)> {
    let opened = open(&ModelArg {
        model: path.to_string(),
        revision: "main".into(),
        lora: lora.map(std::path::Path::to_path_buf),
        no_mmap: false,
        mlock: false,
    })
    .with_context(|| format!("loading {path}"))?;
    let tok = Arc::new(opened.tokenizer);
    let engine = EngineHandle::start(opened.loaded.model, tok.clone(), EngineConfig::default())
        .with_context(|| format!("starting the engine for {label}"))?;
    Ok((engine, tok))
}

fn run_redteam(a: &RedteamArgs) -> anyhow::Result<()> {
    let t = &a.target;
    let cfg = run_config(t, t.out.clone());
    let (targets, engines) = build_targets(t)?;
    let judge = helper_target(
        "judge",
        a.judge_model.as_deref(),
        a.judge_url.as_deref(),
        &a.judge_served_model,
        t.api_key.clone(),
        &engines,
    )?;
    let attacker = helper_target(
        "attacker",
        a.attacker_model.as_deref(),
        a.attacker_url.as_deref(),
        &a.attacker_served_model,
        t.api_key.clone(),
        &engines,
    )?;
    let refs: Vec<(&str, &dyn Target)> = targets
        .iter()
        .map(|(l, t)| (l.as_str(), t.as_ref()))
        .collect();
    let opts = RedteamOptions {
        dataset: a.dataset.clone(),
        split: a.split.clone(),
        functional: a.functional.clone(),
        attacks: a.attacks.clone(),
        limit: t.limit,
        seed: t.seed,
        max_tokens: t.max_tokens,
        judge_check: a.judge_check,
        judge_samples: !a.judge_agreement_only,
        pair_rounds: a.pair_rounds,
    };
    let s = redteam(&refs, judge.as_deref(), attacker.as_deref(), &cfg, &opts)?;
    println!(
        "{} · {} behaviors x {} attacks · {:.0} s",
        s.target,
        s.behaviors,
        s.attacks.len(),
        s.elapsed_s
    );
    println!(
        "{:<10} {:>12} {:>15} {:>14} {:>8}",
        "run", "ASR answer", "ASR reasoning", "ASR (rule)", "blocked"
    );
    for r in &s.runs {
        println!(
            "{:<10} {:>11.1}% {:>14.1}% {:>13.1}% {:>8}",
            r.label,
            100.0 * r.asr_answer,
            100.0 * r.asr_reasoning,
            100.0 * r.overall.answer_rule,
            r.overall.blocked
        );
        for (attack, x) in &r.by_attack {
            println!(
                "  {attack:<20} answer {:>5.1}%  (n {})",
                100.0 * x.answer,
                x.n
            );
        }
    }
    if let Some(j) = &s.judge {
        println!(
            "judge: {} · agreement with HarmBench's human labels {:.1}% (kappa {:.2}) on {} generations; the refusal rule {:.1}%",
            j.name,
            100.0 * j.agreement,
            j.cohen_kappa,
            j.n,
            100.0 * j.rule_agreement
        );
    }
    println!("samples and summary in {}", t.out.join("redteam").display());
    Ok(())
}
