//! Text to token ids and back, chat templates, and streaming detokenization for Seek.
//!
//! Design decision: there is one tokenizer engine, Hugging Face's `tokenizers`, whatever the
//! model came in. A GGUF file carries only the vocabulary, the merges and the *name* of its
//! pre-tokenizer (`tokenizer.ggml.pre`); [`Tokenizer::from_gguf`] rebuilds from them the exact
//! pipeline of the model's official `tokenizer.json` (normalizer, split regex, byte-level
//! mapping, added tokens, BOS template), copied section by section into a table
//! (`src/pretok.rs`). So a GGUF model and its Hugging Face folder tokenize identically, the
//! golden tests compare against `transformers` itself, and an unknown pre-tokenizer name is an
//! error rather than a silent approximation (llama.cpp's hand-adapted regexes are not used).
//!
//! Chat templates are the model's own Jinja, rendered by `minijinja` with the extras that
//! `transformers.apply_chat_template` provides ([`ChatTemplate`]). Model files and templates
//! are untrusted input: every failure is a [`TokenizerError`], never a panic.
#![deny(missing_docs)]

use std::fmt;
use std::path::Path;

use seek_types::TokenId;

mod detok;
mod error;
mod gguf;
mod hf_dir;
mod pretok;
mod template;

pub use detok::IncrementalDetokenizer;
pub use error::TokenizerError;
pub use template::ChatTemplate;

/// Text of the tokens that end a turn in the chat formats Seek knows. A vocabulary's special
/// token with one of these texts stops generation (as in llama.cpp's end-of-generation set).
const END_OF_TURN: &[&str] = &[
    "<|im_end|>",            // ChatML: Qwen, SmolLM
    "<|endoftext|>",         // Qwen, GPT-2 style end of document
    "<｜end▁of▁sentence｜>", // DeepSeek
    "<|eot_id|>",            // Llama 3
    "<|eom_id|>",            // Llama 3.1 tool call
    "<|end_of_text|>",       // Llama 3 base
    "<|end|>",               // Phi-3
    "<end_of_turn>",         // Gemma
];

