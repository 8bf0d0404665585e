//! Supervised fine-tuning (`seek train sft`): TRL's `SFTTrainer` semantics on Seek's models.
//!
//! One optimizer step takes `gradient_accumulation_steps` micro-batches of
//! `per_device_train_batch_size` examples; the loss is the token-mean cross-entropy over the
//! whole step (transformers' `num_items_in_batch` normalisation), then global-norm clipping,
//! the scheduled learning rate and AdamW. Every `save_steps` a checkpoint
//! (`checkpoint-N/`) is written atomically with the optimizer state; a run resumed from it
//! sees the same data in the same order and gives the same losses.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use seek_models::autograd::{Ctx, Finetune, LoraConfig, Trainable, TrainableOptions};
use seek_models::{LoadOptions, ModelFormat, ModelInfo};
use seek_tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};

use crate::batch::{epoch_batches, epoch_order};
use crate::data::{load_jsonl, DataConfig, Dataset, Overlong};
use crate::optim::{clip_grad_norm, warmup_steps, AdamW, AdamWConfig, Schedule};
use crate::report::StepRecord;
use crate::{io_err, Result, TrainError};

/// The settings of an SFT run, named as TRL's `SFTConfig`, `ModelConfig` and PEFT's
/// `LoraConfig` name them (a TOML recipe uses the same keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftConfig {
    /// The model: a GGUF file or a Hugging Face folder.
    pub model_name_or_path: String,
    /// The JSONL training data.
    pub dataset_name: String,
    /// Where checkpoints and the result go.
    pub output_dir: String,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Epochs (fractional allowed) when `max_steps` is not set.
    pub num_train_epochs: f64,
    /// Optimizer steps; overrides `num_train_epochs` when positive.
    pub max_steps: i64,
    /// Examples (or packed rows) per micro-batch.
    pub per_device_train_batch_size: usize,
    /// Micro-batches per optimizer step.
    pub gradient_accumulation_steps: usize,
    /// Longest example in tokens.
    pub max_length: usize,
    /// Several examples per row, kept apart by the attention mask.
    pub packing: bool,
    /// Longer examples are dropped (default) or truncated.
    pub overlong: Overlong,
    /// Learn only the answer (TRL's `completion_only_loss` / `assistant_only_loss`).
    pub completion_only_loss: bool,
    /// `linear`, `cosine`, `constant`, `constant_with_warmup`.
    pub lr_scheduler_type: Schedule,
    /// Warmup as a fraction of the steps.
    pub warmup_ratio: f64,
    /// Warmup steps (overrides the ratio when positive).
    pub warmup_steps: u64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// AdamW β1.
    pub adam_beta1: f64,
    /// AdamW β2.
    pub adam_beta2: f64,
    /// AdamW ε.
    pub adam_epsilon: f64,
    /// Global gradient-norm clip (0: none).
    pub max_grad_norm: f64,
    /// Steps between log lines.
    pub logging_steps: u64,
    /// Steps between checkpoints (0: only at the end).
    pub save_steps: u64,
    /// Checkpoints kept (oldest deleted first; 0 keeps all).
    pub save_total_limit: usize,
    /// Seed of data order, adapter initialisation and dropout.
    pub seed: u64,
    /// LoRA instead of full fine-tuning.
    pub use_peft: bool,
    /// LoRA rank.
    pub lora_r: usize,
    /// LoRA alpha.
    pub lora_alpha: f64,
    /// LoRA dropout.
    pub lora_dropout: f64,
    /// Modules to adapt (`q_proj`, `all-linear`, ...); empty: PEFT's default for the model.
    pub lora_target_modules: Vec<String>,
    /// rsLoRA scaling.
    pub use_rslora: bool,
    /// LoRA on a quantized GGUF base kept in its encoding (TRL's `load_in_4bit` /
    /// `load_in_8bit` spell the same wish).
    pub quantized_base: bool,
    /// A `checkpoint-N` folder to continue from, or `latest` for the newest in `output_dir`.
    pub resume_from_checkpoint: Option<String>,
    /// Keep only each layer's input in the forward and recompute the layer in the backward:
    /// activation memory of one layer for about a third more compute.
    pub gradient_checkpointing: bool,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            model_name_or_path: String::new(),
            dataset_name: String::new(),
            output_dir: String::new(),
            learning_rate: 2e-5,
            num_train_epochs: 3.0,
            max_steps: -1,
            per_device_train_batch_size: 8,
            gradient_accumulation_steps: 1,
            max_length: 1024,
            packing: false,
            overlong: Overlong::Drop,
            completion_only_loss: true,
            lr_scheduler_type: Schedule::Linear,
            warmup_ratio: 0.0,
            warmup_steps: 0,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: 1.0,
            logging_steps: 10,
            save_steps: 500,
            save_total_limit: 0,
            seed: 42,
            use_peft: false,
            lora_r: 16,
            lora_alpha: 32.0,
            lora_dropout: 0.05,
            lora_target_modules: Vec::new(),
            use_rslora: false,
            quantized_base: false,
            resume_from_checkpoint: None,
            gradient_checkpointing: false,
        }
    }
}

