//! Opening a model: a GGUF file or a Hugging Face folder, dispatched on its architecture.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use seek_gguf::GgufFile;
use serde::Serialize;

use crate::deepseek_v3::{self, DeepseekConfig, DeepseekV3};
use crate::llama::{self, config_err, DecoderConfig, Llama};
use crate::weights::Weights;
use crate::{qwen2, CausalLm, ModelError, Result};

const SUPPORTED: &str =
    "llama (SmolLM2, Llama 3, R1-Distill-Llama), qwen2 (Qwen2.5, R1-Distill-Qwen), qwen3 (Qwen3, R1-0528-Qwen3) and deepseek_v3 / deepseek_v2 (DeepSeek-V3, R1; GGUF deepseek2)";

/// The checked settings of one of the supported families.
#[derive(Debug, Clone)]
enum ArchConfig {
    /// `llama` and `qwen2`: the Llama decoder.
    Llama(DecoderConfig),
    /// DeepSeek-V2/V3/R1: MLA + DeepSeekMoE.
    Deepseek(DeepseekConfig),
}

/// How to load weights.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where to place tensors.
    pub device: Device,
    /// Compute type for safetensors weights (GGUF keeps its encodings and computes in f32).
    pub dtype: DType,
    /// Threads for the quantized kernels (default: every core).
    pub threads: Option<usize>,
    /// A LoRA adapter applied on top of the weights (unmerged), for `llama` and `qwen2`.
    pub lora: Option<crate::llama::LoraAdapter>,
    /// GGUF: read the file into memory instead of mapping it (llama.cpp's `--no-mmap`).
    pub no_mmap: bool,
    /// GGUF: lock the weights in memory (llama.cpp's `--mlock`).
    pub mlock: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            threads: None,
            lora: None,
            no_mmap: false,
            mlock: false,
        }
    }
}

/// What kind of file a model came from.
#[derive(Debug, Clone)]
pub enum ModelFormat {
    /// A GGUF file; the tokenizer and chat template are in its metadata.
    Gguf(Arc<GgufFile>),
    /// A Hugging Face folder with `config.json`, safetensors and `tokenizer.json`.
    HfDir(PathBuf),
}

/// A summary of a model for `seek inspect` and logs.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// `llama` or `qwen2`.
    pub architecture: String,
    /// Model name from the metadata, when present.
    pub name: Option<String>,
    /// The file or folder.
    pub path: PathBuf,
    /// `gguf` or `safetensors`.
    pub format: &'static str,
    /// Number of weights.
    pub parameters: u64,
    /// Bytes of weight data.
    pub weight_bytes: u64,
    /// Number of weights per encoding, e.g. `Q4_K` -> 123456.
    pub weight_types: BTreeMap<String, u64>,
    /// V.
    pub vocab_size: usize,
    /// E.
    pub hidden_size: usize,
    /// F.
    pub intermediate_size: usize,
    /// Layers.
    pub num_layers: usize,
    /// H.
    pub num_heads: usize,
    /// Hkv.
    pub num_kv_heads: usize,
    /// D.
    pub head_dim: usize,
    /// Training context length.
    pub context_length: usize,
    /// RoPE base.
    pub rope_theta: f64,
    /// KV-cache bytes per token: keys and values of every layer (MLA: the latent and the
    /// rope key), in f16 for Llama-family GGUF files (the cache type of the CPU kernels, as
    /// llama.cpp) and f32 otherwise; [`load`] sets it to the type the loaded model's cache
    /// really uses.
    pub kv_bytes_per_token: u64,
    /// The type the cache stores values in (`f16`, `f32`, `bf16`).
    pub kv_cache_dtype: String,
    /// What the cache holds per token and layer, in words.
    pub kv_cache_layout: String,
    /// Weights one token uses (all of them for a dense model; a MoE model skips the routed
    /// experts it does not visit, and uses one row of the embedding).
    pub active_parameters: u64,
    /// Experts, for a MoE model: e.g. `256 routed (8 per token, 8 groups, top 4) + 1 shared`.
    pub experts: Option<String>,
}

