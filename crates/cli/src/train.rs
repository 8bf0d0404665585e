//! `seek train`: fine-tune a model (full or LoRA) with TRL's option names.
//!
//! ```text
//! seek train sft --model_name_or_path models/SmolLM2-135M-Instruct-Q4_1.gguf \
//!     --dataset_name data.jsonl --output_dir out --learning_rate 2e-4 --max_steps 100 \
//!     --use_peft --lora_r 8 --lora_alpha 16
//! seek train sft --config recipe.toml --max_steps 10      # a TOML recipe, flags win
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use seek_train::report::StepRecord;
use seek_train::sft::{self, Progress, SftConfig};

/// `seek train ...`
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(subcommand)]
    command: TrainCommand,
}

#[derive(Subcommand, Debug)]
enum TrainCommand {
    /// Supervised fine-tuning on JSONL (TRL's formats: messages, prompt/completion, text); loss on the answer.
    Sft(Box<SftArgs>),
    /// R1's distillation: sample K traces per verifiable problem from a teacher, keep those the verifier accepts, SFT the student on them.
    Distill(Box<DistillArgs>),
    /// Merge a LoRA adapter (or take a full fine-tune) into a GGUF file for llama.cpp / Ollama, or a merged Hugging Face folder.
    Export(ExportArgs),
    /// Draw report.html from a run's metrics.jsonl (sft or grpo; a run in progress too).
    Report(ReportArgs),
    /// R1-Zero-style reinforcement learning (GRPO, TRL's options) with rule-based rewards; LoRA.
    Grpo(Box<GrpoArgs>),
}

/// `seek train report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The run's output folder (holding metrics.jsonl).
    #[arg(long = "output_dir", visible_alias = "output-dir")]
    output_dir: PathBuf,
}