impl SftConfig {
    /// Checks the values; messages name the option and the fix.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.model_name_or_path.is_empty() {
            return bad("--model_name_or_path is required".into());
        }
        if self.dataset_name.is_empty() {
            return bad("--dataset_name (a JSONL file) is required".into());
        }
        if self.output_dir.is_empty() {
            return bad("--output_dir is required".into());
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad(format!(
                "learning_rate = {} must be a positive number",
                self.learning_rate
            ));
        }
        if self.per_device_train_batch_size == 0 || self.gradient_accumulation_steps == 0 {
            return bad(
                "per_device_train_batch_size and gradient_accumulation_steps must be at least 1"
                    .into(),
            );
        }
        if self.max_length < 2 {
            return bad(format!(
                "max_length = {} is too short to learn anything",
                self.max_length
            ));
        }
        if self.max_steps <= 0 && self.num_train_epochs <= 0.0 {
            return bad("set max_steps or num_train_epochs above 0".into());
        }
        if self.use_peft && self.lora_r == 0 {
            return bad("lora_r must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return bad(format!(
                "lora_dropout = {} must be in [0, 1)",
                self.lora_dropout
            ));
        }
        if self.quantized_base && !self.use_peft {
            return bad("a quantized base is frozen: it needs --use_peft (LoRA)".into());
        }
        Ok(())
    }

    /// The LoRA settings, with PEFT's default targets (`q_proj`, `v_proj`) when none given.
    pub fn lora(&self) -> Option<LoraConfig> {
        self.use_peft.then(|| LoraConfig {
            r: self.lora_r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            target_modules: if self.lora_target_modules.is_empty() {
                vec!["q_proj".into(), "v_proj".into()]
            } else {
                self.lora_target_modules.clone()
            },
            use_rslora: self.use_rslora,
        })
    }
}

/// Where a run is; written as `trainer_state.json` in each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub global_step: u64,
    /// Steps the run will take.
    pub max_steps: u64,
    /// Tokens seen.
    pub num_tokens: u64,
    /// Seconds of training so far.
    pub elapsed_s: f64,
    /// The run's settings.
    pub config: SftConfig,
}

/// What [`run`] reports to a progress display.
pub trait Progress {
    /// After each optimizer step.
    fn step(&mut self, rec: &StepRecord, max_steps: u64);
    /// A message for the log.
    fn note(&mut self, msg: &str);
    /// Asked after each step: `true` stops the run there with a checkpoint (Ctrl-C, a time
    /// budget); it resumes with `resume_from_checkpoint`.
    fn should_stop(&mut self) -> bool {
        false
    }
}

/// Prints nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn step(&mut self, _rec: &StepRecord, _max_steps: u64) {}
    fn note(&mut self, _msg: &str) {}
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Steps taken in total (resumed ones included).
    pub steps: u64,
    /// Loss of the last step.
    pub final_loss: f64,
    /// Examples used, and those dropped for length.
    pub examples: usize,
    /// Dropped for length.
    pub dropped_overlong: usize,
    /// Where the result was written.
    pub output_dir: PathBuf,
    /// Trainable values.
    pub trainable_parameters: usize,
}

/// The model, tokenizer and data of a run, loaded once.
pub struct Setup {
    /// The differentiable model.
    pub model: Trainable,
    /// Its summary.
    pub info: ModelInfo,
    /// Where it came from.
    pub format: ModelFormat,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// The data.
    pub data: Dataset,
}

