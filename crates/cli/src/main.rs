//! `seek`: run DeepSeek-R1-family reasoning models on your own hardware.
//!
//! ```text
//! scripts/fetch-sample-models.sh
//! cargo run --release -p seek-cli -- run models/Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf "What is the capital of France?"
//! cargo run --release -p seek-cli -- --help
//! ```
//!
//! Only this binary reads flags, files and the environment; it turns them into typed
//! configs for the library crates.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod audit;
mod bench;
mod eval;
mod generation;
mod guard;
mod inspect;
mod npy;
mod rewards;
mod serve;
mod source;
mod tokens;
mod train;

/// Run, inspect and probe DeepSeek-R1-style reasoning models locally (GGUF or Hugging Face safetensors).
#[derive(Parser, Debug)]
#[command(name = "seek", version, about, long_about = None, propagate_version = true)]
#[command(
    after_help = "MODEL is a .gguf file, a Hugging Face folder (config.json + *.safetensors + tokenizer.json),\n\
or a Hugging Face repo id such as deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B.\n\n\
Examples:\n  seek run model.gguf \"What is 17 * 23?\"\n  seek chat model.gguf\n  seek inspect model.gguf\n  seek serve model.gguf --port 8000"
)]
struct Cli {
    /// CPU threads for tensor work (default: all cores).
    #[arg(long, global = true, env = "SEEK_THREADS")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Answer one prompt, streaming the reasoning (dimmed) and then the answer.
    Run(generation::RunArgs),
    /// Talk with a model turn by turn (`/reset` clears the history, `/exit` or Ctrl-D quits).
    Chat(generation::ChatArgs),
    /// Show architecture, size, quantization, context length, KV-cache cost and chat template.
    Inspect(inspect::InspectArgs),
    /// Print the token ids of a text.
    Tokenize(tokens::TokenizeArgs),
    /// Write the logits of every position of a token sequence to a .npy file.
    Logits(tokens::LogitsArgs),
    /// Time prefill, decode and time to first token; measure peak memory and the bandwidth bound.
    Bench(bench::BenchArgs),
    /// Serve models over an OpenAI/DeepSeek-compatible HTTP API (continuous batching, API keys, metrics, cost).
    Serve(Box<serve::ServeArgs>),
    /// Check a text against a guard policy offline (`seek guard check POLICY --text ...`; exit 3 when blocked).
    Guard(guard::GuardArgs),
    /// Read the audit trail: list, show, export (JSONL) and summarise entries; purge old ones.
    Audit(audit::AuditArgs),
    /// Evaluate a model or endpoint: red team (ASR, guard off and on), over-refusal, bias, reliability, report.
    Eval(eval::EvalArgs),
    /// Fine-tune a model (full or LoRA) with TRL's option names: `seek train sft`.
    Train(train::TrainArgs),
    /// Serve Seek's rule-based rewards to RL runs elsewhere (OpenRLHF's remote reward model).
    Rewards(rewards::RewardsArgs),
}

/// The model argument shared by every command.
#[derive(Args, Debug, Clone)]
pub struct ModelArg {
    /// A .gguf file, a Hugging Face folder, or a Hugging Face repo id.
    #[arg(value_name = "MODEL")]
    pub model: String,
    /// Git revision when MODEL is a repo id.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// A LoRA adapter folder (PEFT's adapter_config.json + adapter_model.safetensors, as
    /// `seek train` or `peft` writes it) applied on top of MODEL, unmerged.
    #[arg(long, value_name = "DIR")]
    pub lora: Option<PathBuf>,
    /// Read a GGUF model into memory instead of mapping it (llama.cpp's --no-mmap); by default
    /// the weights are read in place, so a model larger than memory still runs, from disk.
    #[arg(long)]
    pub no_mmap: bool,
    /// Lock the weights in memory (llama.cpp's --mlock): no paging; an error when the memory
    /// or `ulimit -l` is too small.
    #[arg(long)]
    pub mlock: bool,
}

impl ModelArg {
    /// The local path of the model, downloading it first when it is a repo id.
    pub fn resolve(&self) -> anyhow::Result<PathBuf> {
        source::resolve(&self.model, &self.revision)
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let argv = match train::recipe_argv(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse_from(argv);
    // A server's request log is its main output; other commands stay quiet.
    let default_filter = match cli.command {
        Command::Serve(_) => "warn,seek_server=info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SEEK_LOG")
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        // Escape codes only for a terminal, not for a log file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(n) = cli.threads {
        if n == 0 {
            eprintln!("error: --threads must be at least 1");
            return ExitCode::from(2);
        }
        // candle's CPU kernels size their pools from RAYON_NUM_THREADS; set it before any pool starts.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let result = match cli.command {
        Command::Run(a) => generation::run(a),
        Command::Chat(a) => generation::chat(a),
        Command::Inspect(a) => inspect::inspect(a),
        Command::Tokenize(a) => tokens::tokenize(a),
        Command::Logits(a) => tokens::logits(a),
        Command::Bench(a) => bench::bench(a),
        Command::Serve(a) => serve::serve(*a),
        // The only command with an exit status of its own: 3 when a rail blocked.
        Command::Guard(a) => match guard::guard(a) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Audit(a) => audit::audit(a),
        Command::Eval(a) => eval::eval(a),
        Command::Train(a) => train::train(a),
        Command::Rewards(a) => rewards::rewards(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