fn report_cmd(a: ReportArgs) -> anyhow::Result<()> {
    let metrics = a.output_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&metrics)
        .with_context(|| format!("cannot read {}", metrics.display()))?;
    // A GRPO run logs rewards; an SFT run does not.
    let grpo = text
        .lines()
        .any(|l| l.contains("\"reward\"") || l.contains("\"eval_reward\""));
    let path = if grpo {
        seek_train::report::write_grpo_report(&a.output_dir, "seek train grpo", &[])?
    } else {
        seek_train::report::write_report(&a.output_dir, "seek train sft", &[])?
    };
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// `seek train grpo` (TRL's `GRPOConfig` names; unset options take TRL's defaults).
#[derive(Args, Debug)]
pub struct GrpoArgs {
    /// A recipe (YAML as TRL's recipes are written, or TOML) with the same keys
    /// (`learning_rate: 1.0e-5`, `reward_funcs: [accuracy_reward, think_format_reward]`); flags
    /// on the command line win.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The base model: a GGUF file or a Hugging Face folder (llama or qwen2 architecture).
    #[arg(
        long = "model_name_or_path",
        visible_alias = "model-name-or-path",
        alias = "model"
    )]
    model_name_or_path: String,
    /// JSONL of problems: `prompt` or `question`, and `solution` or `answer`.
    #[arg(
        long = "dataset_name",
        visible_alias = "dataset-name",
        alias = "dataset"
    )]
    dataset_name: String,
    /// Where the adapter and metrics.jsonl go.
    #[arg(
        long = "output_dir",
        visible_alias = "output-dir",
        default_value = "grpo-out"
    )]
    output_dir: String,
    /// Reward functions (TRL's registry names, plus tag_count_reward and repetition_penalty_reward).
    #[arg(long = "reward_funcs", visible_alias = "reward-funcs", num_args = 1.., default_values_t = vec!["accuracy_reward".to_string()])]
    reward_funcs: Vec<String>,
    /// One weight per reward function [1 each].
    #[arg(long = "reward_weights", visible_alias = "reward-weights", num_args = 1..)]
    reward_weights: Vec<f64>,
    /// Seconds an external reward (cmd:PROGRAM or an http(s) URL in --reward_funcs) may take per batch [60].
    #[arg(
        long = "reward_timeout",
        visible_alias = "reward-timeout",
        default_value_t = 60.0
    )]
    reward_timeout: f64,
    /// How a batch an external reward failed on is scored: skip (left out of the sum) or zero [skip].
    #[arg(
        long = "reward_on_error",
        visible_alias = "reward-on-error",
        default_value = "skip"
    )]
    reward_on_error: String,
    /// Completions per prompt (G) [8].
    #[arg(
        long = "num_generations",
        visible_alias = "num-generations",
        default_value_t = 8
    )]
    num_generations: usize,
    /// Completions per device batch [8].
    #[arg(
        long = "per_device_train_batch_size",
        visible_alias = "per-device-train-batch-size",
        default_value_t = 8
    )]
    per_device_train_batch_size: usize,
    /// Device batches per generation batch (one optimizer step each generation batch) [1].
    #[arg(
        long = "gradient_accumulation_steps",
        visible_alias = "gradient-accumulation-steps",
        default_value_t = 1
    )]
    gradient_accumulation_steps: usize,
    /// Prompts longer than this are skipped [512].
    #[arg(
        long = "max_prompt_length",
        visible_alias = "max-prompt-length",
        default_value_t = 512
    )]
    max_prompt_length: usize,
    /// Most tokens per completion [256].
    #[arg(
        long = "max_completion_length",
        visible_alias = "max-completion-length",
        default_value_t = 256
    )]
    max_completion_length: usize,
    /// Rollout temperature [1.0].
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Rollout nucleus sampling [1.0].
    #[arg(long = "top_p", visible_alias = "top-p", default_value_t = 1.0)]
    top_p: f32,
    /// grpo, bnpo, dr_grpo or dapo [dapo].
    #[arg(
        long = "loss_type",
        visible_alias = "loss-type",
        default_value = "dapo"
    )]
    loss_type: String,
    /// group, batch or none [group].
    #[arg(
        long = "scale_rewards",
        visible_alias = "scale-rewards",
        default_value = "group"
    )]
    scale_rewards: String,
    /// KL weight against the reference (the base model without the adapter) [0: no reference].
    #[arg(long, default_value_t = 0.0)]
    beta: f64,
    /// Optimizer passes over each generation batch (mu; the generation-time log-probs are kept for the ratio) [1].
    #[arg(
        long = "num_iterations",
        visible_alias = "num-iterations",
        default_value_t = 1
    )]
    num_iterations: usize,
    /// Device batches per generation batch [gradient_accumulation_steps].
    #[arg(long = "steps_per_generation", visible_alias = "steps-per-generation")]
    steps_per_generation: Option<usize>,
    /// Continue from a checkpoint-N folder, or `latest` in --output_dir.
    #[arg(
        long = "resume_from_checkpoint",
        visible_alias = "resume-from-checkpoint",
        num_args = 0..=1,
        default_missing_value = "latest"
    )]
    resume_from_checkpoint: Option<String>,
    /// Checkpoints kept (0: all) [0].
    #[arg(
        long = "save_total_limit",
        visible_alias = "save-total-limit",
        default_value_t = 0
    )]
    save_total_limit: usize,
    /// Lower clip of the ratio [0.2].
    #[arg(long, default_value_t = 0.2)]
    epsilon: f64,
    /// Upper clip (clip-higher) [epsilon].
    #[arg(long = "epsilon_high", visible_alias = "epsilon-high")]
    epsilon_high: Option<f64>,
    /// Leave cut completions out of the loss.
    #[arg(
        long = "mask_truncated_completions",
        visible_alias = "mask-truncated-completions"
    )]
    mask_truncated_completions: bool,
    /// Learning rate (constant) [1e-6].
    #[arg(
        long = "learning_rate",
        visible_alias = "learning-rate",
        default_value_t = 1e-6
    )]
    learning_rate: f64,
    /// Gradient norm clip [1.0].
    #[arg(
        long = "max_grad_norm",
        visible_alias = "max-grad-norm",
        default_value_t = 1.0
    )]
    max_grad_norm: f64,
    /// Optimizer steps [100].
    #[arg(long = "max_steps", visible_alias = "max-steps", default_value_t = 100)]
    max_steps: u64,
    /// Seed [42].
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Accepted for TRL's recipes: GRPO here always trains a LoRA adapter.
    #[arg(long = "use_peft", visible_alias = "use-peft")]
    use_peft: bool,
    /// LoRA rank [16].
    #[arg(long = "lora_r", visible_alias = "lora-r", default_value_t = 16)]
    lora_r: usize,
    /// LoRA alpha [32].
    #[arg(
        long = "lora_alpha",
        visible_alias = "lora-alpha",
        default_value_t = 32.0
    )]
    lora_alpha: f64,
    /// LoRA target modules [all-linear].
    #[arg(long = "lora_target_modules", visible_alias = "lora-target-modules", num_args = 1.., default_values_t = vec!["all-linear".to_string()])]
    lora_target_modules: Vec<String>,
    /// Write the adapter every N steps (0: at the end only).
    #[arg(long = "save_steps", visible_alias = "save-steps", default_value_t = 0)]
    save_steps: u64,
    /// Held-out problems (same format as --dataset_name), answered greedily before training,
    /// every --eval_steps and at the end; logged as eval_rewards/<name>/mean.
    #[arg(long = "eval_dataset", visible_alias = "eval-dataset")]
    eval_dataset: Option<String>,
    /// Evaluate every N steps (0: before and after training only).
    #[arg(long = "eval_steps", visible_alias = "eval-steps", default_value_t = 0)]
    eval_steps: u64,
}

/// For `seek train grpo --config FILE`: the recipe's keys become flags, placed before the
/// command line's own so that a flag given there wins (its key is then left out of the
/// recipe's). Other commands pass through unchanged.
pub fn recipe_argv(argv: Vec<String>) -> anyhow::Result<Vec<String>> {
    let is_grpo =
        argv.get(1).is_some_and(|a| a == "train") && argv.get(2).is_some_and(|a| a == "grpo");
    let Some(i) = argv
        .iter()
        .position(|a| a == "--config")
        .filter(|_| is_grpo)
    else {
        return Ok(argv);
    };
    let path = argv
        .get(i + 1)
        .with_context(|| "--config needs a recipe file")?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read --config {path}"))?;
    let entries = if path.ends_with(".toml") {
        toml_entries(&text).with_context(|| format!("--config {path}"))?
    } else {
        yaml_entries(&text).with_context(|| format!("--config {path}"))?
    };
    let given: Vec<String> = argv
        .iter()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a).replace('-', "_"))
        .collect();
    let mut out: Vec<String> = argv[..3].to_vec();
    for (key, values) in entries {
        if given.contains(&key.replace('-', "_")) {
            continue;
        }
        match values.as_slice() {
            [v] if v == "true" => out.push(format!("--{key}")),
            [v] if v == "false" => {}
            _ => {
                out.push(format!("--{key}"));
                out.extend(values);
            }
        }
    }
    out.extend(argv[3..].iter().cloned());
    Ok(out)
}