/// The tokenizer stored with a model.
pub fn tokenizer_for(format: &ModelFormat) -> Result<Tokenizer> {
    let t = match format {
        ModelFormat::Gguf(file) => Tokenizer::from_gguf(file),
        ModelFormat::HfDir(dir) => Tokenizer::from_hf_dir(dir),
    };
    t.map_err(|e| TrainError::Config(format!("cannot load the model's tokenizer: {e}")))
}

/// Loads model, tokenizer and data for `cfg`.
pub fn setup(cfg: &SftConfig, load: &LoadOptions) -> Result<Setup> {
    cfg.check()?;
    let finetune = match cfg.lora() {
        Some(l) => Finetune::Lora(l),
        None => Finetune::Full,
    };
    let opts = TrainableOptions {
        finetune,
        seed: cfg.seed,
        quantized_base: cfg.quantized_base,
    };
    let (model, info, format) =
        seek_models::load_trainable(Path::new(&cfg.model_name_or_path), load, &opts)?;
    let tokenizer = tokenizer_for(&format)?;
    let data = load_jsonl(
        Path::new(&cfg.dataset_name),
        &tokenizer,
        &DataConfig {
            max_length: cfg.max_length,
            overlong: cfg.overlong,
            completion_only_loss: cfg.completion_only_loss,
        },
    )?;
    Ok(Setup {
        model,
        info,
        format,
        tokenizer,
        data,
    })
}

