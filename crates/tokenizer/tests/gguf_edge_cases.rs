//! GGUF files that are unsupported, inconsistent or unusual: each gives a clear error (never a
//! panic) or the documented behaviour. Built with seek-gguf's writer; no model files needed.

mod common;

use common::{byte_chars, Synthetic};
use seek_gguf::Value;
use seek_tokenizer::{IncrementalDetokenizer, TokenizerError};

fn err(s: &Synthetic) -> TokenizerError {
    match s.build() {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

#[test]
fn unknown_pre_tokenizer_is_named_with_the_supported_ones() {
    let e = err(&Synthetic::new("deepseek-v3"));
    assert!(
        matches!(e, TokenizerError::UnsupportedPreTokenizer { .. }),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("tokenizer.ggml.pre is \"deepseek-v3\""),
        "{msg}"
    );
    assert!(
        msg.contains("qwen2") && msg.contains("llama-bpe") && msg.contains("smollm"),
        "{msg}"
    );
}

#[test]
fn sentencepiece_models_are_refused_by_name() {
    let mut s = Synthetic::new("default");
    s.model = "llama".into();
    let msg = err(&s).to_string();
    assert!(msg.contains("tokenizer.ggml.model is \"llama\""), "{msg}");
    assert!(msg.contains("\"gpt2\""), "{msg}");
}

#[test]
fn inconsistent_vocabularies_are_errors() {
    // token_type shorter than tokens.
    let s = Synthetic::new("qwen2").meta(
        "tokenizer.ggml.token_type",
        Value::Array(vec![Value::I32(1)]),
    );
    // (the later key wins in the reader's map)
    let msg = err(&s).to_string();
    assert!(
        msg.contains("tokenizer.ggml.token_type has 1 entries"),
        "{msg}"
    );

    let mut s = Synthetic::new("qwen2");
    s.merges = vec!["abc".into()];
    let msg = err(&s).to_string();
    assert!(msg.contains("tokenizer.ggml.merges[0] is \"abc\""), "{msg}");

    let mut s = Synthetic::new("qwen2");
    s.merges = vec!["a zzz".into()];
    let msg = err(&s).to_string();
    assert!(msg.contains("tokenizer.ggml.merges does not fit"), "{msg}");

    let s = Synthetic::new("qwen2").meta("tokenizer.ggml.bos_token_id", Value::U32(100_000));
    let msg = err(&s).to_string();
    assert!(
        msg.contains("tokenizer.ggml.bos_token_id is 100000"),
        "{msg}"
    );

    let s = Synthetic::new("qwen2").meta("tokenizer.ggml.add_bos_token", Value::Bool(true));
    let msg = err(&s).to_string();
    assert!(
        msg.contains("add_bos_token is true but tokenizer.ggml.bos_token_id is missing"),
        "{msg}"
    );

    let s = Synthetic::new("qwen2").meta("tokenizer.ggml.eos_token_id", Value::String("2".into()));
    assert!(matches!(err(&s), TokenizerError::Gguf(_)));
}

#[test]
fn a_broken_chat_template_names_the_key() {
    let s = Synthetic::new("qwen2").meta(
        "tokenizer.chat_template",
        Value::String("{% for m in messages %}".into()),
    );
    let e = err(&s);
    assert!(matches!(e, TokenizerError::TemplateSyntax(_)), "{e}");
    assert!(e.to_string().contains("tokenizer.chat_template"), "{e}");
}

#[test]
fn special_tokens_bos_and_eos() {
    let s = Synthetic::new("llama-bpe")
        .token("<|begin_of_text|>", 3)
        .token("<|eot_id|>", 3)
        .token("<think>", 4)
        .meta("tokenizer.ggml.bos_token_id", Value::U32(256))
        .meta("tokenizer.ggml.eos_token_id", Value::U32(256 + 1));
    let tok = s.build().unwrap();
    // Llama 3 prepends BOS unless the file says otherwise.
    assert_eq!(
        tok.encode("a<think>b<|eot_id|>", true).unwrap(),
        [256, 97, 258, 98, 257]
    );
    assert_eq!(tok.encode("a", false).unwrap(), [97]);
    assert_eq!(
        tok.decode(&[256, 97, 258, 98, 257], true).unwrap(),
        "a<think>b"
    );
    assert_eq!(
        tok.decode(&[256, 97, 258, 98, 257], false).unwrap(),
        "<|begin_of_text|>a<think>b<|eot_id|>"
    );
    assert_eq!(tok.eos_token_ids(), [257]);
    assert_eq!(tok.vocab_size(), 259);

    let tok = s
        .meta("tokenizer.ggml.add_bos_token", Value::Bool(false))
        .build()
        .unwrap();
    assert_eq!(tok.encode("a", true).unwrap(), [97]);

    // EOS, then every end-of-turn control token; eot/eom ids from the file too.
    let tok = Synthetic::new("qwen2")
        .token("<|endoftext|>", 3)
        .token("<|im_end|>", 3)
        .token("<|im_start|>", 3)
        .token("<|custom_eot|>", 3)
        .meta("tokenizer.ggml.eos_token_id", Value::U32(257))
        .meta("tokenizer.ggml.eot_token_id", Value::U32(259))
        .build()
        .unwrap();
    assert_eq!(tok.eos_token_ids(), [257, 259, 256]);
    assert_eq!(tok.bos_token_id(), None);
}

#[test]
fn unknown_ids_are_errors() {
    let tok = Synthetic::new("gpt2").build().unwrap();
    let e = tok.decode(&[5, 256], false).unwrap_err();
    assert!(
        matches!(
            e,
            TokenizerError::UnknownTokenId {
                id: 256,
                vocab_size: 256
            }
        ),
        "{e}"
    );
    assert!(IncrementalDetokenizer::new(&tok, false).push(1000).is_err());
}

#[test]
fn streaming_holds_back_incomplete_characters() {
    let tok = Synthetic::new("gpt2").build().unwrap();
    // One token per byte: every multi-byte character arrives in pieces.
    let text = "a日本🚀é!";
    let mut detok = IncrementalDetokenizer::new(&tok, false);
    let pieces: Vec<String> = text
        .bytes()
        .map(|b| detok.push(u32::from(b)).unwrap())
        .collect();
    assert_eq!(
        pieces,
        ["a", "", "", "日", "", "", "本", "", "", "", "🚀", "", "é", "!"].map(String::from)
    );
    assert_eq!(detok.finish().unwrap(), "");

    // An incomplete character at the end comes out as U+FFFD only when flushed.
    let mut detok = IncrementalDetokenizer::new(&tok, false);
    assert_eq!(detok.push(0xE6).unwrap(), "");
    assert_eq!(detok.push(0x97).unwrap(), "");
    assert_eq!(detok.finish().unwrap(), "\u{FFFD}");

    // Bytes that can never be completed are emitted as soon as a later token shows it.
    let mut detok = IncrementalDetokenizer::new(&tok, false);
    assert_eq!(detok.push(0xE6).unwrap(), "");
    assert_eq!(detok.push(u32::from(b'x')).unwrap(), "\u{FFFD}x");
    assert_eq!(detok.finish().unwrap(), "");
}

#[test]
fn byte_table_is_gpt2s() {
    let chars = byte_chars();
    assert_eq!(chars[b' ' as usize], 'Ġ');
    assert_eq!(chars[b'\n' as usize], 'Ċ');
    assert_eq!(chars[b'a' as usize], 'a');
}

#[test]
fn llama3_emits_whole_vocabulary_words_without_merging() {
    // Llama 3's tokenizer.json sets `ignore_merges`: a pre-token that is itself in the
    // vocabulary is one token even when no merge builds it.
    let with = |pre: &str| {
        let mut s = Synthetic::new(pre).token("ab", 1).token("abc", 1);
        s.merges = vec!["a b".into()];
        s.build().unwrap()
    };
    assert_eq!(with("llama-bpe").encode("abc", false).unwrap(), [257]);
    assert_eq!(
        with("qwen2").encode("abc", false).unwrap(),
        [256, u32::from(b'c')]
    );
}
