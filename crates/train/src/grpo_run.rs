//! `seek train grpo`: the R1-Zero loop on Seek's own engine and model code. Each step samples
//! `num_generations` completions for a batch of prompts through the serving engine (all of them
//! batched, the policy's current LoRA applied), scores them with rule-based rewards
//! (`seek_eval::rewards`), and takes one policy step ([`crate::grpo::policy_step`]).
//!
//! Design decision: rollouts run on the inference model (quantized kernels, paged KV cache,
//! continuous batching), rebuilt from the base file and the adapter's current tensors at every
//! step; the update runs on the differentiable model. The two share weights only through the
//! adapter, so this loop trains LoRA adapters (`use_peft`).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use seek_engine::chat::{render_chat, render_raw, RenderedPrompt};
use seek_engine::sequence::SequenceParams;
use seek_engine::serve::{EngineConfig, EngineHandle, ServeEvent, ServeRequest};
use seek_eval::rewards::{RewardSet, Sample};
use seek_models::autograd::{Finetune, LoraConfig, TrainableOptions};
use seek_models::LoadOptions;
use seek_types::{ChatMessage, FinishReason, SamplingParams};
use serde::Serialize;

use crate::grpo::{
    logps_of, prepare, update, Group, GrpoLossConfig, LossType, ScaleRewards, StepConfig,
};
use crate::optim::{AdamW, AdamWConfig};
use crate::{Result, TrainError};

/// A GRPO run's settings, under TRL's `GRPOConfig` names.
#[derive(Debug, Clone)]
pub struct GrpoConfig {
    /// The base model (a GGUF file or a Hugging Face folder).
    pub model_name_or_path: String,
    /// JSONL of problems: `prompt` (text or messages) or `question`, and `solution` (TRL's
    /// column) or `answer`.
    pub dataset_name: String,
    /// Where the adapter and `metrics.jsonl` go.
    pub output_dir: String,
    /// Reward functions (see `seek_eval::rewards::Reward::parse`).
    pub reward_funcs: Vec<String>,
    /// One weight per reward function.
    pub reward_weights: Option<Vec<f64>>,
    /// Seconds an external reward may take per batch.
    pub reward_timeout_s: f64,
    /// How a batch an external reward failed on is scored.
    pub reward_on_error: seek_eval::rewards::OnError,
    /// G: completions per prompt.
    pub num_generations: usize,
    /// Completions per device batch (the generation batch is this times
    /// `gradient_accumulation_steps`, i.e. that many / G prompts per step).
    pub per_device_train_batch_size: usize,
    /// See `per_device_train_batch_size`.
    pub gradient_accumulation_steps: usize,
    /// Prompts longer than this (tokens) are left out.
    pub max_prompt_length: usize,
    /// Most tokens per completion.
    pub max_completion_length: usize,
    /// Sampling temperature of the rollouts.
    pub temperature: f32,
    /// Nucleus sampling of the rollouts.
    pub top_p: f32,
    /// `loss_type`.
    pub loss_type: LossType,
    /// `scale_rewards`.
    pub scale_rewards: ScaleRewards,
    /// `beta`: weight of the k3 KL against the reference (the base without the adapter; no
    /// second model is kept). 0 skips the reference's forward.
    pub beta: f64,
    /// `num_iterations` (mu): optimizer passes over each generation batch, the log-probs at
    /// generation time kept for the ratio.
    pub num_iterations: usize,
    /// `steps_per_generation`: the generation batch is this many device batches (default:
    /// `gradient_accumulation_steps`).
    pub steps_per_generation: Option<usize>,
    /// `epsilon`.
    pub epsilon: f64,
    /// `epsilon_high` (default: `epsilon`).
    pub epsilon_high: Option<f64>,
    /// `mask_truncated_completions`.
    pub mask_truncated_completions: bool,
    /// `learning_rate` (constant).
    pub learning_rate: f64,
    /// `max_grad_norm`.
    pub max_grad_norm: f64,
    /// `max_steps`.
    pub max_steps: u64,
    /// `seed`.
    pub seed: u64,
    /// LoRA rank.
    pub lora_r: usize,
    /// LoRA alpha.
    pub lora_alpha: f64,
    /// LoRA target modules.
    pub lora_target_modules: Vec<String>,
    /// Keep a GGUF base quantized (QLoRA-style).
    pub quantized_base: bool,
    /// Write the adapter every this many steps (0: only at the end).
    pub save_steps: u64,
    /// Completions per forward and backward of the policy step (memory).
    pub micro_batch: usize,
    /// Held-out problems (same format as the dataset), answered greedily before training, every
    /// `eval_steps` and at the end.
    pub eval_dataset: Option<String>,
    /// Evaluate every this many steps (0: only before and after).
    pub eval_steps: u64,
    /// A `checkpoint-N` folder to continue from, or `latest`.
    pub resume_from_checkpoint: Option<String>,
    /// Checkpoints kept (0: all).
    pub save_total_limit: usize,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        Self {
            model_name_or_path: String::new(),
            dataset_name: String::new(),
            output_dir: "grpo-out".into(),
            reward_funcs: vec!["accuracy_reward".into()],
            reward_weights: None,
            reward_timeout_s: 60.0,
            reward_on_error: seek_eval::rewards::OnError::Skip,
            num_generations: 8,
            per_device_train_batch_size: 8,
            gradient_accumulation_steps: 1,
            max_prompt_length: 512,
            max_completion_length: 256,
            temperature: 1.0,
            top_p: 1.0,
            loss_type: LossType::Dapo,
            scale_rewards: ScaleRewards::Group,
            beta: 0.0,
            num_iterations: 1,
            steps_per_generation: None,
            epsilon: 0.2,
            epsilon_high: None,
            mask_truncated_completions: false,
            learning_rate: 1e-6,
            max_grad_norm: 1.0,
            max_steps: 100,
            seed: 42,
            lora_r: 16,
            lora_alpha: 32.0,
            lora_target_modules: vec!["all-linear".into()],
            quantized_base: true,
            save_steps: 0,
            micro_batch: 4,
            eval_dataset: None,
            eval_steps: 0,
            resume_from_checkpoint: None,
            save_total_limit: 0,
        }
    }
}