/// Trains `setup.model` on `setup.data` as `cfg` says; writes checkpoints, `metrics.jsonl`,
/// `report.html` and the final model or adapter into `cfg.output_dir`.
pub fn run(cfg: &SftConfig, setup: &Setup, progress: &mut dyn Progress) -> Result<RunSummary> {
    let out = PathBuf::from(&cfg.output_dir);
    std::fs::create_dir_all(&out).map_err(io_err(&out))?;
    let model = &setup.model;
    let examples = &setup.data.examples;
    let accum = cfg.gradient_accumulation_steps as u64;
    // Epoch 0's micro-batches: their count sizes the run (packing makes it data-dependent),
    // and they are the first ones trained on.
    let first = epoch_batches(
        examples,
        &epoch_order(examples.len(), cfg.seed, 0),
        cfg.per_device_train_batch_size,
        cfg.packing,
        cfg.max_length,
    )?;
    let batches_per_epoch = first.len() as u64;
    let mut epoch_cache: HashMap<u64, Vec<seek_models::autograd::Batch>> =
        HashMap::from([(0, first)]);
    let steps_per_epoch = batches_per_epoch.div_ceil(accum).max(1);
    let max_steps = if cfg.max_steps > 0 {
        cfg.max_steps as u64
    } else {
        ((cfg.num_train_epochs * steps_per_epoch as f64).ceil() as u64).max(1)
    };
    let warmup = warmup_steps(cfg.warmup_steps, cfg.warmup_ratio, max_steps);
    let mut opt = AdamW::new(
        model.vars().to_vec(),
        AdamWConfig {
            beta1: cfg.adam_beta1,
            beta2: cfg.adam_beta2,
            eps: cfg.adam_epsilon,
            weight_decay: cfg.weight_decay,
        },
    );
    let mut state = TrainerState {
        global_step: 0,
        max_steps,
        num_tokens: 0,
        elapsed_s: 0.0,
        config: cfg.clone(),
    };
    let metrics_path = out.join("metrics.jsonl");
    if let Some(from) = &cfg.resume_from_checkpoint {
        let dir = resolve_checkpoint(&out, from)?;
        state = resume(&dir, model, &mut opt, cfg.use_peft)?;
        state.max_steps = max_steps;
        state.config = cfg.clone();
        truncate_metrics(&metrics_path, state.global_step)?;
        progress.note(&format!(
            "resumed from {} at step {}",
            dir.display(),
            state.global_step
        ));
    } else if metrics_path.exists() {
        std::fs::remove_file(&metrics_path).map_err(io_err(&metrics_path))?;
    }
    progress.note(&format!(
        "{} examples ({} supervised tokens; {} dropped and {} truncated for max_length {}), {} trainable parameters, {} steps of {} x {} ",
        examples.len(),
        setup.data.supervised_tokens(),
        setup.data.dropped_overlong,
        setup.data.truncated,
        cfg.max_length,
        model.trainable_parameters(),
        max_steps,
        cfg.gradient_accumulation_steps,
        cfg.per_device_train_batch_size
    ));

    let start = Instant::now() - std::time::Duration::from_secs_f64(state.elapsed_s);
    let mut last_good: Option<PathBuf> = None;
    let mut final_loss = f64::NAN;
    while state.global_step < max_steps {
        let step = state.global_step;
        let step_start = Instant::now();
        // The micro-batches of this step: positions step*accum .. in the epoch stream.
        let mut micro = Vec::with_capacity(accum as usize);
        for k in 0..accum {
            let idx = step * accum + k;
            let (epoch, i) = (idx / batches_per_epoch, idx % batches_per_epoch);
            let batches = match epoch_cache.get(&epoch) {
                Some(b) => b,
                None => {
                    epoch_cache.retain(|&e, _| e + 1 >= epoch);
                    let order = epoch_order(examples.len(), cfg.seed, epoch);
                    let b = epoch_batches(
                        examples,
                        &order,
                        cfg.per_device_train_batch_size,
                        cfg.packing,
                        cfg.max_length,
                    )?;
                    epoch_cache.entry(epoch).or_insert(b)
                }
            };
            micro.push((idx, batches[i as usize].clone()));
        }
        let n_step: usize = micro.iter().map(|(_, b)| b.n_labels()).sum();
        let mut grads: Option<Vec<Vec<f32>>> = None;
        let mut loss_sum = 0f64;
        let mut tokens = 0u64;
        for (idx, b) in &micro {
            let mut ctx = Ctx::train(cfg.seed ^ (idx.wrapping_mul(0x2545_F491_4F6C_DD1D)));
            let (sum, _, g) = model.loss_and_grads(
                b,
                &mut ctx,
                1.0 / n_step.max(1) as f64,
                cfg.gradient_checkpointing,
            )?;
            loss_sum += sum;
            match &mut grads {
                None => grads = Some(g),
                Some(acc) => {
                    for (a, g) in acc.iter_mut().zip(&g) {
                        for (a, g) in a.iter_mut().zip(g) {
                            *a += g;
                        }
                    }
                }
            }
            let (bsz, t) = b.dims();
            tokens += (bsz * t) as u64;
        }
        let loss = loss_sum / n_step.max(1) as f64;
        let mut grads = grads.expect("a step has at least one micro-batch");
        let grad_norm = clip_grad_norm(&mut grads, cfg.max_grad_norm);
        if !loss.is_finite() || !grad_norm.is_finite() {
            return Err(TrainError::Diverged {
                step: step + 1,
                loss,
                last_good: last_good
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "none (no checkpoint was written yet)".into()),
            });
        }
        let lr = cfg
            .lr_scheduler_type
            .lr(cfg.learning_rate, step, warmup, max_steps);
        opt.update(&grads, lr)?;
        state.global_step += 1;
        state.num_tokens += tokens;
        state.elapsed_s = start.elapsed().as_secs_f64();
        final_loss = loss;
        let rec = StepRecord {
            step: state.global_step,
            epoch: (state.global_step * accum) as f64 / batches_per_epoch as f64,
            loss,
            learning_rate: lr,
            grad_norm,
            tokens_per_second: tokens as f64 / step_start.elapsed().as_secs_f64(),
            num_tokens: state.num_tokens,
            elapsed_s: state.elapsed_s,
            eval_loss: None,
        };
        append_metrics(&metrics_path, &rec)?;
        progress.step(&rec, max_steps);
        let stop = progress.should_stop();
        if (cfg.save_steps > 0 && state.global_step.is_multiple_of(cfg.save_steps) || stop)
            && state.global_step < max_steps
        {
            let dir = out.join(format!("checkpoint-{}", state.global_step));
            save_checkpoint(&dir, setup, &opt, &state, true)?;
            prune_checkpoints(&out, cfg.save_total_limit)?;
            last_good = Some(dir);
        }
        if stop && state.global_step < max_steps {
            progress.note(&format!(
                "stopped at step {}; continue with --resume_from_checkpoint",
                state.global_step
            ));
            return Ok(RunSummary::new(setup, state.global_step, final_loss, out));
        }
    }
    // The final checkpoint (resumable) and the result at the top of output_dir.
    let dir = out.join(format!("checkpoint-{}", state.global_step));
    save_checkpoint(&dir, setup, &opt, &state, true)?;
    prune_checkpoints(&out, cfg.save_total_limit)?;
    save_result(&out, setup, cfg)?;
    let settings = settings_table(cfg, setup);
    crate::report::write_report(&out, "seek train sft", &settings)
        .map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    Ok(RunSummary::new(setup, state.global_step, final_loss, out))
}

