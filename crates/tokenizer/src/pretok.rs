//! The text pipeline (normalizer, pre-tokenizer, decoder) named by GGUF `tokenizer.ggml.pre`.
//!
//! A GGUF file stores the vocabulary and merges but only a *name* for the rest of the pipeline.
//! Each entry below is copied from the `normalizer` / `pre_tokenizer` / `post_processor` /
//! `decoder` sections of the official `tokenizer.json` of a model that llama.cpp's
//! `convert_hf_to_gguf.py` labels with that name, so that it can be checked line by line
//! against the original file. llama.cpp's own regexes (`src/llama-vocab.cpp`) are rewritten for
//! its regex engine and are deliberately not used.

use serde_json::{json, Value};

/// The pre-tokenizer regex of Qwen2 / Qwen2.5 and DeepSeek-R1-Distill-Qwen (`tokenizer.json`).
pub(crate) const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer regex of Llama 3 and DeepSeek-R1-Distill-Llama: Qwen2's with digits in
/// groups of up to three.
pub(crate) const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Every `tokenizer.ggml.pre` value that [`spec`] accepts.
pub(crate) const SUPPORTED: &[&str] = &[
    "qwen2",
    "deepseek-r1-qwen",
    "llama-bpe",
    "llama3",
    "llama-v3",
    "smollm",
    "gpt2",
    "default",
];

/// The pipeline of one tokenizer family, as JSON sections of `tokenizer.json`.
pub(crate) struct PipelineSpec {
    /// The canonical `tokenizer.ggml.pre` name of the family.
    pub name: &'static str,
    /// `normalizer` (`None` is JSON `null`).
    pub normalizer: Option<Value>,
    /// `pre_tokenizer`.
    pub pre_tokenizer: Value,
    /// The `ByteLevel` step of `post_processor`. It only adjusts offsets, never ids; it is kept
    /// so that a saved `tokenizer.json` matches the official one.
    pub post_byte_level: Option<Value>,
    /// `decoder`.
    pub decoder: Value,
    /// `model.ignore_merges`: a pre-token that is itself in the vocabulary is emitted whole.
    pub ignore_merges: bool,
    /// Whether the official tokenizer prepends BOS when `tokenizer.ggml.add_bos_token` is absent.
    pub add_bos_default: bool,
}

fn byte_level(add_prefix_space: bool, trim_offsets: bool, use_regex: bool) -> Value {
    json!({
        "type": "ByteLevel",
        "add_prefix_space": add_prefix_space,
        "trim_offsets": trim_offsets,
        "use_regex": use_regex,
    })
}

fn split_isolated(regex: &str) -> Value {
    json!({ "type": "Split", "pattern": { "Regex": regex }, "behavior": "Isolated", "invert": false })
}

