//! Every supported `tokenizer.ggml.pre` value splits text exactly as the official pre-tokenizer
//! (and normalizer) of its family does in Hugging Face `tokenizers` (fixture made by
//! tools/make_tokenizer_fixtures.py). This covers the families without a sample model
//! (Llama 3, GPT-2), and regex details the sample vocabularies cannot reveal (Qwen's vocabulary
//! has no multi-digit tokens, so only the split shows `\p{N}` versus `\p{N}{1,3}`).

mod common;

use common::{pretokenizer_fixture, Synthetic};
use tokenizers::{
    NormalizedString, Normalizer, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer,
};

/// The official family of each supported GGUF name.
const FAMILIES: &[(&str, &str)] = &[
    ("qwen2", "qwen2"),
    ("deepseek-r1-qwen", "qwen2"),
    ("llama-bpe", "llama-bpe"),
    ("llama3", "llama-bpe"),
    ("llama-v3", "llama-bpe"),
    ("smollm", "smollm"),
    ("gpt2", "gpt2"),
    // No Hugging Face tokenizer has llama.cpp's fallback regex set; GPT-2's is our choice.
    ("default", "gpt2"),
];

fn pieces(tok: &seek_tokenizer::Tokenizer, text: &str) -> Vec<String> {
    let hf = tok.hf();
    let mut normalized = NormalizedString::from(text);
    if let Some(n) = hf.get_normalizer() {
        n.normalize(&mut normalized).unwrap();
    }
    let mut pre = PreTokenizedString::from(normalized);
    hf.get_pre_tokenizer()
        .expect("a pre-tokenizer")
        .pre_tokenize(&mut pre)
        .unwrap();
    pre.get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .map(|(piece, _, _)| piece.to_string())
        .collect()
}

#[test]
fn every_supported_name_splits_like_its_official_pre_tokenizer() {
    let fixture = pretokenizer_fixture();
    for &(name, family) in FAMILIES {
        let tok = Synthetic::new(name)
            .build()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(tok.pre_tokenizer_name(), Some(name));
        let splits = &fixture.families[family].splits;
        assert!(splits.len() > 10);
        for split in splits {
            assert_eq!(
                pieces(&tok, &split.text),
                split.pieces,
                "{name} ({family} family): {:?}",
                split.text
            );
        }
    }
}

#[test]
fn a_file_without_a_pre_tokenizer_name_gets_the_default() {
    let mut s = Synthetic::new("unused");
    s.pre = None;
    let tok = s.build().unwrap();
    assert_eq!(tok.pre_tokenizer_name(), Some("default"));
    let fixture = pretokenizer_fixture();
    for split in &fixture.families["gpt2"].splits {
        assert_eq!(pieces(&tok, &split.text), split.pieces, "{:?}", split.text);
    }
}

#[test]
fn byte_level_vocabulary_round_trips_any_text() {
    let tok = Synthetic::new("qwen2").build().unwrap();
    // No merges: one token per UTF-8 byte (after NFC), and back.
    let text = "héllo 🚀\n\t日本";
    let ids = tok.encode(text, false).unwrap();
    assert_eq!(ids.len(), text.len());
    assert_eq!(ids, text.bytes().map(u32::from).collect::<Vec<_>>());
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
}