/// A model ready to run, with what was learnt while loading it.
pub struct LoadedModel {
    /// The network.
    pub model: Box<dyn CausalLm>,
    /// Its summary.
    pub info: ModelInfo,
    /// The source, for the tokenizer.
    pub format: ModelFormat,
}

/// Reads what a model is without loading its weights (fast; works on truncated GGUF files).
pub fn inspect(path: &Path) -> Result<(ModelInfo, ModelFormat)> {
    let d = describe(path)?;
    Ok((d.info, d.format))
}

/// What [`inspect`] learns, plus what [`load`] needs from the same reading.
struct Described {
    info: ModelInfo,
    format: ModelFormat,
    arch: ArchConfig,
    /// FP8 block size from `quantization_config.weight_block_size`.
    fp8_block: Option<(usize, usize)>,
    /// The safetensors files of a Hugging Face folder (empty for GGUF).
    files: Vec<PathBuf>,
}

fn describe(path: &Path) -> Result<Described> {
    describe_with(path, seek_gguf::OpenOptions::default())
}

fn gguf_open(opts: &LoadOptions) -> seek_gguf::OpenOptions {
    seek_gguf::OpenOptions {
        no_mmap: opts.no_mmap,
        mlock: opts.mlock,
    }
}

fn describe_with(path: &Path, open: seek_gguf::OpenOptions) -> Result<Described> {
    if path.is_dir() {
        if let Some(gguf) = single_gguf_in(path)? {
            return describe_with(&gguf, open);
        }
        let (arch, decoder, fp8_block) = hf_config(path)?;
        // A folder with only config.json can still be inspected (parameters counted from the
        // config); loading it fails with the missing-weights message.
        let has_weights = path.join("model.safetensors.index.json").is_file()
            || std::fs::read_dir(path).is_ok_and(|d| {
                d.filter_map(|e| e.ok())
                    .any(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
            });
        let files = if has_weights {
            safetensors_files(path)?
        } else {
            Vec::new()
        };
        let (parameters, weight_bytes, weight_types) = if has_weights {
            safetensors_stats(&files)?
        } else {
            (decoder.parameter_count(), 0, BTreeMap::new())
        };
        let info = info_from(
            &arch,
            None,
            path,
            "safetensors",
            &decoder,
            parameters,
            weight_bytes,
            weight_types,
        );
        let format = ModelFormat::HfDir(path.to_path_buf());
        Ok(Described {
            info,
            format,
            arch: decoder,
            fp8_block,
            files,
        })
    } else {
        let file = Arc::new(GgufFile::open_with(path, open)?);
        let (arch, decoder) = gguf_config(&file)?;
        let mut types = BTreeMap::new();
        let (mut params, mut bytes) = (0, 0);
        for t in &file.tensors {
            *types.entry(t.ggml_type.name().to_string()).or_insert(0) += t.n_elements();
            params += t.n_elements();
            bytes += t.n_bytes;
        }
        let name = file.get_str("general.name").ok().map(str::to_string);
        let info = info_from(&arch, name, path, "gguf", &decoder, params, bytes, types);
        Ok(Described {
            info,
            format: ModelFormat::Gguf(file),
            arch: decoder,
            fp8_block: None,
            files: Vec::new(),
        })
    }
}

/// Loads a model from a GGUF file or a Hugging Face folder (a folder holding one `.gguf`
/// file counts as that file).
pub fn load(path: &Path, opts: &LoadOptions) -> Result<LoadedModel> {
    let Described {
        mut info,
        format,
        arch,
        fp8_block,
        files,
    } = describe_with(path, gguf_open(opts))?;
    let w = weights_for(&format, files, fp8_block, opts)?;
    let model: Box<dyn CausalLm> = match &arch {
        // llama and qwen2 are both the Llama decoder; `decoder` holds their differences.
        ArchConfig::Llama(decoder) => {
            let m = Llama::from_decoder(decoder.clone(), &w)?;
            Box::new(match &opts.lora {
                Some(a) => m.with_lora(a)?,
                None => m,
            })
        }
        ArchConfig::Deepseek(_) if opts.lora.is_some() => {
            return Err(config_err(
                path,
                "LoRA adapters at inference apply to llama and qwen2 models so far; merge the adapter into a full checkpoint instead".into(),
            ))
        }
        ArchConfig::Deepseek(c) => Box::new(DeepseekV3::from_config(c.clone(), &w)?),
    };
    let cache_dtype = model.new_cache().dtype().unwrap_or(w.dtype());
    info.kv_bytes_per_token = arch.kv_bytes_per_token(cache_dtype.size_in_bytes());
    info.kv_cache_dtype = cache_dtype.as_str().to_string();
    Ok(LoadedModel {
        model,
        info,
        format,
    })
}

/// A llama / qwen2 model read once and kept to take LoRA adapters: GRPO's rollouts after each
/// optimizer step get the base with the step's adapter without reading and building the model
/// again (the weights, the memory map and the kernels' thread pool are shared).
pub struct LoraBase {
    model: Llama,
}

impl LoraBase {
    /// Reads the base (without an adapter).
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Self> {
        let Described {
            format,
            arch,
            fp8_block,
            files,
            ..
        } = describe(path)?;
        let w = weights_for(&format, files, fp8_block, opts)?;
        match &arch {
            ArchConfig::Llama(decoder) => Ok(Self {
                model: Llama::from_decoder(decoder.clone(), &w)?,
            }),
            ArchConfig::Deepseek(_) => Err(config_err(
                path,
                "LoRA adapters at inference apply to llama and qwen2 models so far".into(),
            )),
        }
    }

    /// The base with `adapter` applied (unmerged), ready for an engine.
    pub fn with_adapter(&self, adapter: &crate::llama::LoraAdapter) -> Result<Box<dyn CausalLm>> {
        Ok(Box::new(self.model.clone().with_lora(adapter)?))
    }
}

/// Opens a model for training: the differentiable form of its architecture, with the
/// trainable parameters `opts` asks for. GGUF weights are dequantized to f32, except a LoRA
/// run's base with `opts.quantized_base`, which stays in the file's encoding.
pub fn load_trainable(
    path: &Path,
    load: &LoadOptions,
    opts: &crate::autograd::TrainableOptions,
) -> Result<(crate::autograd::Trainable, ModelInfo, ModelFormat)> {
    let Described {
        info,
        format,
        arch,
        fp8_block,
        files,
    } = describe(path)?;
    let w = weights_for(&format, files, fp8_block, load)?;
    let model = match arch {
        ArchConfig::Llama(decoder) if decoder.qk_norm => {
            return Err(config_err(
                path,
                "training qwen3 models is not supported yet (its per-head q/k norms have no training path); train a llama or qwen2 model, or run this one".into(),
            ))
        }
        ArchConfig::Llama(decoder) => crate::autograd::llama::build(decoder, &w, opts)?,
        ArchConfig::Deepseek(c) => crate::autograd::deepseek::build(c, &w, opts)?,
    };
    Ok((model, info, format))
}

/// The weight source of a described model.
fn weights_for(
    format: &ModelFormat,
    files: Vec<PathBuf>,
    fp8_block: Option<(usize, usize)>,
    opts: &LoadOptions,
) -> Result<Weights> {
    Ok(match format {
        ModelFormat::Gguf(file) => {
            // One clear message for a truncated download, before any tensor is touched.
            file.check_tensor_data()?;
            let threads = opts
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let pool = seek_kernels::ThreadPool::new(threads)
                .map_err(|e| config_err(file.path(), e.to_string()))?;
            Weights::Gguf {
                file: file.clone(),
                device: opts.device.clone(),
                kernels: Some(Arc::new(pool)),
            }
        }
        ModelFormat::HfDir(dir) => {
            let files = if files.is_empty() {
                safetensors_files(dir)?
            } else {
                files
            };
            let w = Weights::from_safetensors(dir, &files, opts.dtype, &opts.device)?;
            match fp8_block {
                Some(b) => w.with_fp8_block(b),
                None => w,
            }
        }
    })
}

impl ArchConfig {
    /// Weights the config implies (for a folder that holds only `config.json`).
    fn parameter_count(&self) -> u64 {
        match self {
            Self::Llama(d) => d.parameter_count(),
            Self::Deepseek(d) => d.parameter_count(),
        }
    }

    fn kv_bytes_per_token(&self, bytes_per_value: usize) -> u64 {
        match self {
            Self::Llama(d) => d.kv_bytes_per_token(bytes_per_value),
            Self::Deepseek(d) => d.kv_bytes_per_token(bytes_per_value),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn info_from(
    arch: &str,
    name: Option<String>,
    path: &Path,
    format: &'static str,
    cfg: &ArchConfig,
    parameters: u64,
    weight_bytes: u64,
    weight_types: BTreeMap<String, u64>,
) -> ModelInfo {
    let base = ModelInfo {
        architecture: arch.to_string(),
        name,
        path: path.to_path_buf(),
        format,
        parameters,
        weight_bytes,
        weight_types,
        vocab_size: 0,
        hidden_size: 0,
        intermediate_size: 0,
        num_layers: 0,
        num_heads: 0,
        num_kv_heads: 0,
        head_dim: 0,
        context_length: 0,
        rope_theta: 0.0,
        kv_bytes_per_token: 0,
        kv_cache_dtype: "f32".into(),
        kv_cache_layout: String::new(),
        active_parameters: parameters,
        experts: None,
    };
    match cfg {
        ArchConfig::Llama(dec) => ModelInfo {
            vocab_size: dec.vocab_size,
            hidden_size: dec.hidden_size,
            intermediate_size: dec.intermediate_size,
            num_layers: dec.num_layers,
            num_heads: dec.num_heads,
            num_kv_heads: dec.num_kv_heads,
            head_dim: dec.head_dim,
            context_length: dec.max_position_embeddings,
            rope_theta: dec.rope.theta,
            kv_bytes_per_token: dec.kv_bytes_per_token(if format == "gguf" { 2 } else { 4 }),
            kv_cache_dtype: if format == "gguf" { "f16" } else { "f32" }.into(),
            kv_cache_layout: format!(
                "keys and values, {} heads x {} per layer",
                dec.num_kv_heads, dec.head_dim
            ),
            ..base
        },
        ArchConfig::Deepseek(c) => ModelInfo {
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_layers: c.num_layers,
            num_heads: c.num_heads,
            num_kv_heads: 1,
            head_dim: c.qk_nope_head_dim + c.qk_rope_head_dim,
            context_length: c.max_position_embeddings,
            rope_theta: c.rope_theta,
            kv_bytes_per_token: c.kv_bytes_per_token(4),
            kv_cache_layout: format!(
                "MLA latent {} + rope key {} per layer (per-head keys and values would be {} per token)",
                c.kv_lora_rank,
                c.qk_rope_head_dim,
                human_bytes(c.expanded_kv_bytes_per_token(4))
            ),
            active_parameters: c.active_parameters(parameters),
            experts: c.routing.as_ref().map(|r| {
                let groups = if r.n_group > 1 {
                    format!(", {} groups, top {}", r.n_group, r.topk_group)
                } else {
                    String::new()
                };
                format!(
                    "{} routed ({} per token{groups}) + {} shared; {} dense layers",
                    r.n_experts, r.top_k, c.n_shared_experts, c.first_k_dense_replace
                )
            }),
            ..base
        },
    }
}

fn human_bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.2} MiB", b as f64 / (1 << 20) as f64)
    } else {
        format!("{:.1} KiB", b as f64 / 1024.0)
    }
}

fn gguf_config(file: &Arc<GgufFile>) -> Result<(String, ArchConfig)> {
    let arch = file.get_str("general.architecture")?.to_string();
    let dec = match arch.as_str() {
        "llama" => ArchConfig::Llama(DecoderConfig::from_gguf(file, "llama", false)?),
        "qwen2" => ArchConfig::Llama(DecoderConfig::from_gguf(file, "qwen2", true)?),
        "qwen3" => ArchConfig::Llama(DecoderConfig::from_gguf(file, "qwen3", false)?),
        "deepseek2" => ArchConfig::Deepseek(DeepseekConfig::from_gguf(file)?),
        _ => {
            return Err(ModelError::UnsupportedArchitecture {
                path: file.path().to_path_buf(),
                arch,
                supported: SUPPORTED,
            })
        }
    };
    Ok((arch, dec))
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| config_err(path, format!("not valid JSON: {e}")))
}