/// How a problem's prompt reaches the model (TRL's dataset formats).
#[derive(Debug, Clone)]
enum PromptSpec {
    /// `prompt` as text: sent as it is, no chat template (TRL's "standard" format; the
    /// R1-Zero template ends in `<think>`).
    Raw(String),
    /// `prompt` as messages, or `question`: through the model's chat template.
    Chat(Vec<ChatMessage>),
}

/// One problem.
#[derive(Debug, Clone)]
struct Problem {
    prompt: PromptSpec,
    solution: Option<String>,
    /// The whole row, for rewards that read other columns (Countdown's `nums`, `target`).
    row: serde_json::Value,
}

fn render(tokenizer: &seek_tokenizer::Tokenizer, p: &Problem) -> Result<RenderedPrompt> {
    match &p.prompt {
        PromptSpec::Raw(text) => {
            let mut r = render_raw(tokenizer, text)
                .map_err(|e| TrainError::Config(format!("cannot encode a prompt: {e}")))?;
            r.starts_in_reasoning = text.trim_end().ends_with("<think>");
            Ok(r)
        }
        PromptSpec::Chat(messages) => render_chat(tokenizer, messages)
            .map_err(|e| TrainError::Config(format!("cannot render a prompt: {e}"))),
    }
}

fn read_problems(path: &Path) -> Result<Vec<Problem>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TrainError::Config(format!("cannot read {}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            TrainError::Config(format!("{}:{}: not JSON: {e}", path.display(), i + 1))
        })?;
        let prompt = match (&v["prompt"], &v["question"]) {
            (serde_json::Value::String(p), _) => PromptSpec::Raw(p.clone()),
            (serde_json::Value::Array(ms), _) => PromptSpec::Chat(
                ms.iter()
                    .map(|m| {
                        ChatMessage::new(
                            m["role"].as_str().unwrap_or("user"),
                            m["content"].as_str().unwrap_or(""),
                        )
                    })
                    .collect(),
            ),
            (_, serde_json::Value::String(q)) => {
                PromptSpec::Chat(vec![ChatMessage::user(q.clone())])
            }
            _ => {
                return Err(TrainError::Config(format!(
                    "{}:{}: a row needs `prompt` (text or messages) or `question`",
                    path.display(),
                    i + 1
                )))
            }
        };
        let solution = v["solution"]
            .as_str()
            .or(v["answer"].as_str())
            .map(str::to_string)
            .or_else(|| v["answer"].as_f64().map(|x| x.to_string()));
        out.push(Problem {
            prompt,
            solution,
            row: v,
        });
    }
    if out.is_empty() {
        return Err(TrainError::Config(format!(
            "{} has no problems",
            path.display()
        )));
    }
    Ok(out)
}

