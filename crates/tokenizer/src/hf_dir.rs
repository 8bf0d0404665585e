//! Building a [`Tokenizer`] from a Hugging Face model folder.

use std::path::{Path, PathBuf};

use seek_types::TokenId;
use serde_json::Value;

use crate::gguf::dedup_in_order;
use crate::{end_of_turn_ids, pretok, ChatTemplate, Tokenizer, TokenizerError};

pub(crate) fn from_hf_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
    let tokenizer_json = dir.join("tokenizer.json");
    if !tokenizer_json.is_file() {
        return Err(TokenizerError::BadConfig {
            path: dir.to_path_buf(),
            problem: "has no tokenizer.json; Seek needs a model folder with a fast (tokenizers) \
                      tokenizer. Save one with transformers' `AutoTokenizer.from_pretrained(..)\
                      .save_pretrained(dir)`, or use the model's GGUF file"
                .into(),
        });
    }
    let bytes = read(&tokenizer_json)?;
    let invalid = |why: String| TokenizerError::BadConfig {
        path: tokenizer_json.clone(),
        problem: why,
    };
    check_bpe_merges(&bytes).map_err(invalid)?;
    // The tokenizers crate trusts its input in places (a merge shorter than the subword prefix
    // panics it); a panic there is a bad file, not a crash.
    let inner = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(&bytes))
        .map_err(|_| {
            invalid(
                "is not a valid tokenizer.json (the tokenizers library rejected its model)".into(),
            )
        })?
        .map_err(|e| {
            TokenizerError::hf(
                format!("{}: not a valid tokenizer.json", tokenizer_json.display()),
                e,
            )
        })?;

    // A file whose pieces do not fit together fails here, once, rather than on a request.
    let probe = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        inner.encode_fast("Probe: 1 + 2 = 3.", true).is_ok()
    }));
    if probe.is_err() {
        return Err(invalid(
            "is inconsistent: encoding a test sentence fails inside the tokenizers library (e.g. its post-processor names a token it does not define)".into(),
        ));
    }

    let config_path = dir.join("tokenizer_config.json");
    let config = read_json(&config_path)?.unwrap_or(Value::Null);
    let generation_path = dir.join("generation_config.json");
    let generation = read_json(&generation_path)?.unwrap_or(Value::Null);

    let bos_text = token_text(&config, "bos_token", &config_path)?;
    let eos_text = token_text(&config, "eos_token", &config_path)?;
    let id_of = |text: &Option<String>, field: &str| -> Result<Option<TokenId>, TokenizerError> {
        match text {
            None => Ok(None),
            Some(t) => inner
                .token_to_id(t)
                .map(Some)
                .ok_or_else(|| TokenizerError::BadConfig {
                    path: config_path.clone(),
                    problem: format!(
                        "{field} is {t:?}, which is not in tokenizer.json's vocabulary"
                    ),
                }),
        }
    };
    let bos_token_id = match id_of(&bos_text, "bos_token")? {
        Some(id) => Some(id),
        None => ids_field(&generation, "bos_token_id", &generation_path)?
            .first()
            .copied(),
    };
    let mut eos_token_ids: Vec<TokenId> = id_of(&eos_text, "eos_token")?.into_iter().collect();
    eos_token_ids.extend(ids_field(&generation, "eos_token_id", &generation_path)?);
    eos_token_ids.extend(end_of_turn_ids(&inner));
    dedup_in_order(&mut eos_token_ids);

    let vocab_size = inner
        .get_vocab(true)
        .values()
        .max()
        .map_or(0, |&m| m as usize + 1);
    if let Some(&id) = eos_token_ids
        .iter()
        .chain(&bos_token_id)
        .find(|&&id| id as usize >= vocab_size)
    {
        return Err(TokenizerError::BadConfig {
            path: generation_path,
            problem: format!("token id {id} is outside the vocabulary of {vocab_size} tokens"),
        });
    }

    let chat_template = match template_source(dir, &config, &config_path)? {
        Some(source) => Some(ChatTemplate::new(source, bos_text, eos_text)?),
        None => None,
    };

    let as_json = |v: Option<Value>| v.unwrap_or(Value::Null);
    let normalizer = as_json(
        inner
            .get_normalizer()
            .and_then(|n| serde_json::to_value(n).ok()),
    );
    let pre = as_json(
        inner
            .get_pre_tokenizer()
            .and_then(|p| serde_json::to_value(p).ok()),
    );
    let pre_tokenizer = pretok::detect(&normalizer, &pre).map(str::to_string);

    Ok(Tokenizer {
        inner,
        vocab_size,
        bos_token_id,
        eos_token_ids,
        chat_template,
        pre_tokenizer,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TokenizerError> {
    std::fs::read(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The parsed JSON file, or `None` if it does not exist.
fn read_json(path: &Path) -> Result<Option<Value>, TokenizerError> {
    if !path.exists() {
        return Ok(None);
    }
    serde_json::from_slice(&read(path)?)
        .map(Some)
        .map_err(|e| TokenizerError::BadConfig {
            path: path.to_path_buf(),
            problem: format!("invalid JSON: {e}"),
        })
}

fn wrong_type(path: &Path, field: &str, expected: &str, found: &Value) -> TokenizerError {
    let found = match found {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    };
    TokenizerError::BadConfig {
        path: path.to_path_buf(),
        problem: format!("{field} should be {expected}, not {found}"),
    }
}

/// A special token of `tokenizer_config.json`: a string, or an object with `"content"` (the
/// older AddedToken form); `null` and absence mean none.
fn token_text(config: &Value, field: &str, path: &Path) -> Result<Option<String>, TokenizerError> {
    match config.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v @ Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(wrong_type(
                path,
                field,
                "a string or an object with a \"content\" string",
                v,
            )),
        },
        Some(v) => Err(wrong_type(path, field, "a string", v)),
    }
}

/// A token-id field of `generation_config.json`: one id or a list of ids.
fn ids_field(config: &Value, field: &str, path: &Path) -> Result<Vec<TokenId>, TokenizerError> {
    let id = |v: &Value| {
        v.as_u64()
            .and_then(|x| TokenId::try_from(x).ok())
            .ok_or_else(|| wrong_type(path, field, "a token id or a list of token ids", v))
    };
    match config.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(id).collect(),
        Some(v) => Ok(vec![id(v)?]),
    }
}

/// The chat template source: `chat_template.jinja`, else `chat_template` of
/// `tokenizer_config.json` (a string, or a list of `{name, template}` of which "default" is
/// used), else `chat_template.json`.
fn template_source(
    dir: &Path,
    config: &Value,
    config_path: &Path,
) -> Result<Option<String>, TokenizerError> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        let bytes = read(&jinja)?;
        return String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| TokenizerError::BadConfig {
                path: jinja,
                problem: "is not valid UTF-8".into(),
            });
    }
    if let Some(source) = template_field(config, config_path)? {
        return Ok(Some(source));
    }
    let legacy: PathBuf = dir.join("chat_template.json");
    match read_json(&legacy)? {
        Some(v) => template_field(&v, &legacy),
        None => Ok(None),
    }
}

