//! `seek inspect`.

use clap::Args;
use seek_models::{ModelFormat, ModelInfo};
use serde::Serialize;
use std::path::PathBuf;

use crate::source::tokenizer_for;
use crate::ModelArg;

/// `seek inspect MODEL`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Print the whole chat template (default: its first lines).
    #[arg(long)]
    template: bool,
}

#[derive(Serialize)]
struct TokenizerSummary {
    vocab_size: usize,
    pre_tokenizer: Option<String>,
    bos: Option<String>,
    eos: Vec<String>,
    reasoning_model: bool,
}

#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    info: ModelInfo,
    /// Percent of the bytes the header describes that the file holds (GGUF only).
    complete_percent: Option<f64>,
    /// The files of a split GGUF model, in part order (absent for one file).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    parts: Vec<PathBuf>,
    tokenizer: Option<TokenizerSummary>,
    tokenizer_error: Option<String>,
    chat_template: Option<String>,
}

fn human(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// `seek inspect MODEL`: reads headers only, so it works on partial downloads too.
pub fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let path = args.model.resolve()?;
    let (info, format) = seek_models::inspect(&path)?;
    let complete_percent = match &format {
        ModelFormat::Gguf(f) => Some(100.0 * f.file_len() as f64 / f.expected_len().max(1) as f64),
        ModelFormat::HfDir(_) => None,
    };
    let (tokenizer, tokenizer_error) = match tokenizer_for(&format) {
        Ok(t) => (Some(t), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    let chat_template = tokenizer
        .as_ref()
        .and_then(|t| t.chat_template())
        .map(|t| t.source().to_string());
    let summary = tokenizer.as_ref().map(|t| TokenizerSummary {
        vocab_size: t.vocab_size(),
        pre_tokenizer: t.pre_tokenizer_name().map(str::to_string),
        bos: t.bos_token_id().and_then(|id| t.id_to_token(id)),
        eos: t
            .eos_token_ids()
            .iter()
            .filter_map(|&id| t.id_to_token(id))
            .collect(),
        reasoning_model: seek_engine::chat::is_reasoning_model(t),
    });
    let parts: Vec<PathBuf> = match &format {
        ModelFormat::Gguf(f) if f.part_paths().len() > 1 => {
            f.part_paths().into_iter().map(PathBuf::from).collect()
        }
        _ => Vec::new(),
    };
    let report = Report {
        info,
        complete_percent,
        parts,
        tokenizer: summary,
        tokenizer_error,
        chat_template,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let i = &report.info;
    println!(
        "model          {}",
        i.name.as_deref().unwrap_or("(unnamed)")
    );
    println!("path           {} ({})", i.path.display(), i.format);
    if !report.parts.is_empty() {
        println!("split          {} parts:", report.parts.len());
        for p in &report.parts {
            let len = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            println!("                 {} ({})", p.display(), bytes(len));
        }
    }
    println!("architecture   {}", i.architecture);
    let active = if i.active_parameters < i.parameters {
        format!(" · {} active per token", human(i.active_parameters))
    } else {
        String::new()
    };
    if i.weight_bytes == 0 {
        println!(
            "parameters     {} (counted from config.json: no weights in the folder){active}",
            human(i.parameters)
        );
    } else {
        println!(
            "parameters     {} ({} of weights){active}",
            human(i.parameters),
            bytes(i.weight_bytes)
        );
    }
    if let Some(e) = &i.experts {
        println!("experts        {e}");
    }
    let types: Vec<String> = i
        .weight_types
        .iter()
        .map(|(t, n)| format!("{t} {:.1}%", 100.0 * *n as f64 / i.parameters.max(1) as f64))
        .collect();
    if !types.is_empty() {
        println!("weight types   {}", types.join(", "));
    }
    println!("context        {} tokens", i.context_length);
    println!(
        "layers         {} · hidden {} · ffn {} · heads {} (kv {}) · head dim {}",
        i.num_layers, i.hidden_size, i.intermediate_size, i.num_heads, i.num_kv_heads, i.head_dim
    );
    println!("rope theta     {}", i.rope_theta);
    let half = if i.kv_cache_dtype == "f32" {
        format!(", {} in f16/bf16", bytes(i.kv_bytes_per_token / 2))
    } else {
        String::new()
    };
    println!(
        "KV cache       {} per token ({}{half}) · {} at full context · {}",
        bytes(i.kv_bytes_per_token),
        i.kv_cache_dtype,
        bytes(i.kv_bytes_per_token * i.context_length as u64),
        i.kv_cache_layout
    );
    if let Some(p) = report.complete_percent {
        if p < 100.0 {
            println!("file           TRUNCATED: holds {p:.1}% of the data its header describes; `seek run` will refuse it");
        }
    }
    match (&report.tokenizer, &report.tokenizer_error) {
        (Some(t), _) => println!(
            "tokenizer      {} tokens · pre-tokenizer {} · bos {} · eos {}{}",
            t.vocab_size,
            t.pre_tokenizer.as_deref().unwrap_or("-"),
            t.bos.as_deref().unwrap_or("-"),
            t.eos.join(" "),
            if t.reasoning_model {
                " · reasoning model (<think>)"
            } else {
                ""
            }
        ),
        (None, Some(e)) => println!("tokenizer      unavailable: {e}"),
        (None, None) => {}
    }
    match &report.chat_template {
        Some(t) if args.template => println!("chat template\n{t}"),
        Some(t) => {
            let lines: Vec<&str> = t.lines().collect();
            println!(
                "chat template  {} lines (--template prints it all)",
                lines.len()
            );
            for l in lines.iter().take(6) {
                println!("    {}", l.chars().take(110).collect::<String>());
            }
        }
        None => println!("chat template  none"),
    }
    Ok(())
}