/// One logged step (TRL's metric names).
#[derive(Debug, Clone, Serialize)]
pub struct GrpoStepRecord {
    /// 1-based.
    pub step: u64,
    /// The objective.
    pub loss: f64,
    /// Mean total reward.
    pub reward: f64,
    /// Mean of the groups' reward standard deviations.
    pub reward_std: f64,
    /// Per reward function: its mean (`rewards/<name>/mean`).
    #[serde(flatten)]
    pub per_reward: BTreeMap<String, f64>,
    /// Share of completions in all-equal groups.
    pub frac_reward_zero_std: f64,
    /// `completions/mean_length`.
    #[serde(rename = "completions/mean_length")]
    pub mean_length: f64,
    /// `completions/clipped_ratio`.
    #[serde(rename = "completions/clipped_ratio")]
    pub clipped_ratio: f64,
    /// `clip_ratio/region_mean`.
    #[serde(rename = "clip_ratio/region_mean")]
    pub clip_ratio_region_mean: f64,
    /// `clip_ratio/low_mean`.
    #[serde(rename = "clip_ratio/low_mean")]
    pub clip_ratio_low_mean: f64,
    /// `clip_ratio/high_mean`.
    #[serde(rename = "clip_ratio/high_mean")]
    pub clip_ratio_high_mean: f64,
    /// Mean k3 KL to the reference (beta > 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl: Option<f64>,
    /// `learning_rate`.
    pub learning_rate: f64,
    /// Seconds since the run (or its resumption) started.
    pub elapsed_s: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Seconds generating the completions (engine start included).
    pub time_generation_s: f64,
    /// Of which: loading the base with the adapter's current tensors and starting the engine.
    pub time_engine_start_s: f64,
    /// Seconds scoring them.
    pub time_scoring_s: f64,
    /// Seconds in the policy step.
    pub time_training_s: f64,
    /// Completion tokens generated per second.
    pub generation_tokens_per_s: f64,
    /// A sampled completion and its reward, to read along the curves.
    pub sample: String,
    /// External reward calls that failed on this step's batch.
    pub reward_errors: usize,
}

/// A greedy pass over the held-out problems (logged as TRL logs evaluation: `eval_` names).
#[derive(Debug, Clone, Serialize)]
pub struct EvalRecord {
    /// Optimizer steps taken before it (0: the base model).
    pub step: u64,
    /// Mean total reward.
    pub eval_reward: f64,
    /// Per reward function: its mean (`eval_rewards/<name>/mean`).
    #[serde(flatten)]
    pub per_reward: BTreeMap<String, f64>,
    /// Problems answered.
    pub eval_samples: usize,
    /// `eval_completions/mean_length`.
    #[serde(rename = "eval_completions/mean_length")]
    pub mean_length: f64,
    /// `eval_completions/clipped_ratio`.
    #[serde(rename = "eval_completions/clipped_ratio")]
    pub clipped_ratio: f64,
    /// Seconds it took.
    pub eval_time_s: f64,
    /// The first problem's completion.
    pub eval_sample: String,
    /// External reward calls that failed.
    pub eval_reward_errors: usize,
}

