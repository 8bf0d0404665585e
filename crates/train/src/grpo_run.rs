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
use seek_engine::chat::render_chat;
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
        }
    }
}

/// One problem.
#[derive(Debug, Clone)]
struct Problem {
    messages: Vec<ChatMessage>,
    solution: Option<String>,
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
        let messages = match (&v["prompt"], &v["question"]) {
            (serde_json::Value::String(p), _) | (_, serde_json::Value::String(p)) => {
                vec![ChatMessage::user(p.clone())]
            }
            (serde_json::Value::Array(ms), _) => ms
                .iter()
                .map(|m| {
                    ChatMessage::new(
                        m["role"].as_str().unwrap_or("user"),
                        m["content"].as_str().unwrap_or(""),
                    )
                })
                .collect(),
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
        out.push(Problem { messages, solution });
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

/// Runs GRPO as `cfg` says; `on_step` sees every record (it is also appended to
/// `output_dir/metrics.jsonl`).
pub fn run(
    cfg: &GrpoConfig,
    load: &LoadOptions,
    mut on_step: impl FnMut(&GrpoStepRecord),
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
    for step in 1..=cfg.max_steps {
        // The step's prompts, rendered as `seek run` renders them.
        let mut picked = Vec::with_capacity(prompts_per_step);
        while picked.len() < prompts_per_step {
            if cursor == order.len() {
                order.shuffle(&mut rng);
                cursor = 0;
            }
            let p = &problems[order[cursor]];
            cursor += 1;
            let rendered = render_chat(&tokenizer, &p.messages)
                .map_err(|e| TrainError::Config(format!("cannot render a prompt: {e}")))?;
            if rendered.ids.len() <= cfg.max_prompt_length {
                picked.push((p, rendered));
            }
        }
        // Rollouts through the engine, with the adapter as it is now.
        let t0 = Instant::now();
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
        let engine = EngineHandle::start(
            infer.model,
            tokenizer.clone(),
            EngineConfig {
                max_running: completions_per_step.min(64),
                max_queue: completions_per_step + 8,
                ..EngineConfig::default()
            },
        )
        .map_err(|e| TrainError::Config(e.to_string()))?;
        let mut receivers = Vec::new();
        for (k, (_, r)) in picked.iter().enumerate() {
            for j in 0..g {
                let (tx, rx) = mpsc::channel::<ServeEvent>();
                let req = ServeRequest {
                    prompt: r.ids.clone(),
                    params: SequenceParams {
                        sampling: SamplingParams {
                            temperature: cfg.temperature,
                            top_p: cfg.top_p,
                            seed: Some(cfg.seed ^ (step << 20) ^ ((k * g + j) as u64)),
                            ..SamplingParams::default()
                        },
                        max_tokens: cfg.max_completion_length,
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
        let eos = tokenizer.eos_token_ids().first().copied();
        let mut done: Vec<(Vec<u32>, String, bool)> = Vec::with_capacity(receivers.len());
        let mut gen_tokens = 0usize;
        for rx in receivers {
            let (mut ids, mut text, mut cut) = (Vec::new(), String::new(), false);
            for ev in rx.iter() {
                match ev {
                    ServeEvent::Delta { delta, token, .. } => {
                        text.push_str(&delta.reasoning);
                        text.push_str(&delta.content);
                        ids.extend(token);
                    }
                    ServeEvent::Finished { finish_reason, .. } => {
                        cut = finish_reason == FinishReason::Length;
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
            gen_tokens += ids.len();
            done.push((ids, text, cut));
        }
        engine.shutdown(std::time::Duration::from_secs(1));
        let time_generation_s = t0.elapsed().as_secs_f64();
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
            for (ids, text, cut) in &done[k * g..(k + 1) * g] {
                let scored = rewards.score(&Sample {
                    completion: text,
                    solution: p.solution.as_deref(),
                    completion_tokens: Some(ids.len()),
                    prompt_opens_think: r.starts_in_reasoning,
                });
                for (acc, v) in per_reward.iter_mut().zip(&scored.per_func) {
                    if let Some(v) = v {
                        acc.0 += v;
                        acc.1 += 1;
                    }
                }
                if sample.is_empty() {
                    sample = format!("[reward {:.2}] {text}", scored.total);
                }
                grp.completions.push(ids.clone());
                grp.rewards.push(scored.total);
                grp.truncated.push(*cut);
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
        let line = serde_json::to_string(&rec).map_err(|e| TrainError::Config(e.to_string()))?;
        writeln!(metrics, "{line}")
            .map_err(|e| TrainError::Config(format!("cannot write metrics: {e}")))?;
        on_step(&rec);
        if step == cfg.max_steps || (cfg.save_steps > 0 && step % cfg.save_steps == 0) {
            crate::peft::write_adapter_files(
                &out,
                &lora,
                &cfg.model_name_or_path,
                model.adapter_state()?,
            )?;
        }
    }
    Ok(out)
}
