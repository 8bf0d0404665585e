//! Checkpoints: written into a temporary folder and renamed into place, so a run killed at
//! any moment leaves either the previous checkpoint or the new one, never half of one.

use std::path::{Path, PathBuf};

use std::collections::{BTreeMap, HashMap};

use candle_core::{Device, Tensor};

use crate::optim::{AdamW, Moments};
use crate::{io_err, Result, TrainError};

/// The optimizer moments' file in a checkpoint (PyTorch's `exp_avg` / `exp_avg_sq` names).
pub const OPTIMIZER: &str = "optimizer.safetensors";

/// Writes `opt`'s moments into `dir/optimizer.safetensors`.
pub fn save_optimizer(dir: &Path, opt: &AdamW) -> Result<()> {
    let mut t: HashMap<String, Tensor> = HashMap::new();
    for ((name, var), m) in opt.vars().iter().zip(opt.state()) {
        t.insert(
            format!("exp_avg.{name}"),
            Tensor::from_vec(m.m.clone(), var.shape(), &Device::Cpu)?,
        );
        t.insert(
            format!("exp_avg_sq.{name}"),
            Tensor::from_vec(m.v.clone(), var.shape(), &Device::Cpu)?,
        );
    }
    candle_core::safetensors::save(&t, dir.join(OPTIMIZER))?;
    Ok(())
}

/// Reads a safetensors file of a checkpoint.
pub fn load_tensors(f: &Path) -> Result<BTreeMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(f, &Device::Cpu)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", f.display())))?
        .into_iter()
        .collect())
}

/// Restores `opt`'s moments from `dir/optimizer.safetensors`, at optimizer step `step`.
pub fn load_optimizer(dir: &Path, opt: &mut AdamW, step: u64) -> Result<()> {
    let t = load_tensors(&dir.join(OPTIMIZER))?;
    let mut moments = Vec::new();
    for (name, _) in opt.vars() {
        let get = |k: String| -> Result<Vec<f32>> {
            let t = t.get(&k).ok_or_else(|| {
                TrainError::Checkpoint(format!("{}: no {k}", dir.join(OPTIMIZER).display()))
            })?;
            crate::optim::flat(t)
        };
        moments.push(Moments {
            m: get(format!("exp_avg.{name}"))?,
            v: get(format!("exp_avg_sq.{name}"))?,
        });
    }
    opt.set_state(moments, step)
}

/// Builds `dir` through `fill(tmp)` in a sibling temporary folder, then renames it into
/// place (replacing an existing `dir`).
pub fn atomic_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "out".into());
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    fill(&tmp)?;
    let old: Option<PathBuf> = if dir.exists() {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(dir, &old).map_err(io_err(dir))?;
        Some(old)
    } else {
        None
    };
    std::fs::rename(&tmp, dir).map_err(io_err(dir))?;
    if let Some(old) = old {
        std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
    }
    Ok(())
}
