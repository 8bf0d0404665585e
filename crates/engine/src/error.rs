//! The engine's error type.

/// Generation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request cannot be served as given.
    #[error("{0}")]
    Request(String),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] seek_models::ModelError),
    /// Tokenizing or detokenizing failed.
    #[error(transparent)]
    Tokenizer(#[from] seek_tokenizer::TokenizerError),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}
