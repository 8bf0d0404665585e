//! The one error type of model loading and execution.

use std::path::PathBuf;

/// Loading or running a model failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The GGUF file is unreadable, corrupt or truncated.
    #[error(transparent)]
    Gguf(#[from] seek_gguf::GgufError),
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `config.json` is malformed or holds values Seek cannot run.
    #[error("{}: {problem}", path.display())]
    Config {
        /// The config file (or GGUF file).
        path: PathBuf,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The architecture is not one Seek implements.
    #[error("{}: architecture {arch:?} is not supported; Seek runs {supported}", path.display())]
    UnsupportedArchitecture {
        /// The model file or folder.
        path: PathBuf,
        /// The architecture it declares.
        arch: String,
        /// The list Seek supports.
        supported: &'static str,
    },
    /// A weight tensor has the wrong shape for the config.
    #[error("tensor {name:?} has shape {found:?} but the config implies {expected:?}; the weights and config.json (or GGUF metadata) disagree")]
    Shape {
        /// The tensor.
        name: String,
        /// Shape implied by the config.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// A weight tensor is missing.
    #[error("{}: tensor {name:?} is missing; the file is incomplete or for another architecture", path.display())]
    MissingTensor {
        /// The model file or folder.
        path: PathBuf,
        /// The tensor.
        name: String,
    },
    /// The input does not fit the model (e.g. a token id outside the vocabulary, context exceeded).
    #[error("{0}")]
    Input(String),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// `Result` with [`ModelError`].
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