/// `key = value` pairs of a flat TOML table (arrays become several values).
fn toml_entries(text: &str) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let table: toml::Table = toml::from_str(text).context("not TOML")?;
    let scalar = |v: &toml::Value| -> anyhow::Result<String> {
        Ok(match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => bail!("{other:?} is not a number, text or true/false"),
        })
    };
    table
        .iter()
        .map(|(k, v)| {
            let vals = match v {
                toml::Value::Array(a) => a.iter().map(scalar).collect::<anyhow::Result<_>>()?,
                v => vec![scalar(v).with_context(|| k.to_string())?],
            };
            Ok((k.clone(), vals))
        })
        .collect()
}

/// The flat YAML of TRL's recipes: `key: value`, `key: [a, b]`, or `key:` followed by
/// `- item` lines; `#` comments. Nested maps are an error that says so.
fn yaml_entries(text: &str) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let unquote = |s: &str| s.trim().trim_matches('"').trim_matches('\'').to_string();
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = match raw.find(" #") {
            Some(i) => &raw[..i],
            None if raw.trim_start().starts_with('#') => "",
            None => raw,
        };
        if line.trim().is_empty() || line.trim() == "---" {
            continue;
        }
        if let Some(item) = line.trim_start().strip_prefix("- ") {
            let Some(last) = out.last_mut() else {
                bail!("line {}: a list item before any key", n + 1);
            };
            last.1.push(unquote(item));
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            bail!(
                "line {}: nested settings are not recipe keys; write each key at the top level",
                n + 1
            );
        }
        let Some((k, v)) = line.split_once(':') else {
            bail!("line {}: {line:?} is not `key: value`", n + 1);
        };
        let v = v.trim();
        let vals = if let Some(list) = v.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            list.split(',')
                .map(unquote)
                .filter(|s| !s.is_empty())
                .collect()
        } else if v.is_empty() {
            Vec::new()
        } else {
            vec![unquote(v)]
        };
        out.push((k.trim().to_string(), vals));
    }
    Ok(out)
}

fn grpo_cmd(a: GrpoArgs) -> anyhow::Result<()> {
    use seek_train::grpo::{LossType, ScaleRewards};
    let loss_type = LossType::parse(&a.loss_type).with_context(|| {
        format!(
            "--loss_type {}: use grpo, bnpo, dr_grpo or dapo",
            a.loss_type
        )
    })?;
    let scale_rewards = ScaleRewards::parse(&a.scale_rewards).with_context(|| {
        format!(
            "--scale_rewards {}: use group, batch or none",
            a.scale_rewards
        )
    })?;
    if !Path::new(&a.dataset_name).is_file() {
        bail!(
            "--dataset_name {}: no such file (a local JSONL of problems)",
            a.dataset_name
        );
    }
    let cfg = seek_train::grpo_run::GrpoConfig {
        model_name_or_path: a.model_name_or_path,
        dataset_name: a.dataset_name,
        output_dir: a.output_dir,
        reward_funcs: a.reward_funcs,
        reward_weights: (!a.reward_weights.is_empty()).then_some(a.reward_weights),
        reward_timeout_s: a.reward_timeout,
        reward_on_error: match a.reward_on_error.as_str() {
            "skip" => seek_eval::rewards::OnError::Skip,
            "zero" => seek_eval::rewards::OnError::Zero,
            other => bail!("--reward_on_error {other}: use skip or zero"),
        },
        num_generations: a.num_generations,
        per_device_train_batch_size: a.per_device_train_batch_size,
        gradient_accumulation_steps: a.gradient_accumulation_steps,
        max_prompt_length: a.max_prompt_length,
        max_completion_length: a.max_completion_length,
        temperature: a.temperature,
        top_p: a.top_p,
        loss_type,
        scale_rewards,
        beta: a.beta,
        num_iterations: a.num_iterations,
        steps_per_generation: a.steps_per_generation,
        epsilon: a.epsilon,
        epsilon_high: a.epsilon_high,
        mask_truncated_completions: a.mask_truncated_completions,
        learning_rate: a.learning_rate,
        max_grad_norm: a.max_grad_norm,
        max_steps: a.max_steps,
        seed: a.seed,
        lora_r: a.lora_r,
        lora_alpha: a.lora_alpha,
        lora_target_modules: a.lora_target_modules,
        quantized_base: true,
        save_steps: a.save_steps,
        micro_batch: a.per_device_train_batch_size.clamp(1, 4),
        eval_dataset: a.eval_dataset,
        eval_steps: a.eval_steps,
        resume_from_checkpoint: a.resume_from_checkpoint,
        save_total_limit: a.save_total_limit,
    };
    if let Some(e) = &cfg.eval_dataset {
        if !Path::new(e).is_file() {
            bail!("--eval_dataset {e}: no such file (a local JSONL of held-out problems)");
        }
    }
    eprintln!(
        "seek train grpo: {} with LoRA r={}, G={}, {} prompts per step",
        cfg.model_name_or_path,
        cfg.lora_r,
        cfg.num_generations,
        cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
            / cfg.num_generations.max(1)
    );
    let short = |k: &str| {
        k.trim_start_matches("eval_rewards/")
            .trim_start_matches("rewards/")
            .trim_end_matches("/mean")
            .to_string()
    };
    let max_steps = cfg.max_steps;
    let (bar, tty) = progress_bar(max_steps);
    let line = |msg: String| {
        if tty {
            bar.println(msg);
        } else {
            eprintln!("{msg}");
        }
    };
    let out = seek_train::grpo_run::run(&cfg, &crate::source::load_options(), |ev| {
        let r = match ev {
            seek_train::grpo_run::RunEvent::Step(r) => r,
            seek_train::grpo_run::RunEvent::RewardError(e) => {
                line(format!(
                    "reward error: {}: {} (first completion of the batch: {:?})",
                    e.func, e.message, e.input
                ));
                return;
            }
            seek_train::grpo_run::RunEvent::Eval(e) => {
                let per: Vec<String> = e
                    .per_reward
                    .iter()
                    .map(|(k, v)| format!("{}={v:.3}", short(k)))
                    .collect();
                line(format!(
                    "eval after step {}: reward {:.3}  {}  len {:.1}  clipped {:.2}  ({} problems, {:.0}s)",
                    e.step,
                    e.eval_reward,
                    per.join(" "),
                    e.mean_length,
                    e.clipped_ratio,
                    e.eval_samples,
                    e.eval_time_s
                ));
                return;
            }
        };
        let per: Vec<String> = r
            .per_reward
            .iter()
            .map(|(k, v)| format!("{}={v:.3}", short(k)))
            .collect();
        bar.set_position(r.step);
        bar.set_message(format!("reward {:.3}", r.reward));
        line(format!(
            "step {:>4}/{max_steps}  reward {:.3} (std {:.3})  {}  len {:.1}  gen {:.1}s score {:.2}s train {:.1}s  elapsed {:.0}s",
            r.step,
            r.reward,
            r.reward_std,
            per.join(" "),
            r.mean_length,
            r.time_generation_s,
            r.time_scoring_s,
            r.time_training_s,
            r.elapsed_s
        ));
    })?;
    bar.finish_and_clear();
    eprintln!(
        "done: adapter, metrics.jsonl and report.html in {}",
        out.display()
    );
    Ok(())
}