impl RunSummary {
    fn new(setup: &Setup, steps: u64, final_loss: f64, output_dir: PathBuf) -> Self {
        Self {
            steps,
            final_loss,
            examples: setup.data.examples.len(),
            dropped_overlong: setup.data.dropped_overlong,
            output_dir,
            trainable_parameters: setup.model.trainable_parameters(),
        }
    }
}

fn settings_table(cfg: &SftConfig, setup: &Setup) -> Vec<(String, String)> {
    let mut v = vec![
        ("model".into(), cfg.model_name_or_path.clone()),
        ("architecture".into(), setup.info.architecture.clone()),
        ("dataset".into(), cfg.dataset_name.clone()),
        ("examples".into(), setup.data.examples.len().to_string()),
        (
            "mode".into(),
            if cfg.use_peft {
                format!(
                    "LoRA r={} alpha={} targets={}",
                    cfg.lora_r,
                    cfg.lora_alpha,
                    cfg.lora()
                        .map(|l| l.target_modules.join(","))
                        .unwrap_or_default()
                )
            } else {
                "full".into()
            },
        ),
        (
            "trainable parameters".into(),
            setup.model.trainable_parameters().to_string(),
        ),
        ("learning_rate".into(), cfg.learning_rate.to_string()),
        (
            "lr_scheduler_type".into(),
            format!("{:?}", cfg.lr_scheduler_type),
        ),
        (
            "batch".into(),
            format!(
                "{} x {} (accumulation)",
                cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps
            ),
        ),
        ("max_length".into(), cfg.max_length.to_string()),
        ("seed".into(), cfg.seed.to_string()),
    ];
    if cfg.packing {
        v.push(("packing".into(), "yes".into()));
    }
    v
}

fn append_metrics(path: &Path, rec: &StepRecord) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    let line = serde_json::to_string(rec).expect("a step record serializes");
    writeln!(f, "{line}").map_err(io_err(path))
}

/// Keeps the metrics of steps up to `step` (a resumed run rewrites what came after).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let recs =
        crate::report::read_metrics(path).map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    let mut text = String::new();
    for r in recs.iter().filter(|r| r.step <= step) {
        text.push_str(&serde_json::to_string(r).expect("serializes"));
        text.push('\n');
    }
    std::fs::write(path, text).map_err(io_err(path))
}

/// `latest` (the newest `checkpoint-N` in `out`) or a path.
pub(crate) fn resolve_checkpoint(out: &Path, from: &str) -> Result<PathBuf> {
    if from != "latest" && from != "true" {
        return Ok(PathBuf::from(from));
    }
    checkpoints(out)?
        .into_iter()
        .last()
        .map(|(_, p)| p)
        .ok_or_else(|| {
            TrainError::Checkpoint(format!(
                "no checkpoint-N folder in {} to resume from",
                out.display()
            ))
        })
}

pub(crate) fn checkpoints(out: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(out)
        .map_err(io_err(out))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e
                .file_name()
                .to_str()?
                .strip_prefix("checkpoint-")?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    v.sort();
    Ok(v)
}

pub(crate) fn prune_checkpoints(out: &Path, keep: usize) -> Result<()> {
    if keep == 0 {
        return Ok(());
    }
    let all = checkpoints(out)?;
    for (_, p) in all.iter().take(all.len().saturating_sub(keep)) {
        std::fs::remove_dir_all(p).map_err(io_err(p))?;
    }
    Ok(())
}

const STATE: &str = "trainer_state.json";

/// Writes the trainable weights (adapter or full model), the optimizer moments and the
/// trainer state into `dir`, atomically.
fn save_checkpoint(
    dir: &Path,
    setup: &Setup,
    opt: &AdamW,
    state: &TrainerState,
    with_optimizer: bool,
) -> Result<()> {
    crate::checkpoint::atomic_dir(dir, |tmp| {
        write_weights(tmp, setup, &state.config)?;
        if with_optimizer {
            crate::checkpoint::save_optimizer(tmp, opt)?;
        }
        let p = tmp.join(STATE);
        std::fs::write(
            &p,
            serde_json::to_string_pretty(state).expect("serializes") + "\n",
        )
        .map_err(io_err(&p))
    })
}