/// What the run reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum RunEvent<'a> {
    /// An optimizer step.
    Step(&'a GrpoStepRecord),
    /// A held-out evaluation.
    Eval(&'a EvalRecord),
    /// An external reward failed on a batch (scored as `reward_on_error` says).
    RewardError(&'a seek_eval::rewards::RewardError),
}

/// One finished completion.
struct Rollout {
    ids: Vec<u32>,
    text: String,
    truncated: bool,
}

/// What the rewards see of one completion of `p`.
fn sample_of<'a>(p: &'a Problem, r: &RenderedPrompt, out: &'a Rollout) -> Sample<'a> {
    Sample {
        completion: &out.text,
        solution: p.solution.as_deref(),
        completion_tokens: Some(out.ids.len()),
        prompt_opens_think: r.starts_in_reasoning,
        row: Some(&p.row),
    }
}

/// Generates `per_prompt` completions for each prompt through `engine` (all submitted at
/// once, so the engine batches them), in prompt order.
fn rollouts(
    engine: &EngineHandle,
    prompts: &[&RenderedPrompt],
    per_prompt: usize,
    max_tokens: usize,
    eos: Option<u32>,
    sampling: impl Fn(usize) -> SamplingParams,
) -> Result<Vec<Rollout>> {
    let mut receivers = Vec::with_capacity(prompts.len() * per_prompt);
    for (k, r) in prompts.iter().enumerate() {
        for j in 0..per_prompt {
            let (tx, rx) = mpsc::channel::<ServeEvent>();
            let req = ServeRequest {
                prompt: r.ids.clone(),
                params: SequenceParams {
                    sampling: sampling(k * per_prompt + j),
                    max_tokens,
                    starts_in_reasoning: r.starts_in_reasoning,
                    split_reasoning: false,
                    ..SequenceParams::default()
                },
                logprobs: None,
            };
            engine
                .submit(req, Box::new(move |ev| tx.send(ev).is_ok()))
                .map_err(|e| TrainError::Config(format!("rollout refused: {e}")))?;
            receivers.push(rx);
        }
    }
    let mut done = Vec::with_capacity(receivers.len());
    for rx in receivers {
        let (mut ids, mut text, mut truncated) = (Vec::new(), String::new(), false);
        for ev in rx.iter() {
            match ev {
                ServeEvent::Delta { delta, token, .. } => {
                    text.push_str(&delta.reasoning);
                    text.push_str(&delta.content);
                    ids.extend(token);
                }
                ServeEvent::Finished { finish_reason, .. } => {
                    truncated = finish_reason == FinishReason::Length;
                    if finish_reason == FinishReason::Stop {
                        ids.extend(eos);
                    }
                    break;
                }
                ServeEvent::Failed { message } => {
                    return Err(TrainError::Config(format!("a rollout failed: {message}")))
                }
                ServeEvent::Started { .. } => {}
            }
        }
        done.push(Rollout {
            ids,
            text,
            truncated,
        });
    }
    Ok(done)
}

/// The inference engine on the base model with the adapter as it is now.
fn start_engine(
    base: &seek_models::LoraBase,
    model: &seek_models::autograd::Trainable,
    scaling: f64,
    tokenizer: &Arc<seek_tokenizer::Tokenizer>,
    max_running: usize,
    max_queue: usize,
) -> Result<EngineHandle> {
    let adapter = seek_models::llama::LoraAdapter {
        scaling,
        tensors: model.adapter_state()?,
    };
    EngineHandle::start(
        base.with_adapter(&adapter)?,
        tokenizer.clone(),
        EngineConfig {
            max_running,
            max_queue,
            ..EngineConfig::default()
        },
    )
    .map_err(|e| TrainError::Config(e.to_string()))
}

/// Answers every held-out problem greedily and scores it.
fn evaluate(
    engine: &EngineHandle,
    set: &[(Problem, RenderedPrompt)],
    rewards: &RewardSet,
    max_tokens: usize,
    eos: Option<u32>,
    step: u64,
) -> Result<EvalRecord> {
    let t0 = Instant::now();
    let prompts: Vec<&RenderedPrompt> = set.iter().map(|(_, r)| r).collect();
    let done = rollouts(engine, &prompts, 1, max_tokens, eos, |_| SamplingParams {
        temperature: 0.0,
        ..SamplingParams::default()
    })?;
    let mut sums: Vec<(f64, usize)> = vec![(0.0, 0); rewards.funcs.len()];
    let (mut total, mut scored_n) = (0.0, 0usize);
    let samples: Vec<Sample<'_>> = set
        .iter()
        .zip(&done)
        .map(|((p, r), out)| sample_of(p, r, out))
        .collect();
    let (all, errors) = rewards.score_batch(&samples);
    for scored in all {
        if scored.total.is_finite() {
            total += scored.total;
            scored_n += 1;
        }
        for (acc, v) in sums.iter_mut().zip(&scored.per_func) {
            if let Some(v) = v {
                acc.0 += v;
                acc.1 += 1;
            }
        }
    }
    let n = done.len().max(1) as f64;
    Ok(EvalRecord {
        step,
        eval_reward: total / scored_n.max(1) as f64,
        per_reward: rewards
            .funcs
            .iter()
            .zip(&sums)
            .map(|((f, _), (s, k))| {
                (
                    format!("eval_rewards/{}/mean", f.name()),
                    s / (*k).max(1) as f64,
                )
            })
            .collect(),
        eval_samples: done.len(),
        mean_length: done.iter().map(|d| d.ids.len() as f64).sum::<f64>() / n,
        clipped_ratio: done.iter().filter(|d| d.truncated).count() as f64 / n,
        eval_time_s: t0.elapsed().as_secs_f64(),
        eval_sample: done.first().map(|d| d.text.clone()).unwrap_or_default(),
        eval_reward_errors: errors.len(),
    })
}

fn write_line(metrics: &mut std::fs::File, rec: &impl Serialize) -> Result<()> {
    let line = serde_json::to_string(rec).map_err(|e| TrainError::Config(e.to_string()))?;
    writeln!(metrics, "{line}")
        .map_err(|e| TrainError::Config(format!("cannot write metrics: {e}")))
}

/// Runs GRPO as `cfg` says; `on_event` sees every record (each is also appended to
/// `output_dir/metrics.jsonl`).
pub fn run(
    cfg: &GrpoConfig,
    load: &LoadOptions,
    mut on_event: impl FnMut(RunEvent<'_>),
) -> Result<PathBuf> {
    let g = cfg.num_generations;
    let completions_per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps;
    if g < 2 || !completions_per_step.is_multiple_of(g) {
        return Err(TrainError::Config(format!(
            "num_generations ({g}) must be at least 2 and divide per_device_train_batch_size x gradient_accumulation_steps ({completions_per_step})"
        )));
    }
    let spg = cfg
        .steps_per_generation
        .unwrap_or(cfg.gradient_accumulation_steps)
        .max(1);
    let generation_batch = cfg.per_device_train_batch_size * spg;
    if !generation_batch.is_multiple_of(g) || !generation_batch.is_multiple_of(completions_per_step)
    {
        return Err(TrainError::Config(format!(
            "the generation batch (per_device_train_batch_size x steps_per_generation = {generation_batch}) must hold whole groups of num_generations ({g}) and whole optimizer steps ({completions_per_step} completions)"
        )));
    }
    if cfg.num_iterations == 0 {
        return Err(TrainError::Config(
            "num_iterations must be at least 1".into(),
        ));
    }
    if !(cfg.beta >= 0.0 && cfg.beta.is_finite()) {
        return Err(TrainError::Config(format!(
            "beta {} must be 0 or more",
            cfg.beta
        )));
    }
    let prompts_per_step = generation_batch / g;
    let mut rewards = RewardSet::new(
        &cfg.reward_funcs,
        cfg.reward_weights.as_deref(),
        cfg.max_completion_length,
    )
    .map_err(TrainError::Config)?;
    if !(cfg.reward_timeout_s > 0.0 && cfg.reward_timeout_s.is_finite()) {
        return Err(TrainError::Config(format!(
            "reward_timeout {} must be a positive number of seconds",
            cfg.reward_timeout_s
        )));
    }
    rewards.timeout = std::time::Duration::from_secs_f64(cfg.reward_timeout_s);
    rewards.on_error = cfg.reward_on_error;
    let problems = read_problems(Path::new(&cfg.dataset_name))?;
    let eval_problems = match &cfg.eval_dataset {
        Some(p) => read_problems(Path::new(p))?,
        None => Vec::new(),
    };
    let lora = LoraConfig {
        r: cfg.lora_r,
        alpha: cfg.lora_alpha,
        dropout: 0.0,
        target_modules: cfg.lora_target_modules.clone(),
        use_rslora: false,
    };
    let opts = TrainableOptions {
        finetune: Finetune::Lora(lora.clone()),
        seed: cfg.seed,
        quantized_base: cfg.quantized_base,
    };
    let base = Path::new(&cfg.model_name_or_path);
    let (model, _info, format) = seek_models::load_trainable(base, load, &opts)?;
    let tokenizer = Arc::new(crate::sft::tokenizer_for(&format)?);
    let eos = tokenizer.eos_token_ids().first().copied();
    // The inference model, read once; each generation batch applies the adapter as it is then.
    let infer_base = seek_models::LoraBase::load(base, load)?;
    let eval_set: Vec<(Problem, RenderedPrompt)> = eval_problems
        .into_iter()
        .map(|p| render(&tokenizer, &p).map(|r| (p, r)))
        .collect::<Result<_>>()?;
    let mut opt = AdamW::new(model.vars().to_vec(), AdamWConfig::default());
    let out = PathBuf::from(&cfg.output_dir);
    std::fs::create_dir_all(&out)
        .map_err(|e| TrainError::Config(format!("cannot create {}: {e}", out.display())))?;
    let metrics_path = out.join("metrics.jsonl");
    let step_cfg = StepConfig {
        loss: GrpoLossConfig {
            loss_type: cfg.loss_type,
            beta: cfg.beta,
            epsilon: cfg.epsilon,
            epsilon_high: cfg.epsilon_high.unwrap_or(cfg.epsilon),
            max_completion_length: cfg.max_completion_length,
            gradient_accumulation_steps: 1,
            steps_per_generation: 1,
        },
        scale_rewards: cfg.scale_rewards,
        mask_truncated_completions: cfg.mask_truncated_completions,
        max_grad_norm: cfg.max_grad_norm,
        learning_rate: cfg.learning_rate,
        micro_batch: cfg.micro_batch,
        gradient_checkpointing: true,
    };
    // Where the run is: resumed from a checkpoint, or fresh.
    let mut state = GrpoState {
        global_step: 0,
        epoch: 0,
        cursor: 0,
    };
    if let Some(from) = &cfg.resume_from_checkpoint {
        let dir = crate::sft::resolve_checkpoint(&out, from)?;
        let p = dir.join(STATE);
        let text = std::fs::read_to_string(&p)
            .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", p.display())))?;
        state = serde_json::from_str(&text)
            .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", p.display())))?;
        model.load_adapter(&crate::checkpoint::load_tensors(
            &dir.join(crate::peft::WEIGHTS),
        )?)?;
        crate::checkpoint::load_optimizer(&dir, &mut opt, state.global_step)?;
        keep_metrics_up_to(&metrics_path, state.global_step)?;
    } else if metrics_path.exists() {
        std::fs::remove_file(&metrics_path).map_err(|e| {
            TrainError::Config(format!("cannot replace {}: {e}", metrics_path.display()))
        })?;
    }
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| TrainError::Config(format!("cannot write {}: {e}", metrics_path.display())))?;
    // The epoch's order is a function of (seed, epoch), so a resumed run draws the same prompts.
    let order_of = |epoch: u64| {
        let mut order: Vec<usize> = (0..problems.len()).collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
            cfg.seed ^ epoch.wrapping_mul(0x9E37_79B9),
        ));
        order
    };
    let mut order = order_of(state.epoch);
    let scaling = lora.scaling();
    let max_running = generation_batch.max(eval_set.len().min(64)).min(64);
    let max_queue = generation_batch.max(eval_set.len()) + 8;
    let mut last_eval: Option<u64> = None;
    let eval_due = |step: u64, last: Option<u64>| {
        !eval_set.is_empty()
            && last != Some(step)
            && (step == 0
                || step >= cfg.max_steps
                || (cfg.eval_steps > 0
                    && last.is_none_or(|l| step / cfg.eval_steps > l / cfg.eval_steps)))
    };
    let started = Instant::now();
    while state.global_step < cfg.max_steps {
        // The generation batch's prompts.
        let mut picked: Vec<(&Problem, RenderedPrompt)> = Vec::with_capacity(prompts_per_step);
        while picked.len() < prompts_per_step {
            if state.cursor >= order.len() {
                state.epoch += 1;
                state.cursor = 0;
                order = order_of(state.epoch);
            }
            let p = &problems[order[state.cursor]];
            state.cursor += 1;
            let rendered = render(&tokenizer, p)?;
            if rendered.ids.len() <= cfg.max_prompt_length {
                picked.push((p, rendered));
            }
        }
        // Rollouts through the engine, with the adapter as it is now.
        let t0 = Instant::now();
        let engine = start_engine(
            &infer_base,
            &model,
            scaling,
            &tokenizer,
            max_running,
            max_queue,
        )?;
        let engine_start_s = t0.elapsed().as_secs_f64();
        if eval_due(state.global_step, last_eval) {
            let rec = evaluate(
                &engine,
                &eval_set,
                &rewards,
                cfg.max_completion_length,
                eos,
                state.global_step,
            )?;
            write_line(&mut metrics, &rec)?;
            on_event(RunEvent::Eval(&rec));
            last_eval = Some(state.global_step);
        }
        let t_gen = Instant::now();
        let prompts: Vec<&RenderedPrompt> = picked.iter().map(|(_, r)| r).collect();
        let gen_index = state.global_step;
        let done = rollouts(&engine, &prompts, g, cfg.max_completion_length, eos, |i| {
            SamplingParams {
                temperature: cfg.temperature,
                top_p: cfg.top_p,
                seed: Some(cfg.seed ^ ((gen_index + 1) << 20) ^ (i as u64)),
                ..SamplingParams::default()
            }
        })?;
        engine.shutdown(std::time::Duration::from_secs(1));
        let gen_tokens: usize = done.iter().map(|d| d.ids.len()).sum();
        // Engine start (the adapter merged into a fresh model) counts as generation time, the
        // held-out evaluation does not.
        let time_generation_s = engine_start_s + t_gen.elapsed().as_secs_f64();
        // Scoring.
        let t1 = Instant::now();
        let mut groups = Vec::with_capacity(picked.len());
        let mut per_reward: Vec<(f64, usize)> = vec![(0.0, 0); rewards.funcs.len()];
        let mut sample = String::new();
        let samples: Vec<Sample<'_>> = done
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let (p, r) = &picked[i / g];
                sample_of(p, r, d)
            })
            .collect();
        let (all_scored, reward_errors) = rewards.score_batch(&samples);
        for e in &reward_errors {
            on_event(RunEvent::RewardError(e));
        }
        for (k, (_, r)) in picked.iter().enumerate() {
            let mut grp = Group {
                prompt: r.ids.clone(),
                completions: Vec::with_capacity(g),
                rewards: Vec::with_capacity(g),
                truncated: Vec::with_capacity(g),
            };
            for (d, scored) in done[k * g..(k + 1) * g]
                .iter()
                .zip(&all_scored[k * g..(k + 1) * g])
            {
                for (acc, v) in per_reward.iter_mut().zip(&scored.per_func) {
                    if let Some(v) = v {
                        acc.0 += v;
                        acc.1 += 1;
                    }
                }
                if sample.is_empty() {
                    sample = format!("[reward {:.2}] {}", scored.total, d.text);
                }
                grp.completions.push(d.ids.clone());
                grp.rewards.push(scored.total);
                grp.truncated.push(d.truncated);
            }
            groups.push(grp);
        }
        let time_scoring_s = t1.elapsed().as_secs_f64();
        // The policy steps on this generation batch.
        let t2 = Instant::now();
        let prepared = prepare(&groups, cfg.scale_rewards, cfg.mask_truncated_completions)?;
        let old = if cfg.num_iterations > 1 {
            Some(logps_of(&model, &prepared.rows, cfg.micro_batch, false)?)
        } else {
            None
        };
        let reference = if cfg.beta != 0.0 {
            Some(logps_of(&model, &prepared.rows, cfg.micro_batch, true)?)
        } else {
            None
        };
        let mut extra_s = t2.elapsed().as_secs_f64();
        let (reward, reward_std, frac_zero, mean_length, clipped_ratio) = prepared.summary();
        let per_reward: BTreeMap<String, f64> = rewards
            .funcs
            .iter()
            .zip(&per_reward)
            .map(|((f, _), (s, n))| (format!("rewards/{}/mean", f.name()), s / (*n).max(1) as f64))
            .collect();
        let mut first = true;
        'passes: for _ in 0..cfg.num_iterations {
            for start in (0..prepared.rows.len()).step_by(completions_per_step) {
                if state.global_step >= cfg.max_steps {
                    break 'passes;
                }
                let t3 = Instant::now();
                let u = update(
                    &model,
                    &mut opt,
                    &prepared,
                    start..start + completions_per_step,
                    old.as_deref(),
                    reference.as_deref(),
                    &step_cfg,
                )?;
                state.global_step += 1;
                let step = state.global_step;
                let rec = GrpoStepRecord {
                    step,
                    loss: u.loss,
                    reward,
                    reward_std,
                    per_reward: per_reward.clone(),
                    frac_reward_zero_std: frac_zero,
                    mean_length,
                    clipped_ratio,
                    clip_ratio_region_mean: u.clip_ratio_region_mean,
                    clip_ratio_low_mean: u.clip_ratio_low_mean,
                    clip_ratio_high_mean: u.clip_ratio_high_mean,
                    kl: u.kl,
                    learning_rate: cfg.learning_rate,
                    elapsed_s: started.elapsed().as_secs_f64(),
                    grad_norm: u.grad_norm,
                    // The generation and scoring of a batch count on its first step.
                    time_generation_s: if first { time_generation_s } else { 0.0 },
                    time_engine_start_s: if first { engine_start_s } else { 0.0 },
                    time_scoring_s: if first { time_scoring_s } else { 0.0 },
                    time_training_s: t3.elapsed().as_secs_f64() + std::mem::take(&mut extra_s),
                    generation_tokens_per_s: gen_tokens as f64 / time_generation_s.max(1e-9),
                    sample: if first { sample.clone() } else { String::new() },
                    reward_errors: if first { reward_errors.len() } else { 0 },
                };
                first = false;
                write_line(&mut metrics, &rec)?;
                on_event(RunEvent::Step(&rec));
                if step == cfg.max_steps
                    || (cfg.save_steps > 0 && step.is_multiple_of(cfg.save_steps))
                {
                    save_checkpoint(&out, &lora, cfg, &model, &opt, &state)?;
                    refresh_report(&out, cfg);
                }
            }
        }
    }
    if eval_due(state.global_step, last_eval) {
        let engine = start_engine(
            &infer_base,
            &model,
            scaling,
            &tokenizer,
            max_running,
            max_queue,
        )?;
        let rec = evaluate(
            &engine,
            &eval_set,
            &rewards,
            cfg.max_completion_length,
            eos,
            state.global_step,
        )?;
        engine.shutdown(std::time::Duration::from_secs(1));
        write_line(&mut metrics, &rec)?;
        on_event(RunEvent::Eval(&rec));
    }
    // The adapter at the top of output_dir (what `seek run --lora`, peft and `seek train export`
    // load).
    crate::peft::write_adapter_files(&out, &lora, &cfg.model_name_or_path, model.adapter_state()?)?;
    refresh_report(&out, cfg);
    Ok(out)
}