/// The pipeline for a `tokenizer.ggml.pre` value, or `None` if it is not supported.
pub(crate) fn spec(pre: &str) -> Option<PipelineSpec> {
    Some(match pre {
        // Qwen2.5-*-Instruct and DeepSeek-R1-Distill-Qwen-* tokenizer.json: NFC, then the Qwen
        // regex with ByteLevel's own regex switched off. llama.cpp labels the R1 distills
        // "deepseek-r1-qwen" only because their BOS changes the converter's hash; the pipeline
        // is Qwen2's.
        "qwen2" | "deepseek-r1-qwen" => PipelineSpec {
            name: "qwen2",
            normalizer: Some(json!({ "type": "NFC" })),
            pre_tokenizer: json!({
                "type": "Sequence",
                "pretokenizers": [split_isolated(QWEN2_REGEX), byte_level(false, false, false)],
            }),
            post_byte_level: Some(byte_level(false, false, false)),
            decoder: byte_level(false, false, false),
            ignore_merges: false,
            add_bos_default: false,
        },
        // Meta-Llama-3-8B-Instruct and DeepSeek-R1-Distill-Llama-* tokenizer.json.
        "llama-bpe" | "llama3" | "llama-v3" => PipelineSpec {
            name: "llama-bpe",
            normalizer: None,
            pre_tokenizer: json!({
                "type": "Sequence",
                "pretokenizers": [split_isolated(LLAMA3_REGEX), byte_level(false, true, false)],
            }),
            post_byte_level: Some(byte_level(true, false, true)),
            decoder: byte_level(true, true, true),
            ignore_merges: true,
            add_bos_default: true,
        },
        // SmolLM / SmolLM2 tokenizer.json: every digit on its own, then GPT-2's regex.
        "smollm" => PipelineSpec {
            name: "smollm",
            normalizer: None,
            pre_tokenizer: json!({
                "type": "Sequence",
                "pretokenizers": [
                    { "type": "Digits", "individual_digits": true },
                    byte_level(false, true, true),
                ],
            }),
            post_byte_level: Some(byte_level(true, false, true)),
            decoder: byte_level(true, true, true),
            ignore_merges: false,
            add_bos_default: false,
        },
        // GPT-2's tokenizer.json. "default" is what llama.cpp assumes when a file has no (or an
        // unrecognised) pre-tokenizer name; no Hugging Face tokenizer has llama.cpp's fallback
        // regex set, so GPT-2's pipeline is the faithful choice.
        "gpt2" | "default" => PipelineSpec {
            name: "gpt2",
            normalizer: None,
            pre_tokenizer: byte_level(false, true, true),
            post_byte_level: Some(byte_level(false, true, true)),
            decoder: byte_level(false, true, true),
            ignore_merges: false,
            add_bos_default: false,
        },
        _ => return None,
    })
}

/// The canonical family name whose normalizer and pre-tokenizer equal the given JSON sections
/// (as `tokenizers` serializes them), if any.
pub(crate) fn detect(normalizer: &Value, pre_tokenizer: &Value) -> Option<&'static str> {
    ["qwen2", "llama-bpe", "smollm", "gpt2"]
        .into_iter()
        .find(|name| {
            let s = spec(name).expect("listed names are supported");
            same_json(&s.normalizer.unwrap_or(Value::Null), normalizer)
                && same_json(&s.pre_tokenizer, pre_tokenizer)
        })
}

/// JSON equality that ignores fields present on one side only: `tokenizers` writes defaults
/// (e.g. `"prepend_scheme"`) that official files may omit.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x
            .iter()
            .all(|(k, v)| y.get(k).is_none_or(|w| same_json(v, w))),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same_json(v, w))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_name_has_a_spec_that_tokenizers_accepts() {
        for name in SUPPORTED {
            let s = spec(name).unwrap();
            let _: tokenizers::PreTokenizerWrapper =
                serde_json::from_value(s.pre_tokenizer.clone()).unwrap();
            let _: tokenizers::DecoderWrapper = serde_json::from_value(s.decoder.clone()).unwrap();
            if let Some(n) = s.normalizer {
                let _: tokenizers::NormalizerWrapper = serde_json::from_value(n).unwrap();
            }
        }
        assert!(spec("deepseek-v3").is_none());
    }

    #[test]
    fn detect_finds_the_family_of_a_round_tripped_pipeline() {
        for name in ["qwen2", "llama-bpe", "smollm", "gpt2"] {
            let s = spec(name).unwrap();
            let pre: tokenizers::PreTokenizerWrapper =
                serde_json::from_value(s.pre_tokenizer.clone()).unwrap();
            let norm = match s.normalizer {
                Some(n) => serde_json::to_value(
                    serde_json::from_value::<tokenizers::NormalizerWrapper>(n).unwrap(),
                )
                .unwrap(),
                None => Value::Null,
            };
            assert_eq!(
                detect(&norm, &serde_json::to_value(pre).unwrap()),
                Some(name)
            );
        }
    }
}