/// A model's tokenizer: encoding, decoding, special ids and its chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    vocab_size: usize,
    bos_token_id: Option<TokenId>,
    eos_token_ids: Vec<TokenId>,
    chat_template: Option<ChatTemplate>,
    pre_tokenizer: Option<String>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("pre_tokenizer", &self.pre_tokenizer)
            .field("bos_token_id", &self.bos_token_id)
            .field("eos_token_ids", &self.eos_token_ids)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.*` metadata.
    ///
    /// Supports `tokenizer.ggml.model = "gpt2"` (byte-level BPE) with the pre-tokenizers
    /// `qwen2`, `deepseek-r1-qwen`, `llama-bpe` (alias `llama3`, `llama-v3`), `smollm` and
    /// `gpt2` / `default`. Control tokens become special added tokens, user-defined ones
    /// (e.g. `<think>`) plain added tokens.
    pub fn from_gguf(g: &seek_gguf::GgufFile) -> Result<Self, TokenizerError> {
        gguf::from_gguf(g)
    }

    /// Loads a Hugging Face model folder: `tokenizer.json`, plus `tokenizer_config.json`
    /// (chat template, BOS/EOS tokens), `generation_config.json` (`eos_token_id`, one id or a
    /// list) and `chat_template.jinja` / `chat_template.json` where present.
    ///
    /// As in `transformers` 5, `tokenizer.json` decides whether BOS is added; the template in
    /// `chat_template.jinja` takes precedence over the one in `tokenizer_config.json`.
    pub fn from_hf_dir(dir: &Path) -> Result<Self, TokenizerError> {
        hf_dir::from_hf_dir(dir)
    }

    /// The same tokenizer with another chat template (a `--chat-template` file, or a model
    /// whose file carries none).
    pub fn with_chat_template(mut self, template: ChatTemplate) -> Self {
        self.chat_template = Some(template);
        self
    }

    /// Token ids of `text`. Special and added tokens written in the text (`<|im_start|>`,
    /// `<think>`) are recognised as single tokens. With `add_special_tokens`, BOS/EOS are added
    /// where the model's tokenizer adds them (e.g. DeepSeek-R1-Distill and Llama 3 prepend BOS).
    /// A rendered chat template already holds its BOS: encode it with `false`.
    pub fn encode(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<TokenId>, TokenizerError> {
        // The tokenizers crate panics on some inconsistent files (a post-processor naming a
        // token it does not define); that is a bad tokenizer file, not a crash.
        let encoding = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.inner.encode_fast(text, add_special_tokens)
        }))
        .map_err(|_| TokenizerError::TemplateRender(
            "the tokenizer failed on this text: its tokenizer.json is inconsistent (e.g. a post-processor names a token it does not define)".into(),
        ))?
        .map_err(|e| TokenizerError::hf("encoding text", e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`. With `skip_special_tokens`, control tokens (BOS, EOS, `<|im_end|>`)
    /// are left out; user-defined ones such as `<think>` stay. Invalid UTF-8 (a character cut
    /// between tokens) becomes U+FFFD; use [`IncrementalDetokenizer`] to stream.
    pub fn decode(
        &self,
        ids: &[TokenId],
        skip_special_tokens: bool,
    ) -> Result<String, TokenizerError> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(TokenizerError::UnknownTokenId {
                id,
                vocab_size: self.vocab_size,
            });
        }
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.inner.decode(ids, skip_special_tokens)
        }))
        .map_err(|_| {
            TokenizerError::TemplateRender(
                "the tokenizer failed to decode: its tokenizer.json is inconsistent".into(),
            )
        })?
        .map_err(|e| TokenizerError::hf("decoding token ids", e))
    }

    /// Number of token ids, added and padding tokens included: the size of the model's
    /// embedding and logits for GGUF files.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The vocabulary entry of `id`, in its stored form (byte-level BPE writes a space as `Ġ`).
    pub fn id_to_token(&self, id: TokenId) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a vocabulary entry, given in its stored form.
    pub fn token_to_id(&self, token: &str) -> Option<TokenId> {
        self.inner.token_to_id(token)
    }

    /// The beginning-of-sequence token, if the model has one.
    pub fn bos_token_id(&self) -> Option<TokenId> {
        self.bos_token_id
    }

    /// Every id that ends generation: the EOS id first, then the end-of-turn tokens of the
    /// model's chat format (`<|im_end|>`, `<|eot_id|>`, `<｜end▁of▁sentence｜>`, ...) that are
    /// special tokens of this vocabulary, and GGUF `eot`/`eom` ids or the ids listed in
    /// `generation_config.json`.
    pub fn eos_token_ids(&self) -> &[TokenId] {
        &self.eos_token_ids
    }

    /// The model's chat template, if it ships one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// The pre-tokenizer family, e.g. `"qwen2"`: the GGUF `tokenizer.ggml.pre` value, or for a
    /// Hugging Face folder the family whose pipeline `tokenizer.json` matches (if any).
    pub fn pre_tokenizer_name(&self) -> Option<&str> {
        self.pre_tokenizer.as_deref()
    }

    /// The underlying Hugging Face tokenizer, e.g. to save it as `tokenizer.json`.
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Ids of the special tokens whose text is in [`END_OF_TURN`], in id order.
fn end_of_turn_ids(inner: &tokenizers::Tokenizer) -> Vec<TokenId> {
    let added = inner.get_added_tokens_decoder();
    let mut ids: Vec<TokenId> = added
        .iter()
        .filter(|(_, t)| t.special && END_OF_TURN.contains(&t.content.as_str()))
        .map(|(&id, _)| id)
        .collect();
    ids.sort_unstable();
    ids
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokenizer_and_template_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<super::Tokenizer>();
        shareable::<super::ChatTemplate>();
    }
}
