//! Precision and recall of a policy's input rule rails: harmful prompts (HarmBench standard and
//! contextual behaviours, AdvBench) against benign ones (XSTest safe prompts, GSM8K test
//! questions). Judge and perplexity rails need a model and are not run.
//!
//! ```text
//! cargo run --release -p seek-guard --example guard_eval
//! cargo run --release -p seek-guard --example guard_eval -- --data ../shared/data \
//!     --policy examples/policies/monitor-only.toml --rails words,regex,pii,secrets
//! ```
//!
//! A prompt counts as *detected* when any selected rail triggers on it, whatever its action
//! (a flag counts). `--rails` selects rail types; the default is every rule rail except
//! `injection` (the harmful sets are plain requests, not injection attempts: that rail is
//! reported separately, as its false-positive rate on the benign sets). The data files are
//! read from `--data` (default `../shared/data`, see its SOURCES.md for licences); they are
//! not part of this repository.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use seek_guard::Policy;

/// RFC 4180 CSV: quoted fields with "" escapes and newlines. Returns rows of fields.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

/// The values of one column of a CSV with a header, for rows where `filter` holds.
fn csv_column(
    path: &Path,
    column: &str,
    filter: impl Fn(&BTreeMap<&str, &str>) -> bool,
) -> Vec<String> {
    let text = read(path);
    let rows = parse_csv(&text);
    let header = &rows[0];
    let idx = header
        .iter()
        .position(|h| h == column)
        .unwrap_or_else(|| panic!("{}: no column {column:?} in {header:?}", path.display()));
    rows[1..]
        .iter()
        .filter(|r| r.len() == header.len())
        .filter(|r| {
            let m: BTreeMap<&str, &str> = header
                .iter()
                .map(String::as_str)
                .zip(r.iter().map(String::as_str))
                .collect();
            filter(&m)
        })
        .map(|r| r[idx].clone())
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| {
        eprintln!(
            "error: cannot read {}: {e}\n  ---> fix: pass --data DIR pointing at the shared data folder \
             (it holds harmbench/, advbench/, xstest/, gsm8k/; see its SOURCES.md)",
            path.display()
        );
        std::process::exit(1);
    })
}

struct Set {
    name: &'static str,
    harmful: bool,
    prompts: Vec<String>,
}

fn load_sets(data: &Path) -> Vec<Set> {
    let harmbench = csv_column(
        &data.join("harmbench/harmbench_behaviors_text_all.csv"),
        "Behavior",
        |r| matches!(r["FunctionalCategory"], "standard" | "contextual"),
    );
    let advbench = csv_column(&data.join("advbench/harmful_behaviors.csv"), "goal", |_| {
        true
    });
    let xstest = csv_column(&data.join("xstest/xstest_prompts.csv"), "prompt", |r| {
        r["label"] == "safe"
    });
    let gsm8k: Vec<String> = read(&data.join("gsm8k/test.jsonl"))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).expect("gsm8k: one JSON object per line");
            v["question"]
                .as_str()
                .expect("gsm8k: question field")
                .to_string()
        })
        .collect();
    vec![
        Set {
            name: "HarmBench (standard+contextual)",
            harmful: true,
            prompts: harmbench,
        },
        Set {
            name: "AdvBench behaviours",
            harmful: true,
            prompts: advbench,
        },
        Set {
            name: "XSTest safe",
            harmful: false,
            prompts: xstest,
        },
        Set {
            name: "GSM8K test",
            harmful: false,
            prompts: gsm8k,
        },
    ]
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut data = root.join("../shared/data");
    let mut policies: Vec<PathBuf> = Vec::new();
    let mut rails: Vec<String> = ["words", "regex", "pii", "secrets"]
        .map(String::from)
        .to_vec();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--data" => data = args.next().expect("--data DIR").into(),
            "--policy" => policies.push(args.next().expect("--policy PATH").into()),
            "--rails" => {
                rails = args
                    .next()
                    .expect("--rails a,b")
                    .split(',')
                    .map(String::from)
                    .collect()
            }
            other => {
                panic!("unknown argument {other:?} (use --data DIR, --policy PATH, --rails a,b)")
            }
        }
    }
    if policies.is_empty() {
        policies = ["strict-regulated.toml", "monitor-only.toml"]
            .iter()
            .map(|p| root.join("examples/policies").join(p))
            .collect();
    }
    let sets = load_sets(&data);

    for path in &policies {
        let policy = Policy::load(path).unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(1);
        });
        println!(
            "\npolicy {} ({}), rails counted: {}",
            policy.name(),
            path.display(),
            rails.join(",")
        );
        println!(
            "  {:<32} {:>5} {:>9} {:>7}   by rail",
            "set", "n", "detected", "rate"
        );
        let (mut tp, mut fn_, mut fp, mut tn) = (0usize, 0usize, 0usize, 0usize);
        let mut injection_fp = 0usize;
        let mut benign_total = 0usize;
        for set in &sets {
            let mut detected = 0;
            let mut by_rail: BTreeMap<String, usize> = BTreeMap::new();
            for prompt in &set.prompts {
                let o = policy.check_input(prompt);
                let mut hit = false;
                for r in o.results.iter().filter(|r| r.triggered) {
                    *by_rail.entry(r.rail.clone()).or_default() += 1;
                    if rails.iter().any(|k| k == r.kind) {
                        hit = true;
                    }
                }
                if !set.harmful {
                    benign_total += 1;
                    if o.results
                        .iter()
                        .any(|r| r.triggered && r.kind == "injection")
                    {
                        injection_fp += 1;
                    }
                }
                detected += usize::from(hit);
                match (set.harmful, hit) {
                    (true, true) => tp += 1,
                    (true, false) => fn_ += 1,
                    (false, true) => fp += 1,
                    (false, false) => tn += 1,
                }
            }
            let rails_str: Vec<String> = by_rail.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            println!(
                "  {:<32} {:>5} {:>9} {:>6.1}%   {}",
                set.name,
                set.prompts.len(),
                detected,
                100.0 * detected as f64 / set.prompts.len().max(1) as f64,
                rails_str.join(" ")
            );
        }
        // Precision is undefined when nothing was detected; say so instead of printing 0.
        let precision = (tp + fp > 0).then(|| tp as f64 / (tp + fp) as f64);
        let recall = tp as f64 / (tp + fn_).max(1) as f64;
        let f1 = precision.map_or(0.0, |p| {
            if p + recall > 0.0 {
                2.0 * p * recall / (p + recall)
            } else {
                0.0
            }
        });
        println!(
            "  harmful vs benign: TP {tp} FN {fn_} FP {fp} TN {tn}  precision {}  recall {:.3}  F1 {:.3}  FPR {:.3}",
            precision.map_or("n/a".to_string(), |p| format!("{p:.3}")),
            recall,
            f1,
            fp as f64 / (fp + tn).max(1) as f64
        );
        println!(
            "  injection rail on benign prompts: {injection_fp}/{benign_total} triggered (false positives)"
        );
    }
}
