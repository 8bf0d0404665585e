//! What one `AuditLog::record` costs, with synchronous NORMAL and FULL, for an entry that keeps
//! its texts (about 28 KB: prompt, reasoning, answer and their redacted forms, six rails) and
//! for one that keeps only hashes; and how fast `sha256_hex` hashes.
//!
//! ```text
//! cargo run --release -p seek-audit --example record_cost -- [DIR] [N]
//! ```
//!
//! DIR (default `.`) must be on the disk the audit database will live on: on a tmpfs an fsync
//! costs nothing and FULL looks free. N entries per case (default 2000).

use std::time::Instant;

use seek_audit::{sha256_hex, AuditConfig, AuditEntry, AuditLog, RailRecord, Synchronous};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| ".".into());
    let n: usize = args
        .next()
        .map_or(2000, |s| s.parse().expect("N is a number"));
    let tmp = tempfile::tempdir_in(&dir).expect("DIR is a writable folder");

    let prompt = "Summarise the attached contract for a customer. ".repeat(84); // ~4 KB
    let reasoning = "<think>Clause 4 limits liability; clause 9 ...</think> ".repeat(150); // ~8 KB
    let answer = "The contract limits liability to fees paid. ".repeat(45); // ~2 KB
    let rails: Vec<RailRecord> = [
        "pii",
        "secrets",
        "jailbreak",
        "deny_words",
        "topic",
        "length",
    ]
    .iter()
    .enumerate()
    .map(|(i, r)| RailRecord {
        rail: r.to_string(),
        stage: if i < 3 { "input" } else { "output:content" }.into(),
        action: ["block", "redact", "flag"][i % 3].into(),
        triggered: i == 1,
        detail: if i == 1 {
            "email x1".into()
        } else {
            String::new()
        },
        latency_us: 12,
    })
    .collect();
    let with_texts = AuditEntry {
        time_ms: seek_audit::now_ms(),
        request_id: "chatcmpl-0123456789abcdef".into(),
        tenant: "acme".into(),
        model: "deepseek-r1-distill-qwen-7b".into(),
        endpoint: "/v1/chat/completions".into(),
        status: 200,
        finish_reason: Some("stop".into()),
        policy: Some("default".into()),
        prompt_sha256: sha256_hex(&prompt),
        prompt_redacted: Some(prompt.clone()),
        prompt: Some(prompt.clone()),
        reasoning_sha256: Some(sha256_hex(&reasoning)),
        reasoning_redacted: Some(reasoning.clone()),
        reasoning: Some(reasoning.clone()),
        answer_sha256: Some(sha256_hex(&answer)),
        answer_redacted: Some(answer.clone()),
        answer: Some(answer.clone()),
        rails,
        prompt_tokens: 900,
        completion_tokens: 2400,
        reasoning_tokens: 1900,
        cached_prompt_tokens: 512,
        cost_usd: 0.0061,
        latency_ms: 5230.0,
        ..Default::default()
    };
    let hashes_only = AuditEntry {
        prompt: None,
        prompt_redacted: None,
        reasoning: None,
        reasoning_redacted: None,
        answer: None,
        answer_redacted: None,
        ..with_texts.clone()
    };

    println!("record, {n} entries per case, database in {dir}");
    println!(
        "{:<8} {:<12} {:>9} {:>9} {:>9}",
        "sync", "entry", "mean µs", "p50 µs", "p99 µs"
    );
    for (sync, sync_name) in [(Synchronous::Normal, "NORMAL"), (Synchronous::Full, "FULL")] {
        for (entry, entry_name) in [(&with_texts, "texts 28KB"), (&hashes_only, "hashes only")] {
            let path = tmp
                .path()
                .join(format!("{sync_name}-{}.db", entry_name.len()));
            let config = AuditConfig {
                synchronous: sync,
                ..AuditConfig::default()
            };
            let log = AuditLog::open_with(&path, &config).unwrap();
            for _ in 0..20 {
                log.record(entry).unwrap(); // Warm the page cache and statement cache.
            }
            let mut us: Vec<f64> = (0..n)
                .map(|_| {
                    let t = Instant::now();
                    log.record(entry).unwrap();
                    t.elapsed().as_secs_f64() * 1e6
                })
                .collect();
            us.sort_by(f64::total_cmp);
            let mean = us.iter().sum::<f64>() / n as f64;
            println!(
                "{sync_name:<8} {entry_name:<12} {mean:>9.1} {:>9.1} {:>9.1}",
                us[n / 2],
                us[(n * 99 / 100).min(n - 1)]
            );
        }
    }

    let big = "x".repeat(1 << 20);
    let t = Instant::now();
    let reps = 64;
    for _ in 0..reps {
        std::hint::black_box(sha256_hex(std::hint::black_box(&big)));
    }
    let mb_s = reps as f64 / t.elapsed().as_secs_f64();
    println!(
        "sha256_hex: {mb_s:.0} MiB/s ({:.1} µs for a 4 KB prompt)",
        4096.0 / (mb_s * 1048576.0) * 1e6
    );
}
