//! Per-request overhead of the rule rails of `examples/policies/strict-regulated.toml`.
//!
//! ```text
//! cargo run --release -p seek-guard --example rails_bench
//! cargo run --release -p seek-guard --example rails_bench -- --runs 5000 --policy my.toml
//! ```
//!
//! Input: every input rule rail on a 4 KB prompt (prose with an e-mail, a phone, a card and
//! an IBAN to pseudonymise), p50 and p99 over `--runs` requests, per rail and in total.
//! Output: the output rails streaming a 4 KB answer in 16-byte chunks (about four tokens
//! each): time per chunk, and in total per answer. Plain `Instant` timing after a warm-up;
//! run it on an idle machine, the p99 is sensitive to neighbours.

use std::path::PathBuf;
use std::time::Instant;

use seek_guard::{Channel, Policy, Pseudonyms, Stage};

const PARAGRAPH: &str =
    "Our quarterly review covers the migration of the billing service to the new \
cluster, the incident on the payments queue and the plan for the next release. The team asks for \
a summary that a non-technical reader can follow, with the risks called out and the owners named. ";

/// A prompt of exactly `bytes` bytes (ASCII prose), with personal data spread through it.
fn prompt(bytes: usize) -> String {
    let pii = [
        "Contact jane.doe@example.com for the billing details. ",
        "Her phone is +44 20 7946 0958. ",
        "The test card 4111 1111 1111 1111 was charged twice. ",
        "Refunds go to DE89 3704 0044 0532 0130 00. ",
    ];
    let mut s = String::new();
    let mut i = 0;
    while s.len() < bytes {
        s.push_str(PARAGRAPH);
        if i < pii.len() {
            s.push_str(pii[i]);
            i += 1;
        }
    }
    s.truncate(bytes);
    s
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    (percentile(&v, 0.5), percentile(&v, 0.99), mean)
}

fn main() {
    let mut runs = 2000usize;
    let mut policy_path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/policies/strict-regulated.toml");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--policy" => policy_path = args.next().expect("--policy PATH").into(),
            other => panic!("unknown argument {other:?} (use --runs N, --policy PATH)"),
        }
    }
    let policy = Policy::load(&policy_path).unwrap_or_else(|e| panic!("{e}"));
    let text = prompt(4096);
    println!(
        "policy {} ({}), {} runs, prompt {} bytes",
        policy.name(),
        policy_path.display(),
        runs,
        text.len()
    );

    // ---- input rails, whole prompt -------------------------------------------------------
    let warm = policy.check_input(&text);
    assert_eq!(
        warm.blocked_by, None,
        "the bench prompt must pass: {:?}",
        warm.results
    );
    let names: Vec<String> = warm.results.iter().map(|r| r.rail.clone()).collect();
    let mut total = Vec::with_capacity(runs);
    let mut per_rail: Vec<Vec<f64>> = vec![Vec::with_capacity(runs); names.len()];
    for _ in 0..runs / 10 {
        std::hint::black_box(policy.check_input(&text));
    }
    for _ in 0..runs {
        let t = Instant::now();
        let o = policy.check_input(std::hint::black_box(&text));
        total.push(t.elapsed().as_secs_f64() * 1e6);
        for (k, r) in o.results.iter().enumerate() {
            per_rail[k].push(r.latency_us as f64);
        }
        std::hint::black_box(o);
    }
    println!(
        "\ninput rails on a {} B prompt ({} findings redacted)",
        text.len(),
        warm.pseudonyms.len()
    );
    println!(
        "  {:<22} {:>9} {:>9} {:>9}",
        "rail", "p50 µs", "p99 µs", "mean µs"
    );
    for (name, v) in names.iter().zip(per_rail) {
        let kind = policy
            .rule_rails(Stage::Input)
            .into_iter()
            .find(|r| r.0 == name)
            .map_or("", |r| r.1);
        let (p50, p99, mean) = summary(v);
        println!(
            "  {:<22} {:>9.1} {:>9.1} {:>9.1}",
            format!("{name} ({kind})"),
            p50,
            p99,
            mean
        );
    }
    let (p50, p99, mean) = summary(total);
    println!(
        "  {:<22} {:>9.1} {:>9.1} {:>9.1}",
        "total check_input", p50, p99, mean
    );

    // ---- output rails, streamed in 16-byte chunks ------------------------------------------
    let answer = prompt(4096);
    let chunks: Vec<&str> = answer
        .as_bytes()
        .chunks(16)
        .map(|c| std::str::from_utf8(c).expect("ASCII"))
        .collect();
    let mut per_chunk = Vec::with_capacity(runs * chunks.len() / 4);
    let mut per_answer = Vec::with_capacity(runs);
    let mut whole = Vec::with_capacity(runs);
    let p = Pseudonyms::new();
    for r in 0..runs {
        let t_answer = Instant::now();
        let mut g = policy.output_guard(Channel::Content, &p);
        let mut emitted = 0;
        for c in &chunks {
            let t = Instant::now();
            let step = g.push(c);
            // Every 4th answer records per-chunk times: enough samples, less timer overhead.
            if r % 4 == 0 {
                per_chunk.push(t.elapsed().as_secs_f64() * 1e6);
            }
            emitted += step.emit.len();
        }
        emitted += g.finish().emit.len();
        per_answer.push(t_answer.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(emitted);

        let t = Instant::now();
        std::hint::black_box(policy.check_output(Channel::Content, &answer, &p));
        whole.push(t.elapsed().as_secs_f64() * 1e6);
    }
    println!(
        "\noutput rails ({} on content, overlap {} B) on a {} B answer",
        policy.rule_rails(Stage::Output).len(),
        policy.overlap(),
        answer.len()
    );
    println!(
        "  {:<30} {:>9} {:>9} {:>9}",
        "", "p50 µs", "p99 µs", "mean µs"
    );
    let (p50, p99, mean) = summary(per_chunk);
    println!(
        "  {:<30} {:>9.1} {:>9.1} {:>9.1}",
        "per 16 B chunk (push)", p50, p99, mean
    );
    let (p50, p99, mean) = summary(per_answer);
    println!(
        "  {:<30} {:>9.1} {:>9.1} {:>9.1}",
        format!("per answer, {} chunks", chunks.len()),
        p50,
        p99,
        mean
    );
    let (p50, p99, mean) = summary(whole);
    println!(
        "  {:<30} {:>9.1} {:>9.1} {:>9.1}",
        "per answer, one piece", p50, p99, mean
    );
}
