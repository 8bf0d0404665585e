//! `seek tokenize` and `seek logits`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use seek_types::TokenId;

use crate::source::{load_options_for, tokenizer_for};
use crate::{npy, ModelArg};

/// `seek tokenize MODEL TEXT`.
#[derive(Args, Debug)]
pub struct TokenizeArgs {
    #[command(flatten)]
    model: ModelArg,
    /// The text to encode (special tokens written in it, like `<|im_start|>`, are recognised).
    text: String,
    /// Add the model's BOS token as its tokenizer config asks.
    #[arg(long)]
    add_special_tokens: bool,
    /// Also print each token's text.
    #[arg(long, short)]
    verbose: bool,
}

/// `seek logits MODEL --tokens 1,2,3 --out FILE.npy`.
#[derive(Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Comma-separated token ids.
    #[arg(long, value_delimiter = ',', required_unless_present = "text")]
    tokens: Vec<TokenId>,
    /// Encode this text instead of passing ids.
    #[arg(long, conflicts_with = "tokens")]
    text: Option<String>,
    /// Where to write the `(T, V)` float32 array.
    #[arg(long)]
    out: PathBuf,
}

/// Prints the ids as a JSON array (and, with `-v`, one token per line).
pub fn tokenize(args: TokenizeArgs) -> anyhow::Result<()> {
    let path = args.model.resolve()?;
    let (_, format) = seek_models::inspect(&path)?;
    let tok = tokenizer_for(&format)?;
    let ids = tok.encode(&args.text, args.add_special_tokens)?;
    if args.verbose {
        for &id in &ids {
            println!("{id:>8}  {:?}", tok.id_to_token(id).unwrap_or_default());
        }
        eprintln!("{} tokens", ids.len());
    } else {
        println!("{}", serde_json::to_string(&ids)?);
    }
    Ok(())
}

/// Runs a full-sequence forward and writes every position's logits.
pub fn logits(args: LogitsArgs) -> anyhow::Result<()> {
    let path = args.model.resolve()?;
    let loaded = seek_models::load(&path, &load_options_for(&args.model)?)?;
    let ids = match &args.text {
        // Only `--text` needs the tokenizer, so token ids work with weight-only files too.
        Some(t) => tokenizer_for(&loaded.format)?.encode(t, true)?,
        None => args.tokens.clone(),
    };
    let logits = seek_engine::generate::all_logits(loaded.model.as_ref(), &ids)?;
    let (t, v) = logits.dims2()?;
    let data: Vec<f32> = logits.flatten_all()?.to_vec1()?;
    npy::write_f32(&args.out, &[t, v], &data).context("cannot write the logits")?;
    eprintln!(
        "wrote logits ({t} positions x {v}) to {}",
        args.out.display()
    );
    Ok(())
}