fn template_field(config: &Value, path: &Path) -> Result<Option<String>, TokenizerError> {
    match config.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v @ Value::Array(items)) => {
            let named = |name: &str| {
                items
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
            };
            match named("default")
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
            {
                Some(s) => Ok(Some(s.to_string())),
                None => Err(wrong_type(
                    path,
                    "chat_template",
                    "a string or a list of {name, template} with one named \"default\"",
                    v,
                )),
            }
        }
        Some(v) => Err(wrong_type(path, "chat_template", "a string", v)),
    }
}

/// A BPE model's `continuing_subword_prefix` must begin the second half of every merge: the
/// tokenizers crate slices it off unchecked (a shorter or different half panics it, or cuts a
/// character in two).
fn check_bpe_merges(bytes: &[u8]) -> Result<(), String> {
    let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
        return Ok(()); // the tokenizers crate reports the JSON error
    };
    let model = &v["model"];
    let prefix = match model["continuing_subword_prefix"].as_str() {
        Some(p) if !p.is_empty() && model["type"] == "BPE" => p,
        _ => return Ok(()),
    };
    for (i, m) in model["merges"].as_array().into_iter().flatten().enumerate() {
        let second = match m {
            Value::String(s) => s.split_once(' ').map(|(_, b)| b.to_string()),
            Value::Array(a) => a.get(1).and_then(Value::as_str).map(str::to_string),
            _ => None,
        };
        if let Some(b) = second {
            if !b.starts_with(prefix) {
                return Err(format!(
                    "merge {i} ({m}) does not start its second token with the continuing_subword_prefix {prefix:?}; the file is corrupt"
                ));
            }
        }
    }
    Ok(())
}
