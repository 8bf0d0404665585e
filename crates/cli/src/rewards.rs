//! `seek rewards serve`: Seek's rule-based rewards behind OpenRLHF's remote reward-model
//! protocol, for RL runs on other machines.
//!
//!     seek rewards serve --reward_funcs accuracy_reward think_format_reward --port 5000
//!     # OpenRLHF: --remote_rm_url http://HOST:5000/get_reward

use anyhow::Context;
use clap::{Args, Subcommand};

/// `seek rewards`.
#[derive(Args, Debug)]
pub struct RewardsArgs {
    #[command(subcommand)]
    command: RewardsCommand,
}

#[derive(Subcommand, Debug)]
enum RewardsCommand {
    /// Answer `POST /get_reward` (OpenRLHF's remote reward model) with Seek's rewards.
    Serve(ServeArgs),
    /// Write verifiable problems (arithmetic, Countdown) as JSONL for `seek train grpo`.
    Tasks(TasksArgs),
}

#[derive(Args, Debug)]
struct TasksArgs {
    /// arithmetic or countdown.
    task: String,
    /// How many rows.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Seed (a held-out set: another seed, and --exclude the training file).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// r1-zero (raw text in the R1-Zero template, ending inside <think>) or chat (a user message).
    #[arg(long, default_value = "r1-zero")]
    format: String,
    /// Arithmetic: digits per number (when no --template).
    #[arg(long, default_value_t = 2)]
    digits: u32,
    /// Arithmetic: numbers per expression (when no --template).
    #[arg(long, default_value_t = 2)]
    terms: usize,
    /// Arithmetic: the expression's shape, `{D}` a D-digit number, `{op}` an operator from
    /// --ops (e.g. "{2} * {1} + {2}").
    #[arg(long)]
    template: Option<String>,
    /// Arithmetic: operators to draw from.
    #[arg(long, default_value = "+-*")]
    ops: String,
    /// Countdown: numbers given.
    #[arg(long, default_value_t = 3)]
    numbers: usize,
    /// Countdown: largest number.
    #[arg(long = "max-number", default_value_t = 25)]
    max_number: i64,
    /// Leave out any problem whose question is in this JSONL (the training set).
    #[arg(long)]
    exclude: Option<std::path::PathBuf>,
    /// Output file (default: stdout).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

fn tasks(a: TasksArgs) -> anyhow::Result<()> {
    use seek_eval::tasks::{disjoint, generate, PromptFormat, Task};
    let format = PromptFormat::parse(&a.format)
        .with_context(|| format!("--format {}: use r1-zero or chat", a.format))?;
    let task = match a.task.as_str() {
        "arithmetic" => {
            if a.terms < 2 || !(1..=9).contains(&a.digits) {
                anyhow::bail!("arithmetic needs --terms 2 or more and --digits from 1 to 9");
            }
            if a.ops.is_empty() || a.ops.chars().any(|c| !"+-*".contains(c)) {
                anyhow::bail!("--ops {:?}: use some of + - *", a.ops);
            }
            let template = a
                .template
                .clone()
                .unwrap_or_else(|| vec![format!("{{{}}}", a.digits); a.terms].join(" {op} "));
            seek_eval::tasks::check_template(&template).map_err(anyhow::Error::msg)?;
            Task::Arithmetic {
                template,
                ops: a.ops.clone(),
            }
        }
        "countdown" => {
            if !(2..=6).contains(&a.numbers) || !(1..=1000).contains(&a.max_number) {
                anyhow::bail!(
                    "countdown needs --numbers from 2 to 6 and --max-number from 1 to 1000"
                );
            }
            Task::Countdown {
                numbers: a.numbers,
                max_number: a.max_number,
            }
        }
        other => anyhow::bail!("unknown task {other:?}; use arithmetic or countdown"),
    };
    let mut rows = generate(&task, a.n, a.seed, format);
    if let Some(path) = &a.exclude {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --exclude {}", path.display()))?;
        let train: Vec<serde_json::Value> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .with_context(|| format!("--exclude {}: not JSONL", path.display()))?;
        rows = disjoint(rows, &train);
    }
    let mut out = String::new();
    for r in &rows {
        out.push_str(&serde_json::to_string(r)?);
        out.push('\n');
    }
    match &a.out {
        Some(p) => {
            std::fs::write(p, out).with_context(|| format!("cannot write {}", p.display()))?
        }
        None => print!("{out}"),
    }
    if let Some(p) = &a.out {
        eprintln!("{} {} problems in {}", rows.len(), a.task, p.display());
    }
    Ok(())
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Address to listen on (loopback by default; the route takes no key, so keep it on a
    /// private network).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free one, printed at start).
    #[arg(long, default_value_t = 5000)]
    port: u16,
    /// Reward functions, TRL's names (`accuracy_reward`, `reasoning_accuracy_reward`,
    /// `think_format_reward`, `get_soft_overlong_punishment[:MAX[:CACHE]]`) or Seek's
    /// (`tag_count_reward`, `repetition_penalty_reward`).
    #[arg(long = "reward_funcs", alias = "reward-funcs", num_args = 1.., required = true)]
    reward_funcs: Vec<String>,
    /// One weight per reward function (default 1 each).
    #[arg(long = "reward_weights", alias = "reward-weights", num_args = 1..)]
    reward_weights: Vec<f64>,
    /// Completion length the overlong punishment is measured against (words, as the
    /// protocol sends text).
    #[arg(
        long = "max_completion_length",
        alias = "max-completion-length",
        default_value_t = 256
    )]
    max_completion_length: usize,
}

/// Runs `seek rewards ...`.
pub fn rewards(args: RewardsArgs) -> anyhow::Result<()> {
    let a = match args.command {
        RewardsCommand::Serve(a) => a,
        RewardsCommand::Tasks(t) => return tasks(t),
    };
    let weights = (!a.reward_weights.is_empty()).then_some(&a.reward_weights[..]);
    let set = seek_eval::rewards::RewardSet::new(&a.reward_funcs, weights, a.max_completion_length)
        .map_err(anyhow::Error::msg)?;
    if let Some((f, _)) = set
        .funcs
        .iter()
        .find(|(f, _)| matches!(f, seek_eval::rewards::Reward::External(_)))
    {
        anyhow::bail!(
            "{}: the reward server answers with Seek's built-in rewards only; point the trainer at that endpoint directly",
            f.name()
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        let names: Vec<String> = set.funcs.iter().map(|(f, _)| f.name()).collect();
        eprintln!(
            "seek rewards: {} on http://{addr}/get_reward",
            names.join(", ")
        );
        axum::serve(listener, seek_server::rewards::router(set))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("the reward server failed")
    })
}
