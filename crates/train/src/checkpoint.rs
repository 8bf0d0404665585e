//! Checkpoints: written into a temporary folder and renamed into place, so a run killed at
//! any moment leaves either the previous checkpoint or the new one, never half of one.

use std::path::{Path, PathBuf};

use crate::{io_err, Result};

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