type Fp8Block = Option<(usize, usize)>;

fn hf_config(dir: &Path) -> Result<(String, ArchConfig, Fp8Block)> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Err(config_err(
            dir,
            "no config.json here: pass a GGUF file, a Hugging Face model folder (config.json, *.safetensors, tokenizer.json) or a repo id".into(),
        ));
    }
    let json = read_json(&path)?;
    let model_type = json
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let parse = |what| config_err(&path, format!("{what}"));
    let fp8_block = fp8_block(&json).map_err(|p| config_err(&path, p))?;
    let dec = match model_type.as_str() {
        "llama" => {
            let c: llama::Config = serde_json::from_value(json).map_err(parse)?;
            c.decoder().map(ArchConfig::Llama)
        }
        "qwen2" => {
            let c: qwen2::Config = serde_json::from_value(json).map_err(parse)?;
            c.decoder().map(ArchConfig::Llama)
        }
        // Qwen3: the Llama decoder with a head size of its own, no q/k/v biases (unless
        // `attention_bias`), and an RMSNorm over each head of q and k.
        "qwen3" => {
            let c: llama::Config = serde_json::from_value(json).map_err(parse)?;
            c.decoder().map(|mut d| {
                d.qk_norm = true;
                ArchConfig::Llama(d)
            })
        }
        "deepseek_v3" | "deepseek_v2" => {
            let c: deepseek_v3::Config = serde_json::from_value(json).map_err(parse)?;
            c.checked().map(ArchConfig::Deepseek)
        }
        _ => {
            return Err(ModelError::UnsupportedArchitecture {
                path: path.clone(),
                arch: if model_type.is_empty() {
                    "(no model_type)".into()
                } else {
                    model_type
                },
                supported: SUPPORTED,
            })
        }
    }
    .map_err(|p| config_err(&path, p))?;
    Ok((model_type, dec, fp8_block))
}