/// `seek train export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The base model the adapter or fine-tune was trained from (a GGUF file for --gguf).
    #[arg(long)]
    base: String,
    /// A LoRA adapter folder to merge into the base.
    #[arg(long, conflicts_with = "weights")]
    lora: Option<PathBuf>,
    /// Or a full fine-tune's output folder (model.safetensors).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Write a GGUF file here (metadata and tokenizer copied from --base, which must be GGUF).
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Element type of the GGUF matrices: f16 or f32.
    #[arg(long, default_value = "f16")]
    outtype: String,
    /// Write a merged Hugging Face folder here (model.safetensors, config.json, tokenizer).
    #[arg(long = "merged_dir", visible_alias = "merged-dir")]
    merged_dir: Option<PathBuf>,
}

/// `seek train distill`: teacher sampling with rejection, then `sft` of the student
/// (`--model_name_or_path`) on `OUTPUT_DIR/distill.jsonl` into `OUTPUT_DIR/student`.
#[derive(Args, Debug)]
pub struct DistillArgs {
    /// The teacher: a local GGUF file or Hugging Face folder, run by Seek's engine.
    #[arg(long, conflicts_with = "teacher_url")]
    teacher: Option<String>,
    /// Or an OpenAI-compatible endpoint (e.g. http://10.0.0.5:8000/v1); key from $SEEK_TEACHER_API_KEY.
    #[arg(long = "teacher_url", visible_alias = "teacher-url")]
    teacher_url: Option<String>,
    /// The `model` field sent to --teacher_url.
    #[arg(
        long = "teacher_model",
        visible_alias = "teacher-model",
        default_value = "default"
    )]
    teacher_model: String,
    /// Verifiable problems: gsm8k, math500, or JSONL files with question and answer (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    problems: Vec<String>,
    /// At most this many problems (a seeded sample, as `seek eval --limit`).
    #[arg(long = "max_problems", visible_alias = "max-problems")]
    max_problems: Option<usize>,
    /// Keep out the problems `seek eval reliability --limit N --seed S` evaluates (a held-out set).
    #[arg(long = "exclude_eval_limit", visible_alias = "exclude-eval-limit")]
    exclude_eval_limit: Option<usize>,
    /// The --seed of that held-out sample.
    #[arg(
        long = "exclude_eval_seed",
        visible_alias = "exclude-eval-seed",
        default_value_t = 0
    )]
    exclude_eval_seed: u64,
    /// Traces sampled per problem.
    #[arg(
        long = "num_generations",
        visible_alias = "num-generations",
        default_value_t = 4
    )]
    num_generations: usize,
    /// Most new tokens per trace.
    #[arg(
        long = "max_completion_length",
        visible_alias = "max-completion-length",
        default_value_t = 1024
    )]
    max_completion_length: usize,
    /// Teacher sampling temperature.
    #[arg(long, default_value_t = 0.6)]
    temperature: f32,
    /// Appended to every question (default: DeepSeek's "reason step by step ... \\boxed{}").
    #[arg(long)]
    instruction: Option<String>,
    /// Teacher requests in flight (a local engine batches them).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Only sample and filter; no SFT.
    #[arg(long = "generate_only", visible_alias = "generate-only")]
    generate_only: bool,
    /// The student and its SFT settings (TRL flags, as `seek train sft`).
    #[command(flatten)]
    sft: SftArgs,
}

