//! `seek eval`: red-team, bias and reliability evaluations of a local model (through Seek's
//! own pipeline, guard on or off) or of any OpenAI-compatible endpoint.
//!
//! Design decision: a suite is a list of items, a [`target::Target`] that answers chats, and
//! judges or verifiers that score the answers; [`run::run_items`] runs the items several at
//! once and appends every finished sample to `samples.jsonl` right away, so a run that is
//! killed resumes where it stopped, and the summary (`summary.json`, `report.html`) is always
//! computed from the samples file. The chain of thought is scored apart from the answer.
#![deny(missing_docs)]

pub mod bias;
pub mod data;
pub mod external;
pub mod overrefusal;
pub mod redteam;
pub mod reliability;
pub mod report;
pub mod rewards;
mod rng;
pub mod run;
pub mod target;
pub mod tasks;
pub mod verify;

use std::path::Path;

/// Why an evaluation could not go on.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A data or output file.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong and how to fix it.
        message: String,
    },
    /// The model or endpoint failed.
    #[error("the target failed: {0}")]
    Target(String),
    /// The engine refused a request.
    #[error(transparent)]
    Submit(#[from] seek_engine::serve::SubmitError),
    /// Rendering or tokenizing a prompt failed.
    #[error(transparent)]
    Engine(#[from] seek_engine::EngineError),
}

impl EvalError {
    pub(crate) fn io(path: &Path, e: std::io::Error) -> Self {
        EvalError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }

    pub(crate) fn data(path: &Path, message: impl Into<String>) -> Self {
        EvalError::File {
            path: path.display().to_string(),
            message: message.into(),
        }
    }
}