/// The block size of FP8 weights (`quantization_config` with `quant_method` "fp8"), if any.
fn fp8_block(json: &serde_json::Value) -> std::result::Result<Fp8Block, String> {
    let Some(q) = json.get("quantization_config") else {
        return Ok(None);
    };
    match q.get("quant_method").and_then(|m| m.as_str()) {
        Some("fp8") => {}
        Some(other) => {
            return Err(format!(
                "quantization_config.quant_method {other:?} is not supported (fp8 block-scaled, or unquantized weights; GGUF for other quantizations)"
            ))
        }
        None => return Ok(None),
    }
    let block = q
        .get("weight_block_size")
        .and_then(|b| b.as_array())
        .map(|b| b.iter().filter_map(|x| x.as_u64()).collect::<Vec<_>>());
    match block.as_deref() {
        None => Ok(Some((128, 128))),
        Some([r, c]) if (1..=1 << 16).contains(r) && (1..=1 << 16).contains(c) => {
            Ok(Some((*r as usize, *c as usize)))
        }
        Some(other) => Err(format!(
            "quantization_config.weight_block_size {other:?} must be two sizes, e.g. [128, 128]"
        )),
    }
}

fn single_gguf_in(dir: &Path) -> Result<Option<PathBuf>> {
    if dir.join("config.json").exists() {
        return Ok(None);
    }
    let entries = std::fs::read_dir(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let ggufs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    // The parts of one split model (NAME-0000k-of-0000n.gguf) count as one file: its first part.
    let firsts: Vec<&PathBuf> = ggufs
        .iter()
        .filter(|p| {
            seek_gguf::split_path(p, 0, 1).is_some()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.contains("-00001-of-"))
        })
        .collect();
    let all_parts_of_one = firsts.len() == 1
        && ggufs.iter().all(|p| {
            let (a, b) = (p.to_string_lossy(), firsts[0].to_string_lossy());
            let stem = |s: &str| {
                s.rsplit_once("-of-")
                    .and_then(|(x, _)| x.rsplit_once('-').map(|y| y.0.to_string()))
            };
            stem(&a).is_some() && stem(&a) == stem(&b)
        });
    if all_parts_of_one {
        return Ok(Some(firsts[0].clone()));
    }
    match ggufs.len() {
        0 => Ok(None),
        1 => Ok(ggufs.into_iter().next()),
        n => Err(config_err(
            dir,
            format!("the folder holds {n} .gguf files; pass the one to run"),
        )),
    }
}

