//! The one error type of this crate.

use std::path::PathBuf;

use seek_types::TokenId;

/// Why a tokenizer or chat template could not be loaded or used.
///
/// Each message names the file or metadata key at fault and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The GGUF file could not be read, or a key has the wrong type.
    #[error(transparent)]
    Gguf(#[from] seek_gguf::GgufError),

    /// `tokenizer.ggml.model` names a tokenizer family that Seek cannot build.
    #[error(
        "{}: tokenizer.ggml.model is {found:?}, but Seek supports only \"gpt2\" (byte-level BPE: \
         Qwen2/2.5, DeepSeek-R1-Distill, Llama 3, SmolLM2); load the model's Hugging Face folder \
         (with tokenizer.json) instead",
        path.display()
    )]
    UnsupportedModel {
        /// The GGUF file.
        path: PathBuf,
        /// The value of `tokenizer.ggml.model`.
        found: String,
    },

    /// `tokenizer.ggml.pre` names a pre-tokenizer Seek does not know.
    #[error(
        "{}: tokenizer.ggml.pre is {found:?}, which Seek does not know; supported: {supported}. \
         Load the model's Hugging Face folder (with tokenizer.json) instead, or add the \
         pre-tokenizer from its official tokenizer.json to seek-tokenizer",
        path.display()
    )]
    UnsupportedPreTokenizer {
        /// The GGUF file.
        path: PathBuf,
        /// The value of `tokenizer.ggml.pre`.
        found: String,
        /// The names that are supported, comma-separated.
        supported: String,
    },

    /// The vocabulary in a file is inconsistent (lengths differ, an id is out of range, ...).
    #[error("{}: {problem}; the file is corrupt or was written by an incompatible converter", path.display())]
    BadVocab {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key or field.
        problem: String,
    },

    /// A file of a Hugging Face folder could not be read.
    #[error("{}: cannot read the file: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },

    /// A JSON file of a Hugging Face folder is malformed or has a field of the wrong type.
    #[error("{}: {problem}", path.display())]
    BadConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field.
        problem: String,
    },

    /// The `tokenizers` library rejected the tokenizer or an input.
    #[error("{context}: {message}")]
    Hf {
        /// What was being done (building from which file, encoding, decoding).
        context: String,
        /// The library's message.
        message: String,
    },

    /// A token id is not in the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab_size} tokens; the ids come from another model or are corrupt")]
    UnknownTokenId {
        /// The id.
        id: TokenId,
        /// The size of the vocabulary.
        vocab_size: usize,
    },

    /// The chat template does not compile (a syntax error).
    #[error("chat template has a syntax error: {0}. Fix the template (tokenizer.chat_template in a GGUF, chat_template in tokenizer_config.json or chat_template.jinja) or pass another one")]
    TemplateSyntax(String),

    /// Rendering the chat template failed (unknown function or filter, wrong type, too much work).
    #[error("chat template failed to render: {0}")]
    TemplateRender(String),

    /// The template itself refused the conversation with `raise_exception(message)`.
    #[error("the chat template rejected the conversation: {0}")]
    TemplateRaised(String),
}

impl TokenizerError {
    pub(crate) fn hf(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        TokenizerError::Hf {
            context: context.into(),
            message: err.to_string(),
        }
    }
}
