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
    let RewardsCommand::Serve(a) = args.command;
    let weights = (!a.reward_weights.is_empty()).then_some(&a.reward_weights[..]);
    let set = seek_eval::rewards::RewardSet::new(&a.reward_funcs, weights, a.max_completion_length)
        .map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        let names: Vec<&str> = set.funcs.iter().map(|(f, _)| f.name()).collect();
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