/// TRL's `SFTConfig` / `ModelConfig` flags, spelled with underscores as TRL spells them
/// (hyphens work too). Unset flags take the recipe's value, then TRL's default.
#[derive(Args, Debug, Default)]
pub struct SftArgs {
    /// A TOML recipe with the same keys (`learning_rate = 2e-4`); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The model: a GGUF file or a Hugging Face folder.
    #[arg(
        long = "model_name_or_path",
        visible_alias = "model-name-or-path",
        alias = "model"
    )]
    model_name_or_path: Option<String>,
    /// Training data: a JSONL file.
    #[arg(
        long = "dataset_name",
        visible_alias = "dataset-name",
        alias = "dataset"
    )]
    dataset_name: Option<String>,
    /// Where checkpoints, metrics.jsonl, report.html and the result go.
    #[arg(long = "output_dir", visible_alias = "output-dir")]
    output_dir: Option<String>,
    /// Peak learning rate [TRL default 2e-5].
    #[arg(long = "learning_rate", visible_alias = "learning-rate")]
    learning_rate: Option<f64>,
    /// Epochs when --max_steps is not set [3].
    #[arg(long = "num_train_epochs", visible_alias = "num-train-epochs")]
    num_train_epochs: Option<f64>,
    /// Optimizer steps (overrides epochs).
    #[arg(
        long = "max_steps",
        visible_alias = "max-steps",
        allow_negative_numbers = true
    )]
    max_steps: Option<i64>,
    /// Examples per micro-batch [8].
    #[arg(
        long = "per_device_train_batch_size",
        visible_alias = "per-device-train-batch-size"
    )]
    per_device_train_batch_size: Option<usize>,
    /// Micro-batches per optimizer step [1].
    #[arg(
        long = "gradient_accumulation_steps",
        visible_alias = "gradient-accumulation-steps"
    )]
    gradient_accumulation_steps: Option<usize>,
    /// Longest example in tokens [1024].
    #[arg(long = "max_length", visible_alias = "max-length")]
    max_length: Option<usize>,
    /// What to do with longer examples: drop (counted) or truncate [drop].
    #[arg(long)]
    overlong: Option<String>,
    /// Pack several examples per row (attention kept within each).
    #[arg(long)]
    packing: bool,
    /// Learn the prompt tokens too (TRL's completion_only_loss=False).
    #[arg(
        long = "completion_only_loss",
        visible_alias = "completion-only-loss",
        value_name = "BOOL"
    )]
    completion_only_loss: Option<bool>,
    /// TRL's name for the same switch on conversational data.
    #[arg(
        long = "assistant_only_loss",
        visible_alias = "assistant-only-loss",
        value_name = "BOOL"
    )]
    assistant_only_loss: Option<bool>,
    /// linear, cosine, constant, constant_with_warmup [linear].
    #[arg(long = "lr_scheduler_type", visible_alias = "lr-scheduler-type")]
    lr_scheduler_type: Option<String>,
    /// Warmup as a fraction of the steps [0].
    #[arg(long = "warmup_ratio", visible_alias = "warmup-ratio")]
    warmup_ratio: Option<f64>,
    /// Warmup steps (wins over the ratio).
    #[arg(long = "warmup_steps", visible_alias = "warmup-steps")]
    warmup_steps: Option<u64>,
    /// AdamW weight decay [0].
    #[arg(long = "weight_decay", visible_alias = "weight-decay")]
    weight_decay: Option<f64>,
    /// AdamW beta1 [0.9].
    #[arg(long = "adam_beta1", visible_alias = "adam-beta1")]
    adam_beta1: Option<f64>,
    /// AdamW beta2 [0.999].
    #[arg(long = "adam_beta2", visible_alias = "adam-beta2")]
    adam_beta2: Option<f64>,
    /// AdamW epsilon [1e-8].
    #[arg(long = "adam_epsilon", visible_alias = "adam-epsilon")]
    adam_epsilon: Option<f64>,
    /// Gradient clipping by global norm; 0 turns it off [1.0].
    #[arg(long = "max_grad_norm", visible_alias = "max-grad-norm")]
    max_grad_norm: Option<f64>,
    /// Steps between log lines [10].
    #[arg(long = "logging_steps", visible_alias = "logging-steps")]
    logging_steps: Option<u64>,
    /// Steps between checkpoints [500].
    #[arg(long = "save_steps", visible_alias = "save-steps")]
    save_steps: Option<u64>,
    /// Checkpoints to keep (oldest deleted) [all].
    #[arg(long = "save_total_limit", visible_alias = "save-total-limit")]
    save_total_limit: Option<usize>,
    /// Seed of data order, LoRA initialisation and dropout [42].
    #[arg(long)]
    seed: Option<u64>,
    /// Train LoRA adapters instead of every weight.
    #[arg(long = "use_peft", visible_alias = "use-peft")]
    use_peft: bool,
    /// LoRA rank [16].
    #[arg(long = "lora_r", visible_alias = "lora-r")]
    lora_r: Option<usize>,
    /// LoRA alpha [32].
    #[arg(long = "lora_alpha", visible_alias = "lora-alpha")]
    lora_alpha: Option<f64>,
    /// LoRA dropout [0.05].
    #[arg(long = "lora_dropout", visible_alias = "lora-dropout")]
    lora_dropout: Option<f64>,
    /// Modules to adapt, space- or comma-separated (q_proj v_proj, all-linear) [q_proj v_proj].
    #[arg(long = "lora_target_modules", visible_alias = "lora-target-modules", num_args = 1.., value_delimiter = ',')]
    lora_target_modules: Option<Vec<String>>,
    /// rsLoRA scaling (alpha / sqrt(r)).
    #[arg(long = "use_rslora", visible_alias = "use-rslora")]
    use_rslora: bool,
    /// LoRA on a quantized GGUF base kept in its encoding (QLoRA-style; TRL's --load_in_4bit and --load_in_8bit mean this).
    #[arg(
        long = "quantized_base",
        visible_alias = "quantized-base",
        alias = "load_in_4bit",
        alias = "load_in_8bit"
    )]
    quantized_base: bool,
    /// Recompute each layer in the backward instead of keeping its activations (less memory, ~1/3 more compute).
    #[arg(
        long = "gradient_checkpointing",
        visible_alias = "gradient-checkpointing"
    )]
    gradient_checkpointing: bool,
    /// Continue from a checkpoint-N folder, or `latest` in --output_dir.
    #[arg(long = "resume_from_checkpoint", visible_alias = "resume-from-checkpoint", num_args = 0..=1, default_missing_value = "latest")]
    resume_from_checkpoint: Option<String>,
}