/// The safetensors files of a folder: those named by `model.safetensors.index.json`, else
/// `model.safetensors`, else every `*.safetensors`.
pub(crate) fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let json = read_json(&index)?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| config_err(&index, "has no \"weight_map\" object".into()))?;
        let mut names: Vec<&str> = Vec::new();
        for v in map.values() {
            let f = v
                .as_str()
                .ok_or_else(|| config_err(&index, "weight_map values must be file names".into()))?;
            // The index is untrusted: shard names must be plain file names inside the folder.
            if f.contains('/') || f.contains('\\') || f == ".." || !f.ends_with(".safetensors") {
                return Err(config_err(
                    &index,
                    format!("shard name {f:?} is not a plain *.safetensors file name"),
                ));
            }
            if !names.contains(&f) {
                names.push(f);
            }
        }
        names.sort();
        let files: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
        if let Some(missing) = files.iter().find(|f| !f.is_file()) {
            return Err(config_err(
                &index,
                format!(
                    "names shard {}, which is not in the folder; download every shard",
                    missing.display()
                ),
            ));
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let entries = std::fs::read_dir(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(config_err(dir, "no *.safetensors weights in the folder (PyTorch .bin checkpoints are not supported: convert them to safetensors)".into()));
    }
    Ok(files)
}

