//! Export to GGUF, so that llama.cpp and Ollama run what Seek trained.
//!
//! The base model's GGUF file supplies everything that is not a weight (architecture
//! hyperparameters, tokenizer, chat template), copied key by key; the weights come from the
//! trained state (a LoRA adapter merged into the base, or a full fine-tune's
//! `model.safetensors`), under llama.cpp's tensor names, with `llama` q/k rows permuted back
//! the way llama.cpp's converter writes them. Matrices are written as F16 (or F32), vectors
//! (norms, biases) as F32, as `convert_hf_to_gguf.py --outtype f16` does.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use seek_gguf::writer::GgufWriter;
use seek_gguf::{GgmlType, GgufFile, Value};
use seek_models::weights::gguf_name;

use crate::{io_err, Result, TrainError};

/// The element type of exported matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportType {
    /// Half precision (llama.cpp's usual `--outtype f16`).
    F16,
    /// Full precision.
    F32,
}

impl std::str::FromStr for ExportType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Ok(Self::F16),
            "f32" => Ok(Self::F32),
            other => Err(format!("{other:?}: use f16 or f32")),
        }
    }
}

/// Writes `state` (Hugging Face names and row order) as a GGUF file at `out`, with the
/// metadata of `base` (the GGUF file the model was trained from).
pub fn write_gguf(
    base: &GgufFile,
    state: &BTreeMap<String, Tensor>,
    ty: ExportType,
    out: &Path,
) -> Result<()> {
    let arch = base
        .get_str("general.architecture")
        .map_err(|e| TrainError::Config(e.to_string()))?
        .to_string();
    let heads = |k: &str| {
        base.get_u64(&format!("{arch}.{k}"))
            .ok()
            .map(|v| v as usize)
    };
    let (h, hkv) = (
        heads("attention.head_count"),
        heads("attention.head_count_kv"),
    );
    let mut w = GgufWriter::new();
    for (k, v) in &base.metadata {
        match k.as_str() {
            // The writer aligns to 32 bytes; the split keys describe the base's parts.
            "general.alignment" | "split.no" | "split.count" | "split.tensors.count" => {}
            "general.file_type" => {}
            _ => w = w.meta(k, v.clone()),
        }
    }
    // llama.cpp's LLAMA_FTYPE: 0 all F32, 1 mostly F16.
    let file_type = match ty {
        ExportType::F32 => 0u32,
        ExportType::F16 => 1,
    };
    w = w.meta("general.file_type", Value::U32(file_type));
    let mut written = std::collections::BTreeSet::new();
    for (hf, t) in state {
        let name = gguf_name(hf);
        let mut t = t.to_dtype(DType::F32)?;
        // llama.cpp's converter permutes q/k rows of `llama` models for interleaved RoPE.
        if arch == "llama" {
            let n = if hf.ends_with("self_attn.q_proj.weight")
                || hf.ends_with("self_attn.q_proj.bias")
            {
                h
            } else if hf.ends_with("self_attn.k_proj.weight")
                || hf.ends_with("self_attn.k_proj.bias")
            {
                hkv.or(h)
            } else {
                None
            };
            if let Some(n) = n {
                t = seek_models::llama_permute_rows(&t, n)?;
            }
        }
        let dims: Vec<u64> = t.dims().iter().rev().map(|&d| d as u64).collect();
        let values: Vec<f32> = t.flatten_all()?.to_vec1()?;
        let (gty, data) = if dims.len() >= 2 && ty == ExportType::F16 {
            let data = values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect();
            (GgmlType::F16, data)
        } else {
            (
                GgmlType::F32,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        };
        w = w.tensor(&name, &dims, gty, data);
        written.insert(name);
    }
    // Tensors of the base that are not weights of the decoder (llama 3's rope_freqs) are
    // copied as they are.
    for info in &base.tensors {
        if written.contains(&info.name) {
            continue;
        }
        let is_weight = info.name.starts_with("blk.")
            || matches!(
                info.name.as_str(),
                "token_embd.weight" | "output_norm.weight" | "output.weight"
            );
        if is_weight {
            return Err(TrainError::Config(format!(
                "the trained state has no tensor for {:?}; it does not belong to this base model",
                info.name
            )));
        }
        let data = base
            .tensor_data(info)
            .map_err(|e| TrainError::Config(e.to_string()))?;
        w = w.tensor(&info.name, &info.dims, info.ggml_type, data.to_vec());
    }
    let tmp = out.with_extension("gguf.tmp");
    std::fs::write(&tmp, w.to_bytes()).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, out).map_err(io_err(out))?;
    Ok(())
}