/// Runs `seek train`.
pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    keep_freed_memory();
    match args.command {
        TrainCommand::Sft(a) => sft_cmd(*a),
        TrainCommand::Distill(a) => distill_cmd(*a),
        TrainCommand::Export(a) => export_cmd(a),
        TrainCommand::Report(a) => report_cmd(a),
        TrainCommand::Grpo(a) => grpo_cmd(*a),
    }
}

/// The recipe (if any) with the flags laid over it.
fn sft_config(a: SftArgs) -> anyhow::Result<SftConfig> {
    let mut c = match &a.config {
        Some(p) => read_recipe(p)?,
        None => SftConfig::default(),
    };
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = a.$f { c.$f = v; } )* };
    }
    set!(
        model_name_or_path,
        dataset_name,
        output_dir,
        learning_rate,
        num_train_epochs,
        max_steps,
        per_device_train_batch_size,
        gradient_accumulation_steps,
        max_length,
        completion_only_loss,
        warmup_ratio,
        warmup_steps,
        weight_decay,
        adam_beta1,
        adam_beta2,
        adam_epsilon,
        max_grad_norm,
        logging_steps,
        save_steps,
        save_total_limit,
        seed,
        lora_r,
        lora_alpha,
        lora_dropout,
        lora_target_modules
    );
    if let Some(v) = a.assistant_only_loss {
        c.completion_only_loss = v;
    }
    if let Some(s) = a.overlong {
        c.overlong = s.parse().map_err(|e| anyhow::anyhow!("--overlong {e}"))?;
    }
    if let Some(s) = a.lr_scheduler_type {
        c.lr_scheduler_type = s.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    }
    c.packing |= a.packing;
    c.use_peft |= a.use_peft;
    c.use_rslora |= a.use_rslora;
    c.quantized_base |= a.quantized_base;
    c.gradient_checkpointing |= a.gradient_checkpointing;
    if a.resume_from_checkpoint.is_some() {
        c.resume_from_checkpoint = a.resume_from_checkpoint;
    }
    // `--lora_target_modules q_proj,v_proj` and `q_proj v_proj` both give the list.
    c.lora_target_modules = c
        .lora_target_modules
        .iter()
        .flat_map(|s| s.split([',', ' ']))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    Ok(c)
}

fn read_recipe(path: &Path) -> anyhow::Result<SftConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// A training progress bar of `len` steps, drawn only on a terminal; and whether stderr is one
/// (log lines then go above the bar, otherwise they are printed plainly).
fn progress_bar(len: u64) -> (ProgressBar, bool) {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .expect("valid template"),
    );
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if !tty {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    (bar, tty)
}

struct Bar {
    bar: ProgressBar,
    logging_steps: u64,
    /// stderr is a terminal: lines go above the bar; otherwise they are printed plainly.
    tty: bool,
}

impl Bar {
    fn line(&self, msg: String) {
        if self.tty {
            self.bar.println(msg);
        } else {
            eprintln!("{msg}");
        }
    }
}

impl Progress for Bar {
    fn step(&mut self, r: &StepRecord, max_steps: u64) {
        self.bar.set_length(max_steps);
        self.bar.set_position(r.step);
        self.bar.set_message(format!(
            "loss {:.4} lr {:.2e} grad {:.2} {:.0} tok/s",
            r.loss, r.learning_rate, r.grad_norm, r.tokens_per_second
        ));
        if self.logging_steps > 0 && r.step.is_multiple_of(self.logging_steps) {
            self.line(format!(
                "step {:>5}/{max_steps}  epoch {:.2}  loss {:.4}  lr {:.3e}  grad_norm {:.3}  {:.0} tok/s  elapsed {:.0}s",
                r.step, r.epoch, r.loss, r.learning_rate, r.grad_norm, r.tokens_per_second, r.elapsed_s
            ));
        }
    }

    fn note(&mut self, msg: &str) {
        self.line(msg.to_string());
    }

