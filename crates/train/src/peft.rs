//! LoRA adapters in PEFT's layout: `adapter_config.json` and `adapter_model.safetensors`
//! with PEFT's keys (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`), so
//! Python `peft` loads what Seek trains and Seek loads what `peft` trains.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use seek_models::autograd::LoraConfig;
use serde_json::json;

use crate::{io_err, Result, TrainError};

/// File names PEFT uses.
pub const CONFIG: &str = "adapter_config.json";
/// The weights file.
pub const WEIGHTS: &str = "adapter_model.safetensors";

/// Reads an adapter folder: its LoRA settings and tensors.
pub fn read_adapter(dir: &Path) -> Result<(LoraConfig, BTreeMap<String, Tensor>)> {
    let cfg_path = dir.join(CONFIG);
    let text = std::fs::read_to_string(&cfg_path).map_err(io_err(&cfg_path))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        TrainError::Checkpoint(format!("{}: not valid JSON: {e}", cfg_path.display()))
    })?;
    let bad = |what: &str| {
        TrainError::Checkpoint(format!(
            "{}: {what}; this is not a PEFT LoRA adapter config",
            cfg_path.display()
        ))
    };
    if v.get("peft_type").and_then(|p| p.as_str()) != Some("LORA") {
        return Err(bad("peft_type is not \"LORA\""));
    }
    let r = v
        .get("r")
        .and_then(|x| x.as_u64())
        .ok_or_else(|| bad("no integer r"))? as usize;
    let alpha = v
        .get("lora_alpha")
        .and_then(|x| x.as_f64())
        .ok_or_else(|| bad("no lora_alpha"))?;
    let target_modules = match v.get("target_modules") {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => return Err(bad("no target_modules")),
    };
    let cfg = LoraConfig {
        r,
        alpha,
        dropout: v
            .get("lora_dropout")
            .and_then(|x| x.as_f64())
            .unwrap_or(0.0),
        target_modules,
        use_rslora: v
            .get("use_rslora")
            .and_then(|x| x.as_bool())
            .unwrap_or(false),
    };
    let wpath = dir.join(WEIGHTS);
    if !wpath.is_file() {
        return Err(TrainError::Checkpoint(format!(
            "{}: missing; an adapter folder holds {CONFIG} and {WEIGHTS}",
            wpath.display()
        )));
    }
    let tensors = candle_core::safetensors::load(&wpath, &Device::Cpu)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", wpath.display())))?;
    Ok((cfg, tensors.into_iter().collect()))
}

/// PEFT's `adapter_config.json` for `cfg`.
pub fn config_json(cfg: &LoraConfig, base_model: &str) -> String {
    let target: serde_json::Value =
        if cfg.target_modules.len() == 1 && cfg.target_modules[0] == "all-linear" {
            json!("all-linear")
        } else {
            json!(cfg.target_modules)
        };
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": target,
        "use_rslora": cfg.use_rslora,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "use_dora": false,
        "revision": null,
    });
    serde_json::to_string_pretty(&config).expect("json") + "\n"
}

/// Writes an adapter's two files into `dir` (the caller makes the folder appear atomically:
/// a checkpoint's temporary folder).
pub fn write_adapter_files(
    dir: &Path,
    cfg: &LoraConfig,
    base_model: &str,
    tensors: BTreeMap<String, Tensor>,
) -> Result<()> {
    let p = dir.join(CONFIG);
    std::fs::write(&p, config_json(cfg, base_model)).map_err(io_err(&p))?;
    let map: HashMap<String, Tensor> = tensors.into_iter().collect();
    candle_core::safetensors::save(&map, dir.join(WEIGHTS))?;
    Ok(())
}
