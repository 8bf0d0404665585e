//! Turning the MODEL argument into local files: a path as is, a repo id through the hub.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The local path for `model`: a path that exists, or a Hugging Face repo id downloaded
/// into the hub cache (`HF_HOME`, honouring `HF_ENDPOINT` and `HF_TOKEN`).
pub fn resolve(model: &str, revision: &str) -> anyhow::Result<PathBuf> {
    let path = Path::new(model);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    if !looks_like_repo_id(model) {
        bail!("{model}: no such file or folder (pass a .gguf file, a Hugging Face folder, or a repo id like org/name)");
    }
    download(model, revision)
}

fn looks_like_repo_id(s: &str) -> bool {
    let mut parts = s.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none() && !s.ends_with(".gguf")
}

fn download(repo_id: &str, revision: &str) -> anyhow::Result<PathBuf> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Repo, RepoType};

    let api = ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .context("cannot set up the Hugging Face Hub client")?;
    let repo = api.repo(Repo::with_revision(
        repo_id.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    let unreachable = |e: hf_hub::api::sync::ApiError| {
        anyhow::anyhow!(
            "cannot fetch {repo_id} from the Hugging Face Hub ({e}).\n\
             If this machine is offline, download the model elsewhere (e.g. `huggingface-cli download {repo_id}`), \
             copy the folder here and pass its path instead; a GGUF file works too."
        )
    };
    let info = repo.info().map_err(unreachable)?;
    let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let wanted = |f: &str| {
        matches!(
            f,
            "config.json"
                | "tokenizer.json"
                | "tokenizer_config.json"
                | "generation_config.json"
                | "model.safetensors.index.json"
        ) || f.ends_with(".safetensors") && !f.contains('/')
    };
    let mut dir = None;
    for f in files.iter().filter(|f| wanted(f)) {
        let local = repo.get(f).map_err(unreachable)?;
        dir = local.parent().map(Path::to_path_buf);
    }
    match dir {
        Some(d) if d.join("config.json").is_file() => Ok(d),
        _ => bail!(
            "{repo_id} has no config.json and safetensors weights; for a GGUF repo, download the .gguf file and pass its path"
        ),
    }
}

/// A loaded model with its tokenizer.
pub struct Opened {
    /// The network and its summary.
    pub loaded: seek_models::LoadedModel,
    /// Its tokenizer and chat template.
    pub tokenizer: seek_tokenizer::Tokenizer,
    /// Seconds spent loading.
    pub load_s: f64,
}

/// Loads the model and tokenizer behind `arg`.
pub fn open(arg: &crate::ModelArg) -> anyhow::Result<Opened> {
    let start = std::time::Instant::now();
    let path = arg.resolve()?;
    let opts = load_options_for(arg)?;
    let loaded = seek_models::load(&path, &opts).with_context(|| match &arg.lora {
        Some(d) => format!("{} with the adapter {}", path.display(), d.display()),
        None => path.display().to_string(),
    })?;
    // What the model takes beside what the machine has, said at load when it does not fit.
    let plan = seek_models::MemoryPlan::new(&loaded.info, loaded.info.context_length.min(4096));
    if plan.fits() == Some(false) {
        eprintln!("{}", plan.message(!arg.no_mmap));
    } else {
        tracing::info!("{}", plan.message(!arg.no_mmap));
    }
    let tokenizer = tokenizer_for(&loaded.format)?;
    if tokenizer.vocab_size() > loaded.info.vocab_size {
        bail!(
            "{}: the tokenizer has {} tokens but the model's embedding has {} rows; the files do not belong together",
            path.display(),
            tokenizer.vocab_size(),
            loaded.info.vocab_size
        );
    }
    Ok(Opened {
        loaded,
        tokenizer,
        load_s: start.elapsed().as_secs_f64(),
    })
}

/// [`load_options`] plus the model argument's `--lora` adapter.
pub fn load_options_for(arg: &crate::ModelArg) -> anyhow::Result<seek_models::LoadOptions> {
    let mut opts = load_options();
    opts.no_mmap = arg.no_mmap;
    opts.mlock = arg.mlock;
    if let Some(dir) = &arg.lora {
        let (cfg, tensors) = seek_train::peft::read_adapter(dir)
            .with_context(|| format!("--lora {}", dir.display()))?;
        opts.lora = Some(seek_models::LoraAdapter {
            scaling: cfg.scaling(),
            tensors,
        });
    }
    Ok(opts)
}

/// Load settings from the global flags (`--threads` arrives as `RAYON_NUM_THREADS`, which
/// `main` sets before anything starts a pool).
pub fn load_options() -> seek_models::LoadOptions {
    seek_models::LoadOptions {
        threads: std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|s| s.parse().ok()),
        ..Default::default()
    }
}

/// The tokenizer stored with a model.
pub fn tokenizer_for(
    format: &seek_models::ModelFormat,
) -> anyhow::Result<seek_tokenizer::Tokenizer> {
    Ok(match format {
        seek_models::ModelFormat::Gguf(file) => seek_tokenizer::Tokenizer::from_gguf(file)?,
        seek_models::ModelFormat::HfDir(dir) => seek_tokenizer::Tokenizer::from_hf_dir(dir)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_are_told_apart_from_paths() {
        assert!(looks_like_repo_id(
            "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
        ));
        assert!(!looks_like_repo_id("models/x.gguf"));
        assert!(!looks_like_repo_id("a/b/c"));
        assert!(!looks_like_repo_id("plain"));
    }

    #[test]
    fn missing_local_path_says_what_to_pass() {
        let e = resolve("/nonexistent/model.gguf", "main")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such file"), "{e}");
    }
}