    fn should_stop(&mut self) -> bool {
        STOP.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Set by the first Ctrl-C: the run stops after the current step with a checkpoint.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Ctrl-C once: finish the step, write a checkpoint, stop (resume with
/// --resume_from_checkpoint). Twice: quit at once.
fn stop_on_ctrl_c() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                STOP.store(true, std::sync::atomic::Ordering::Relaxed);
                eprintln!(
                    "\nstopping after this step with a checkpoint (Ctrl-C again quits at once)"
                );
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
    });
}

fn distill_cmd(a: DistillArgs) -> anyhow::Result<()> {
    use seek_train::distill;
    let out = PathBuf::from(
        a.sft
            .output_dir
            .clone()
            .context("--output_dir is required")?,
    );
    let exclude = match a.exclude_eval_limit {
        Some(n) => distill::eval_sample_ids(&a.problems, n, a.exclude_eval_seed)?,
        None => Default::default(),
    };
    let mut problems = distill::problems(&a.problems, &exclude)?;
    if let Some(n) = a.max_problems {
        problems = seek_eval::reliability::seeded_sample(problems, |p| p.id.clone(), 0, Some(n));
    }
    if problems.is_empty() {
        bail!("no problems left to sample (check --problems and --exclude_eval_limit)");
    }
    let (teacher, _engine): (Box<dyn seek_eval::target::Target>, _) =
        match (&a.teacher, &a.teacher_url) {
            (Some(path), _) => {
                let (engine, tok) = crate::eval::local(path, "teacher", None)?;
                (
                    Box::new(seek_eval::target::LocalTarget {
                        label: crate::serve::default_name(path),
                        engine: engine.clone(),
                        tokenizer: tok,
                        policy: None,
                        grammars: Default::default(),
                    }),
                    Some(engine),
                )
            }
            (None, Some(url)) => (
                Box::new(seek_eval::target::UrlTarget::new(
                    url,
                    &a.teacher_model,
                    std::env::var("SEEK_TEACHER_API_KEY").ok(),
                )),
                None,
            ),
            (None, None) => bail!("give the teacher: --teacher PATH or --teacher_url URL"),
        };
    eprintln!(
        "seek train distill: {} problems x {} traces from {}{}",
        problems.len(),
        a.num_generations,
        teacher.name(),
        if exclude.is_empty() {
            String::new()
        } else {
            format!(" ({} held-out problems excluded)", exclude.len())
        }
    );
    let run = seek_eval::run::RunConfig {
        out: out.clone(),
        concurrency: a.concurrency.max(1),
        max_requests: None,
        max_tokens_total: None,
        max_cost_usd: None,
        prices_per_million: (0.55, 2.19),
        progress: true,
    };
    let opts = distill::DistillOptions {
        num_generations: a.num_generations,
        max_completion_length: a.max_completion_length,
        temperature: a.temperature,
        instruction: a
            .instruction
            .unwrap_or_else(|| seek_eval::reliability::MATH_PROMPT.to_string()),
    };
    let summary = distill::generate(teacher.as_ref(), &run, &problems, &opts)?;
    eprintln!(
        "kept {} of {} traces (rejection sampling); {} of {} problems have at least one; {} cut off at {} tokens; wrote {}",
        summary.accepted,
        summary.traces,
        summary.problems_solved,
        summary.problems,
        summary.cut_off,
        a.max_completion_length,
        summary.dataset.display()
    );
    let mut by_count = std::collections::BTreeMap::<usize, usize>::new();
    for (acc, _) in summary.per_problem.values() {
        *by_count.entry(*acc).or_default() += 1;
    }
    eprintln!(
        "problems by accepted traces: {}",
        by_count
            .iter()
            .map(|(k, n)| format!("{k}/{}: {n}", a.num_generations))
            .collect::<Vec<_>>()
            .join(", ")
    );
    drop(teacher);
    if a.generate_only {
        return Ok(());
    }
    if summary.accepted == 0 {
        bail!("the verifier accepted no trace: nothing to train the student on");
    }
    let mut sft = a.sft;
    sft.dataset_name = Some(summary.dataset.display().to_string());
    sft.output_dir = Some(out.join("student").display().to_string());
    sft_cmd(sft)
}

fn export_cmd(a: ExportArgs) -> anyhow::Result<()> {
    use seek_models::autograd::{Finetune, TrainableOptions};
    if a.gguf.is_none() && a.merged_dir.is_none() {
        bail!("say where to write: --gguf FILE and/or --merged_dir DIR");
    }
    let (finetune, adapter) = match (&a.lora, &a.weights) {
        (Some(dir), _) => {
            let (cfg, t) = seek_train::peft::read_adapter(dir)
                .with_context(|| format!("--lora {}", dir.display()))?;
            (Finetune::Lora(cfg), Some(t))
        }
        (None, Some(_)) => (Finetune::Full, None),
        (None, None) => bail!(
            "give what to export: --lora DIR (an adapter) or --weights DIR (a full fine-tune)"
        ),
    };
    let opts = TrainableOptions {
        finetune,
        seed: 0,
        quantized_base: false,
    };
    let (model, info, format) =
        seek_models::load_trainable(Path::new(&a.base), &crate::source::load_options(), &opts)?;
    if let Some(t) = &adapter {
        model.load_adapter(t)?;
    }
    if let Some(dir) = &a.weights {
        let p = dir.join("model.safetensors");
        let t = candle_core::safetensors::load(&p, &candle_core::Device::Cpu)
            .with_context(|| format!("reading {}", p.display()))?;
        model.load_state(&t.into_iter().collect())?;
    }
    let state = model.state_dict(true)?;
    if let Some(out) = &a.gguf {
        let seek_models::ModelFormat::Gguf(file) = &format else {
            bail!("--gguf needs a GGUF --base (its tokenizer and metadata are copied); for a Hugging Face base, write --merged_dir and convert it with llama.cpp's convert_hf_to_gguf.py");
        };
        let ty = a
            .outtype
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--outtype {e}"))?;
        seek_train::export::write_gguf(file, &state, ty, out)?;
        eprintln!(
            "wrote {} ({} tensors, {})",
            out.display(),
            state.len(),
            a.outtype
        );
    }
    if let Some(dir) = &a.merged_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let map: std::collections::HashMap<String, candle_core::Tensor> =
            state.into_iter().collect();
        candle_core::safetensors::save(&map, dir.join("model.safetensors"))?;
        let tok = seek_train::sft::tokenizer_for(&format)?;
        seek_train::sft::write_model_files_for(dir, &format, &model, &info, &tok)?;
        eprintln!("wrote {}", dir.display());
    }
    Ok(())
}