fn safetensors_stats(files: &[PathBuf]) -> Result<(u64, u64, BTreeMap<String, u64>)> {
    let (mut params, mut bytes, mut types) = (0u64, 0u64, BTreeMap::new());
    for f in files {
        let header = read_safetensors_header(f)?;
        for (name, t) in header.as_object().into_iter().flatten() {
            if name == "__metadata__" {
                continue;
            }
            let n: u64 = t
                .get("shape")
                .and_then(|s| s.as_array())
                .map(|s| s.iter().filter_map(|d| d.as_u64()).product())
                .unwrap_or(0);
            let dtype = t
                .get("dtype")
                .and_then(|d| d.as_str())
                .unwrap_or("?")
                .to_string();
            if let Some([a, b]) = t
                .get("data_offsets")
                .and_then(|o| o.as_array())
                .map(|o| o.as_slice())
            {
                bytes += b
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_sub(a.as_u64().unwrap_or(0));
            }
            params += n;
            *types.entry(dtype).or_insert(0) += n;
        }
    }
    Ok((params, bytes, types))
}

/// The JSON header of a safetensors file, read with its length checked first.
fn read_safetensors_header(path: &Path) -> Result<serde_json::Value> {
    use std::io::Read;
    const MAX_HEADER: u64 = 100 << 20;
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let file_len = f.metadata().map_err(io)?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| config_err(path, "too short to be a safetensors file".into()))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER || len + 8 > file_len {
        return Err(config_err(path, format!("safetensors header claims {len} bytes; the file ({file_len} bytes) is corrupt or truncated")));
    }
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).map_err(io)?;
    serde_json::from_slice(&buf)
        .map_err(|e| config_err(path, format!("safetensors header is not valid JSON: {e}")))
}

/// What running a model takes in memory beside what the machine has: the weights (mapped
/// files are read in place, so they count once, in the page cache), the KV cache for a
/// context, and the memory available (`MemAvailable`, or less under a cgroup limit).
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPlan {
    /// Bytes of weights.
    pub weight_bytes: u64,
    /// Tokens of context the KV cache is sized for.
    pub context: usize,
    /// Bytes of KV cache for `context` tokens.
    pub kv_bytes: u64,
    /// Bytes the machine (or the process's cgroup) has free, when known.
    pub available: Option<u64>,
}

