//! Building a [`Tokenizer`] from the `tokenizer.*` metadata of a GGUF file.

use std::path::Path;

use seek_gguf::GgufFile;
use seek_types::TokenId;
use serde_json::json;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
};

use crate::pretok::{self, PipelineSpec};
use crate::{end_of_turn_ids, ChatTemplate, Tokenizer, TokenizerError};

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TYPE_NORMAL: i64 = 1;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

pub(crate) fn from_gguf(g: &GgufFile) -> Result<Tokenizer, TokenizerError> {
    let path = g.path();
    let bad = |problem: String| TokenizerError::BadVocab {
        path: path.to_path_buf(),
        problem,
    };

    let model = g.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(TokenizerError::UnsupportedModel {
            path: path.to_path_buf(),
            found: model.to_string(),
        });
    }
    let pre = match g.get("tokenizer.ggml.pre") {
        Some(_) => g.get_str("tokenizer.ggml.pre")?,
        None => "default",
    };
    let spec = pretok::spec(pre).ok_or_else(|| TokenizerError::UnsupportedPreTokenizer {
        path: path.to_path_buf(),
        found: pre.to_string(),
        supported: pretok::SUPPORTED.join(", "),
    })?;

    let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
    if tokens.is_empty() || u32::try_from(tokens.len()).is_err() {
        return Err(bad(format!(
            "tokenizer.ggml.tokens has {} entries",
            tokens.len()
        )));
    }
    let types = match g.get("tokenizer.ggml.token_type") {
        Some(_) => g.get_i64_array("tokenizer.ggml.token_type")?,
        None => vec![TYPE_NORMAL; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(bad(format!(
            "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}",
            types.len(),
            tokens.len()
        )));
    }
    let merges = g
        .get_str_array("tokenizer.ggml.merges")?
        .into_iter()
        .enumerate()
        .map(|(i, m)| match m.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a.to_string(), b.to_string())),
            _ => Err(bad(format!(
                "tokenizer.ggml.merges[{i}] is {m:?}, not two tokens separated by one space"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;

    // Every token, added ones included, goes into the BPE vocabulary under its GGUF id, so that
    // ids match the file exactly; tokens no merge produces (added, padding) are only reachable
    // through the added vocabulary. Inserted last to first, so that a string that appears twice
    // (a corrupt file) keeps its first id.
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .rev()
        .map(|(id, &t)| (t.to_string(), id as TokenId))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(spec.ignore_merges)
        .build()
        .map_err(|e| {
            bad(format!(
                "tokenizer.ggml.merges does not fit tokenizer.ggml.tokens: {e}"
            ))
        })?;

    let mut inner = tokenizers::Tokenizer::new(bpe);
    install_pipeline(&mut inner, &spec, path)?;

    // Control tokens (<|im_end|>, <｜User｜>) are special: recognised in text, skipped by
    // `decode(.., skip_special_tokens = true)`. User-defined ones (<think>) are recognised but
    // kept. Neither is normalized first, as in the official tokenizer.json files.
    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(t, &ty)| !t.is_empty() && (ty == TYPE_CONTROL || ty == TYPE_USER_DEFINED))
        .map(|(t, &ty)| AddedToken::from(t.to_string(), ty == TYPE_CONTROL).normalized(false))
        .collect();
    inner
        .add_tokens(added)
        .map_err(|e| TokenizerError::hf(format!("{}: adding special tokens", path.display()), e))?;

    let id_key = |key: &str| -> Result<Option<TokenId>, TokenizerError> {
        if g.get(key).is_none() {
            return Ok(None);
        }
        let id = g.get_u64(key)?;
        if id >= tokens.len() as u64 {
            return Err(bad(format!(
                "{key} is {id}, but the vocabulary has {} tokens",
                tokens.len()
            )));
        }
        Ok(Some(id as TokenId))
    };
    let bos = id_key("tokenizer.ggml.bos_token_id")?;
    let eos = id_key("tokenizer.ggml.eos_token_id")?;
    let eot = id_key("tokenizer.ggml.eot_token_id")?;
    let eom = id_key("tokenizer.ggml.eom_token_id")?;
    // An explicit `add_*_token = true` needs the id; the family's default applies only if the
    // file has the id.
    let edge = |key: &str, default: bool, id: Option<TokenId>, id_key: &str| {
        let explicit = match g.get(key) {
            Some(_) => Some(g.get_bool(key)?),
            None => None,
        };
        match (explicit.unwrap_or(default), id) {
            (false, _) => Ok(None),
            (true, Some(id)) => Ok(Some((tokens[id as usize], id))),
            (true, None) if explicit.is_none() => Ok(None),
            (true, None) => Err(bad(format!("{key} is true but {id_key} is missing"))),
        }
    };
    let bos_edge = edge(
        "tokenizer.ggml.add_bos_token",
        spec.add_bos_default,
        bos,
        "tokenizer.ggml.bos_token_id",
    )?;
    let eos_edge = edge(
        "tokenizer.ggml.add_eos_token",
        false,
        eos,
        "tokenizer.ggml.eos_token_id",
    )?;
    let text_of = |id: Option<TokenId>| id.map(|i| tokens[i as usize].to_string());
    let post = post_processor(spec.post_byte_level.clone(), bos_edge, eos_edge);
    if let Some(post) = post {
        let post: PostProcessorWrapper = serde_json::from_value(post).map_err(|e| {
            TokenizerError::hf(
                format!("{}: building the post-processor", path.display()),
                e,
            )
        })?;
        inner.with_post_processor(Some(post));
    }

    let mut eos_ids: Vec<TokenId> = [eos, eot, eom].into_iter().flatten().collect();
    eos_ids.extend(end_of_turn_ids(&inner));
    dedup_in_order(&mut eos_ids);

    let chat_template = match g.get("tokenizer.chat_template") {
        None => None,
        Some(_) => {
            let source = g.get_str("tokenizer.chat_template")?.to_string();
            let template =
                ChatTemplate::new(source, text_of(bos), text_of(eos)).map_err(|e| match e {
                    TokenizerError::TemplateSyntax(m) => TokenizerError::TemplateSyntax(format!(
                        "{}: tokenizer.chat_template: {m}",
                        path.display()
                    )),
                    other => other,
                })?;
            Some(template)
        }
    };

    Ok(Tokenizer {
        inner,
        vocab_size: tokens.len(),
        bos_token_id: bos,
        eos_token_ids: eos_ids,
        chat_template,
        pre_tokenizer: Some(pre.to_string()),
    })
}

/// Sets the normalizer, pre-tokenizer and decoder of `spec` on `inner`.
fn install_pipeline(
    inner: &mut tokenizers::Tokenizer,
    spec: &PipelineSpec,
    path: &Path,
) -> Result<(), TokenizerError> {
    let context = || format!("{}: building the {} pipeline", path.display(), spec.name);
    if let Some(n) = &spec.normalizer {
        let n: NormalizerWrapper =
            serde_json::from_value(n.clone()).map_err(|e| TokenizerError::hf(context(), e))?;
        inner
            .with_normalizer(Some(n))
            .map_err(|e| TokenizerError::hf(context(), e))?;
    }
    let p: PreTokenizerWrapper = serde_json::from_value(spec.pre_tokenizer.clone())
        .map_err(|e| TokenizerError::hf(context(), e))?;
    inner.with_pre_tokenizer(Some(p));
    let d: DecoderWrapper = serde_json::from_value(spec.decoder.clone())
        .map_err(|e| TokenizerError::hf(context(), e))?;
    inner.with_decoder(Some(d));
    Ok(())
}

/// The `post_processor` section: the family's `ByteLevel` step, then a `TemplateProcessing` that
/// adds BOS and/or EOS, as in the official files that add them.
pub(crate) fn post_processor(
    byte_level: Option<serde_json::Value>,
    bos: Option<(&str, TokenId)>,
    eos: Option<(&str, TokenId)>,
) -> Option<serde_json::Value> {
    let template = (bos.is_some() || eos.is_some()).then(|| {
        let special =
            |tok: &str, type_id: u32| json!({ "SpecialToken": { "id": tok, "type_id": type_id } });
        let seq = |id: &str, type_id: u32| json!({ "Sequence": { "id": id, "type_id": type_id } });
        let mut single = Vec::new();
        let mut pair = Vec::new();
        for (type_id, seq_id, out) in [(0, "A", &mut single), (1, "B", &mut pair)] {
            if let Some((b, _)) = bos {
                out.push(special(b, type_id));
            }
            out.push(seq(seq_id, type_id));
            if let Some((e, _)) = eos {
                out.push(special(e, type_id));
            }
        }
        let pair: Vec<_> = single.iter().cloned().chain(pair).collect();
        let mut special_tokens = serde_json::Map::new();
        for (tok, id) in [bos, eos].into_iter().flatten() {
            special_tokens.insert(
                tok.to_string(),
                json!({ "id": tok, "ids": [id], "tokens": [tok] }),
            );
        }
        json!({
            "type": "TemplateProcessing",
            "single": single,
            "pair": pair,
            "special_tokens": special_tokens,
        })
    });
    match (byte_level, template) {
        (Some(b), Some(t)) => Some(json!({ "type": "Sequence", "processors": [b, t] })),
        (b, t) => b.or(t),
    }
}

pub(crate) fn dedup_in_order(ids: &mut Vec<TokenId>) {
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(*id));
}
