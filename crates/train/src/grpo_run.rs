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

use crate::grpo::{policy_step, Group, GrpoLossConfig, LossType, ScaleRewards, StepConfig};
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
    /// `beta` (only 0 for now).
    pub beta: f64,
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
}

impl Default for GrpoConfig {
    fn default() -> Self {
        Self {
            model_name_or_path: String::new(),
            dataset_name: String::new(),
            output_dir: "grpo-out".into(),
            reward_funcs: vec!["accuracy_reward".into()],
            reward_weights: None,
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
            (_, serde_json::Value::String(q)) => PromptSpec::Chat(vec![ChatMessage::user(q.clone())]),
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
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Seconds generating the completions (engine start included).
    pub time_generation_s: f64,
    /// Seconds scoring them.
    pub time_scoring_s: f64,
    /// Seconds in the policy step.
    pub time_training_s: f64,
    /// Completion tokens generated per second.
    pub generation_tokens_per_s: f64,
    /// A sampled completion and its reward, to read along the curves.
    pub sample: String,
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
}

/// What the run reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum RunEvent<'a> {
    /// An optimizer step.
    Step(&'a GrpoStepRecord),
    /// A held-out evaluation.
    Eval(&'a EvalRecord),
}

/// One finished completion.
struct Rollout {
    ids: Vec<u32>,
    text: String,
    truncated: bool,
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
    base: &Path,
    load: &LoadOptions,
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
    let infer = seek_models::load(
        base,
        &LoadOptions {
            lora: Some(adapter),
            ..load.clone()
        },
    )?;
    EngineHandle::start(
        infer.model,
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
    for ((p, r), out) in set.iter().zip(&done) {
        let scored = rewards.score(&Sample {
            completion: &out.text,
            solution: p.solution.as_deref(),
            completion_tokens: Some(out.ids.len()),
            prompt_opens_think: r.starts_in_reasoning,
            row: Some(&p.row),
        });
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
            .map(|((f, _), (s, k))| (format!("eval_rewards/{}/mean", f.name()), s / (*k).max(1) as f64))
            .collect(),
        eval_samples: done.len(),
        mean_length: done.iter().map(|d| d.ids.len() as f64).sum::<f64>() / n,
        clipped_ratio: done.iter().filter(|d| d.truncated).count() as f64 / n,
        eval_time_s: t0.elapsed().as_secs_f64(),
        eval_sample: done.first().map(|d| d.text.clone()).unwrap_or_default(),
    })
}

fn write_line(metrics: &mut std::fs::File, rec: &impl Serialize) -> Result<()> {
    let line = serde_json::to_string(rec).map_err(|e| TrainError::Config(e.to_string()))?;
    writeln!(metrics, "{line}").map_err(|e| TrainError::Config(format!("cannot write metrics: {e}")))
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
    if cfg.beta != 0.0 {
        return Err(TrainError::Config(
            "beta > 0 needs a reference model, not kept yet; use --beta 0 (TRL's default)".into(),
        ));
    }
    let prompts_per_step = completions_per_step / g;
    let rewards = RewardSet::new(
        &cfg.reward_funcs,
        cfg.reward_weights.as_deref(),
        cfg.max_completion_length,
    )
    .map_err(TrainError::Config)?;
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
    let eval_set: Vec<(Problem, RenderedPrompt)> = eval_problems
        .into_iter()
        .map(|p| render(&tokenizer, &p).map(|r| (p, r)))
        .collect::<Result<_>>()?;
    let mut opt = AdamW::new(model.vars().to_vec(), AdamWConfig::default());
    let out = PathBuf::from(&cfg.output_dir);
    std::fs::create_dir_all(&out)
        .map_err(|e| TrainError::Config(format!("cannot create {}: {e}", out.display())))?;
    let metrics_path = out.join("metrics.jsonl");
    let mut metrics = std::fs::File::create(&metrics_path)
        .map_err(|e| TrainError::Config(format!("cannot write {}: {e}", metrics_path.display())))?;
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
    let mut order: Vec<usize> = (0..problems.len()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    order.shuffle(&mut rng);
    let mut cursor = 0;
    let scaling = lora.scaling();
    let max_running = completions_per_step.max(eval_set.len().min(64)).min(64);
    let max_queue = completions_per_step.max(eval_set.len()) + 8;
    let eval_due = |step: u64| {
        !eval_set.is_empty()
            && (step == 0 || step == cfg.max_steps || (cfg.eval_steps > 0 && step % cfg.eval_steps == 0))
    };
    for step in 1..=cfg.max_steps {
        // The step's prompts, rendered as `seek run` renders them.
        let mut picked: Vec<(&Problem, RenderedPrompt)> = Vec::with_capacity(prompts_per_step);
        while picked.len() < prompts_per_step {
            if cursor == order.len() {
                order.shuffle(&mut rng);
                cursor = 0;
            }
            let p = &problems[order[cursor]];
            cursor += 1;
            let rendered = render(&tokenizer, p)?;
            if rendered.ids.len() <= cfg.max_prompt_length {
                picked.push((p, rendered));
            }
        }
        // Rollouts through the engine, with the adapter as it is now.
        let t0 = Instant::now();
        let engine = start_engine(base, load, &model, scaling, &tokenizer, max_running, max_queue)?;
        let engine_start_s = t0.elapsed().as_secs_f64();
        if eval_due(step - 1) {
            let rec = evaluate(&engine, &eval_set, &rewards, cfg.max_completion_length, eos, step - 1)?;
            write_line(&mut metrics, &rec)?;
            on_event(RunEvent::Eval(&rec));
        }
        let t_gen = Instant::now();
        let prompts: Vec<&RenderedPrompt> = picked.iter().map(|(_, r)| r).collect();
        let done = rollouts(&engine, &prompts, g, cfg.max_completion_length, eos, |i| {
            SamplingParams {
                temperature: cfg.temperature,
                top_p: cfg.top_p,
                seed: Some(cfg.seed ^ (step << 20) ^ (i as u64)),
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
        for (k, (p, r)) in picked.iter().enumerate() {
            let mut grp = Group {
                prompt: r.ids.clone(),
                completions: Vec::with_capacity(g),
                rewards: Vec::with_capacity(g),
                truncated: Vec::with_capacity(g),
            };
            for d in &done[k * g..(k + 1) * g] {
                let scored = rewards.score(&Sample {
                    completion: &d.text,
                    solution: p.solution.as_deref(),
                    completion_tokens: Some(d.ids.len()),
                    prompt_opens_think: r.starts_in_reasoning,
                    row: Some(&p.row),
                });
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
        let t2 = Instant::now();
        let stats = policy_step(&model, &mut opt, &groups, &step_cfg)?;
        let time_training_s = t2.elapsed().as_secs_f64();
        let rec = GrpoStepRecord {
            step,
            loss: stats.loss,
            reward: stats.reward,
            reward_std: stats.reward_std,
            per_reward: rewards
                .funcs
                .iter()
                .zip(&per_reward)
                .map(|((f, _), (s, n))| {
                    (format!("rewards/{}/mean", f.name()), s / (*n).max(1) as f64)
                })
                .collect(),
            frac_reward_zero_std: stats.frac_reward_zero_std,
            mean_length: stats.mean_length,
            clipped_ratio: stats.clipped_ratio,
            clip_ratio_region_mean: stats.clip_ratio_region_mean,
            grad_norm: stats.grad_norm,
            time_generation_s,
            time_scoring_s,
            time_training_s,
            generation_tokens_per_s: gen_tokens as f64 / time_generation_s.max(1e-9),
            sample,
        };
        write_line(&mut metrics, &rec)?;
        on_event(RunEvent::Step(&rec));
        if step == cfg.max_steps || (cfg.save_steps > 0 && step % cfg.save_steps == 0) {
            crate::peft::write_adapter_files(
                &out,
                &lora,
                &cfg.model_name_or_path,
                model.adapter_state()?,
            )?;
        }
    }
    if eval_due(cfg.max_steps) {
        let engine = start_engine(base, load, &model, scaling, &tokenizer, max_running, max_queue)?;
        let rec = evaluate(&engine, &eval_set, &rewards, cfg.max_completion_length, eos, cfg.max_steps)?;
        engine.shutdown(std::time::Duration::from_secs(1));
        write_line(&mut metrics, &rec)?;
        on_event(RunEvent::Eval(&rec));
    }
    Ok(out)
}