fn sft_cmd(a: SftArgs) -> anyhow::Result<()> {
    let cfg = sft_config(a)?;
    cfg.check()?;
    if !Path::new(&cfg.dataset_name).is_file() {
        bail!(
            "--dataset_name {}: no such file (Seek trains on local JSONL files; the Hugging Face Hub's datasets are not fetched)",
            cfg.dataset_name
        );
    }
    let setup = sft::setup(&cfg, &crate::source::load_options())?;
    let (bar, tty) = progress_bar(1);
    let mut progress = Bar {
        bar: bar.clone(),
        logging_steps: cfg.logging_steps,
        tty,
    };
    eprintln!(
        "seek train sft: {} ({}), {}",
        cfg.model_name_or_path,
        setup.info.architecture,
        if cfg.use_peft {
            "LoRA"
        } else {
            "full fine-tuning"
        }
    );
    stop_on_ctrl_c();
    let summary = sft::run(&cfg, &setup, &mut progress)?;
    bar.finish_and_clear();
    eprintln!(
        "done: {} steps, final loss {:.4}; {} examples used, {} dropped for length; wrote {} (report.html, metrics.jsonl)",
        summary.steps,
        summary.final_loss,
        summary.examples,
        summary.dropped_overlong,
        summary.output_dir.display()
    );
    Ok(())
}

/// A training step allocates and frees the same few hundred activation and gradient buffers
/// every time. glibc returns blocks above its mmap threshold (from 128 KiB) to the kernel on
/// free, so each step faulted in and zeroed every page again: measured, a third of a step went
/// to `clear_page` and to waiting for a thread that was faulting. Serving every block from the
/// heap (no mmap: the logits of a 512-token step are 100 MB, above glibc's largest threshold)
/// and never trimming it keeps the pages for the next step: after the first step a step takes
/// no page faults.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation policy; it is called before the
    // training threads start allocating.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_trl_yaml_recipe_becomes_flags_and_the_command_line_wins() {
        let dir = tempfile::tempdir().unwrap();
        let recipe = dir.path().join("grpo.yaml");
        std::fs::write(
            &recipe,
            "# open-r1 style\nmodel_name_or_path: Qwen/Qwen2.5-0.5B\nlearning_rate: 1.0e-06  # small\nreward_funcs:\n  - accuracy_reward\n  - think_format_reward\nreward_weights: [1.0, 0.5]\nmask_truncated_completions: true\nuse_peft: false\nmax_steps: 50\n",
        )
        .unwrap();
        let out = recipe_argv(argv(&[
            "seek",
            "train",
            "grpo",
            "--config",
            recipe.to_str().unwrap(),
            "--max-steps",
            "3",
        ]))
        .unwrap();
        assert_eq!(
            out,
            argv(&[
                "seek",
                "train",
                "grpo",
                "--model_name_or_path",
                "Qwen/Qwen2.5-0.5B",
                "--learning_rate",
                "1.0e-06",
                "--reward_funcs",
                "accuracy_reward",
                "think_format_reward",
                "--reward_weights",
                "1.0",
                "0.5",
                "--mask_truncated_completions",
                "--config",
                recipe.to_str().unwrap(),
                "--max-steps",
                "3",
            ])
        );
        // TOML works the same way; a nested YAML map is named as the problem.
        let toml = dir.path().join("grpo.toml");
        std::fs::write(&toml, "beta = 0.04\nreward_funcs = [\"accuracy_reward\"]\n").unwrap();
        let out = recipe_argv(argv(&[
            "seek",
            "train",
            "grpo",
            "--config",
            toml.to_str().unwrap(),
        ]))
        .unwrap();
        assert_eq!(
            &out[3..7],
            &argv(&["--beta", "0.04", "--reward_funcs", "accuracy_reward"])[..]
        );
        std::fs::write(&recipe, "peft:\n  r: 16\n").unwrap();
        let e = recipe_argv(argv(&[
            "seek",
            "train",
            "grpo",
            "--config",
            recipe.to_str().unwrap(),
        ]))
        .unwrap_err();
        assert!(format!("{e:#}").contains("nested settings"), "{e:#}");
        // Other commands pass through.
        let other = argv(&["seek", "run", "--config", "x"]);
        assert_eq!(recipe_argv(other.clone()).unwrap(), other);
    }
}