const STATE: &str = "trainer_state.json";

/// The run's settings as the report shows them.
fn settings(cfg: &GrpoConfig) -> Vec<(String, String)> {
    let mut v = vec![
        ("model_name_or_path".into(), cfg.model_name_or_path.clone()),
        ("dataset_name".into(), cfg.dataset_name.clone()),
        (
            "eval_dataset".into(),
            cfg.eval_dataset.clone().unwrap_or_else(|| "-".into()),
        ),
        ("reward_funcs".into(), cfg.reward_funcs.join(" ")),
        (
            "reward_weights".into(),
            cfg.reward_weights
                .as_ref()
                .map_or("1 each".into(), |w| format!("{w:?}")),
        ),
    ];
    for (k, val) in [
        ("num_generations", cfg.num_generations.to_string()),
        (
            "per_device_train_batch_size",
            cfg.per_device_train_batch_size.to_string(),
        ),
        (
            "gradient_accumulation_steps",
            cfg.gradient_accumulation_steps.to_string(),
        ),
        ("num_iterations", cfg.num_iterations.to_string()),
        (
            "max_completion_length",
            cfg.max_completion_length.to_string(),
        ),
        ("temperature", cfg.temperature.to_string()),
        ("top_p", cfg.top_p.to_string()),
        ("loss_type", format!("{:?}", cfg.loss_type).to_lowercase()),
        (
            "scale_rewards",
            format!("{:?}", cfg.scale_rewards).to_lowercase(),
        ),
        ("beta", cfg.beta.to_string()),
        ("epsilon", cfg.epsilon.to_string()),
        ("learning_rate", cfg.learning_rate.to_string()),
        ("max_steps", cfg.max_steps.to_string()),
        (
            "lora_r / lora_alpha",
            format!("{} / {}", cfg.lora_r, cfg.lora_alpha),
        ),
        ("seed", cfg.seed.to_string()),
    ] {
        v.push((k.to_string(), val));
    }
    v
}