/// The final model or adapter at the top of `out` (what `seek run`, `peft` and transformers
/// load), written atomically file by file.
fn save_result(out: &Path, setup: &Setup, cfg: &SftConfig) -> Result<()> {
    let tmp = out.join(".result.tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    write_weights(&tmp, setup, cfg)?;
    for e in std::fs::read_dir(&tmp).map_err(io_err(&tmp))? {
        let e = e.map_err(io_err(&tmp))?;
        let to = out.join(e.file_name());
        std::fs::rename(e.path(), &to).map_err(io_err(&to))?;
    }
    std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))
}

/// The adapter (PEFT layout) or the full model (safetensors, config.json, tokenizer).
fn write_weights(dir: &Path, setup: &Setup, cfg: &SftConfig) -> Result<()> {
    if let Some(lora) = cfg.lora() {
        return crate::peft::write_adapter_files(
            dir,
            &lora,
            &cfg.model_name_or_path,
            setup.model.adapter_state()?,
        );
    }
    let state = setup.model.state_dict(false)?;
    let map: HashMap<String, Tensor> = state.into_iter().collect();
    candle_core::safetensors::save(&map, dir.join("model.safetensors"))?;
    write_model_files(dir, setup)
}

/// `config.json` and the tokenizer files beside a full model's weights.
pub fn write_model_files(dir: &Path, setup: &Setup) -> Result<()> {
    write_model_files_for(
        dir,
        &setup.format,
        &setup.model,
        &setup.info,
        &setup.tokenizer,
    )
}

/// [`write_model_files`] from the parts.
pub fn write_model_files_for(
    dir: &Path,
    format: &ModelFormat,
    model: &Trainable,
    info: &ModelInfo,
    tok: &Tokenizer,
) -> Result<()> {
    match format {
        ModelFormat::HfDir(src) => {
            for f in [
                "config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "generation_config.json",
                "chat_template.jinja",
                "special_tokens_map.json",
            ] {
                let from = src.join(f);
                if from.is_file() {
                    let to = dir.join(f);
                    std::fs::copy(&from, &to).map_err(io_err(&to))?;
                }
            }
        }
        ModelFormat::Gguf(_) => {
            let mut cfg = model.hf_config(&info.architecture);
            if let Some(b) = tok.bos_token_id() {
                cfg["bos_token_id"] = b.into();
            }
            if let Some(&e) = tok.eos_token_ids().first() {
                cfg["eos_token_id"] = e.into();
            }
            let p = dir.join("config.json");
            std::fs::write(&p, serde_json::to_string_pretty(&cfg).expect("json") + "\n")
                .map_err(io_err(&p))?;
            let p = dir.join("tokenizer.json");
            tok.hf()
                .save(&p, true)
                .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", p.display())))?;
            let name = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i));
            let mut tc = serde_json::json!({
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": name(tok.bos_token_id()),
                "eos_token": name(tok.eos_token_ids().first().copied()),
                "model_max_length": info.context_length,
            });
            if let Some(t) = tok.chat_template() {
                tc["chat_template"] = t.source().into();
            }
            let p = dir.join("tokenizer_config.json");
            std::fs::write(&p, serde_json::to_string_pretty(&tc).expect("json") + "\n")
                .map_err(io_err(&p))?;
        }
    }
    Ok(())
}

/// Restores weights, optimizer moments and the step from a checkpoint.
fn resume(dir: &Path, model: &Trainable, opt: &mut AdamW, lora: bool) -> Result<TrainerState> {
    let p = dir.join(STATE);
    let text = std::fs::read_to_string(&p).map_err(io_err(&p))?;
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", p.display())))?;
    let load = |f: &Path| -> Result<BTreeMap<String, Tensor>> {
        Ok(candle_core::safetensors::load(f, &Device::Cpu)
            .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", f.display())))?
            .into_iter()
            .collect())
    };
    if lora {
        model.load_adapter(&load(&dir.join(crate::peft::WEIGHTS))?)?;
    } else {
        model.load_state(&load(&dir.join("model.safetensors"))?)?;
    }
    crate::checkpoint::load_optimizer(dir, opt, state.global_step)?;
    Ok(state)
}