impl MemoryPlan {
    /// The plan for `info` with a KV cache of `context` tokens.
    pub fn new(info: &ModelInfo, context: usize) -> Self {
        Self {
            weight_bytes: info.weight_bytes,
            context,
            kv_bytes: info.kv_bytes_per_token.saturating_mul(context as u64),
            available: available_memory(),
        }
    }

    /// Weights plus KV cache.
    pub fn needed(&self) -> u64 {
        self.weight_bytes.saturating_add(self.kv_bytes)
    }

    /// Whether it fits in what is available (`None`: unknown).
    pub fn fits(&self) -> Option<bool> {
        self.available.map(|a| self.needed() <= a)
    }

    /// One line for the log; when it does not fit, what happens and what to do.
    pub fn message(&self, mapped: bool) -> String {
        let gib = |b: u64| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64);
        let mut s = format!(
            "memory: weights {} + KV cache {} for {} tokens = about {}; available {}",
            gib(self.weight_bytes),
            gib(self.kv_bytes),
            self.context,
            gib(self.needed()),
            self.available.map_or("unknown".into(), gib)
        );
        if self.fits() == Some(false) {
            s.push_str(if mapped {
                ". It does not fit: the weights stay mapped and the OS reads them from disk as they are used (MoE experts included), so expect decoding at disk speed, far slower than in memory. Use a smaller quant or a shorter context; --mlock makes this an error instead"
            } else {
                ". It does not fit and --no-mmap copies the weights into memory: expect swapping or the OOM killer. Drop --no-mmap (the weights are then read in place from disk), or use a smaller quant or a shorter context"
            });
        }
        s
    }
}

/// `MemAvailable` from /proc/meminfo, lowered to the headroom of the process's own cgroup
/// (v2 `memory.max` - `memory.current`, or v1 `memory.limit_in_bytes` - `memory.usage_in_bytes`)
/// when one is set (containers, systemd services).
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let host = meminfo.as_deref().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let read = |f: String| -> Option<u64> { std::fs::read_to_string(f).ok()?.trim().parse().ok() };
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut cgroup = None;
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrl), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let headroom = if ctrl.is_empty() {
            let dir = format!("/sys/fs/cgroup{path}");
            read(format!("{dir}/memory.max"))
                .zip(read(format!("{dir}/memory.current")))
                .map(|(max, cur)| max.saturating_sub(cur))
        } else if ctrl.split(',').any(|c| c == "memory") {
            let dir = format!("/sys/fs/cgroup/memory{path}");
            read(format!("{dir}/memory.limit_in_bytes"))
                .zip(read(format!("{dir}/memory.usage_in_bytes")))
                .map(|(max, cur)| max.saturating_sub(cur))
        } else {
            None
        };
        if let Some(h) = headroom {
            cgroup = Some(cgroup.map_or(h, |c: u64| c.min(h)));
        }
    }
    match (host, cgroup) {
        (Some(h), Some(c)) => Some(h.min(c)),
        (h, c) => h.or(c),
    }
}

#[cfg(test)]
mod memory_tests {
    use super::*;

    #[test]
    fn a_plan_says_whether_the_model_fits_and_what_to_do() {
        let plan = MemoryPlan {
            weight_bytes: 40 << 30,
            context: 4096,
            kv_bytes: 2 << 30,
            available: Some(16 << 30),
        };
        assert_eq!(plan.fits(), Some(false));
        let m = plan.message(true);
        assert!(
            m.contains("about 42.00 GiB") && m.contains("disk speed"),
            "{m}"
        );
        assert!(plan.message(false).contains("Drop --no-mmap"));
        let small = MemoryPlan {
            available: Some(64 << 30),
            ..plan
        };
        assert_eq!(small.fits(), Some(true));
        assert!(!small.message(true).contains("does not fit"));
        // This machine reports something.
        assert!(available_memory().is_some_and(|b| b > 0));
    }
}