/// `report.html` beside `metrics.jsonl`; a report that cannot be drawn is not worth
/// stopping the run for, so it is only a warning.
fn refresh_report(out: &Path, cfg: &GrpoConfig) {
    if let Err(e) = crate::report::write_grpo_report(out, "seek train grpo", &settings(cfg)) {
        tracing::warn!("cannot write report.html: {e}");
    }
}

/// Where a GRPO run is (`trainer_state.json` in each checkpoint).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct GrpoState {
    /// Optimizer steps done.
    global_step: u64,
    /// Passes over the dataset started.
    epoch: u64,
    /// Prompts of this epoch's order used.
    cursor: usize,
}

/// `checkpoint-N/`: the adapter, the optimizer moments and the state, written atomically.
fn save_checkpoint(
    out: &Path,
    lora: &LoraConfig,
    cfg: &GrpoConfig,
    model: &seek_models::autograd::Trainable,
    opt: &AdamW,
    state: &GrpoState,
) -> Result<()> {
    let dir = out.join(format!("checkpoint-{}", state.global_step));
    crate::checkpoint::atomic_dir(&dir, |tmp| {
        crate::peft::write_adapter_files(
            tmp,
            lora,
            &cfg.model_name_or_path,
            model.adapter_state()?,
        )?;
        crate::checkpoint::save_optimizer(tmp, opt)?;
        let p = tmp.join(STATE);
        let text = serde_json::to_string_pretty(state)
            .map_err(|e| TrainError::Checkpoint(e.to_string()))?;
        std::fs::write(&p, text + "\n")
            .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", p.display())))
    })?;
    crate::sft::prune_checkpoints(out, cfg.save_total_limit)
}

/// Keeps the lines of `metrics.jsonl` up to `step` (a resumed run writes what came after again).
fn keep_metrics_up_to(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(path, kept)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))
}
