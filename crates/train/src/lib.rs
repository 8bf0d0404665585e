//! Training for Seek: SFT, distillation and (next) GRPO on the same model code that serves.
//!
//! Design decision: the trainer owns nothing model-specific. It asks `seek-models` for the
//! differentiable form of a model ([`seek_models::autograd::Trainable`]), feeds it batches
//! built from JSONL data through the model's own chat template, and updates the variables it
//! is handed with an AdamW that follows `torch.optim.AdamW` step for step. Option names are
//! TRL's (`SFTConfig`) and PEFT's (`LoraConfig`), so recipes carry over.
#![deny(missing_docs)]

use std::path::PathBuf;

use candle_core::Tensor;
use seek_models::autograd::Trainable;

pub mod batch;
pub mod checkpoint;
pub mod data;
pub mod distill;
pub mod export;
pub mod grpo;
pub mod grpo_run;
pub mod optim;
pub mod peft;
pub mod report;
pub mod sft;

/// What can go wrong in training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model could not be loaded or run.
    #[error(transparent)]
    Model(#[from] seek_models::ModelError),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line of a data file is unusable.
    #[error("{}:{line}: {problem}", path.display())]
    Data {
        /// The JSONL file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// A checkpoint or adapter is unusable.
    #[error("{0}")]
    Checkpoint(String),
    /// The settings are inconsistent.
    #[error("{0}")]
    Config(String),
    /// The loss became NaN or infinite.
    #[error("the loss is {loss} at step {step}: training stopped; the last good checkpoint is {last_good}. Lower learning_rate, raise warmup, or check the data")]
    Diverged {
        /// Optimizer step.
        step: u64,
        /// The value.
        loss: f64,
        /// Where the last good state was saved.
        last_good: String,
    },
}

/// Result with [`TrainError`].
pub type Result<T> = std::result::Result<T, TrainError>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The gradient of `loss` for each trainable variable of `model`, flattened, in the order of
/// [`Trainable::vars`] (zeros for a variable the loss does not reach).
pub fn gradients(model: &Trainable, loss: &Tensor) -> Result<Vec<Vec<f32>>> {
    let store = loss.backward()?;
    model
        .vars()
        .iter()
        .map(|(_, v)| match store.get(v.as_tensor()) {
            Some(g) => optim::flat(g),
            None => Ok(vec![0.0; v.elem_count()]),
        })
        .collect()
}
