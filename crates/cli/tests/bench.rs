//! `seek bench` on the tiny golden GGUF (no tokenizer in it: the ids are synthetic).
//! These tests check what is reported, never how fast: speed targets are not tested by time.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden/gguf/tiny-qwen2.f32.gguf")
}

fn seek(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seek"))
        .args(args)
        .env_remove("SEEK_THREADS")
        .env_remove("RAYON_NUM_THREADS")
        .output()
        .expect("seek runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Small lengths; 300 does not fit the fixture's 256-token context, nor does 254 + 4 decoded.
fn bench_json() -> Value {
    let model = tiny();
    let o = seek(&[
        "--threads",
        "1",
        "bench",
        model.to_str().unwrap(),
        "--prefill",
        "8,16,300",
        "--decode-context",
        "0,8,254",
        "--decode-tokens",
        "4",
        "--repeats",
        "2",
        "--bandwidth-mib",
        "16",
        "--json",
    ]);
    assert!(o.status.success(), "seek bench failed: {}", stderr(&o));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// A measured figure: median inside [min, max], one raw sample per repeat, all positive.
fn check_stats(s: &Value, repeats: usize, what: &str) {
    let samples = s["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: {s}"));
    assert_eq!(samples.len(), repeats, "{what}: {s}");
    assert!(samples.iter().all(|x| f(x) > 0.0), "{what}: {s}");
    let (min, median, max) = (f(&s["min"]), f(&s["median"]), f(&s["max"]));
    assert!(0.0 < min && min <= median && median <= max, "{what}: {s}");
    assert!(f(&s["stdev"]) >= 0.0, "{what}: {s}");
}

#[test]
fn json_reports_every_figure_and_skips_what_does_not_fit() {
    let j = bench_json();
    assert_eq!(j["model"]["architecture"], "qwen2", "{j}");
    assert_eq!(j["model"]["context_length"], 256, "{j}");
    assert_eq!(j["threads"]["effective"], 1, "{j}");
    assert_eq!(j["repeats"], 2);
    assert_eq!(j["decode_tokens"], 4);
    assert!(f(&j["load_s"]) >= 0.0);
    assert_eq!(j["token_source"], "synthetic", "{j}");
    assert!(
        j["token_source_note"]
            .as_str()
            .unwrap()
            .contains("tokenizer"),
        "{j}"
    );

    let prefill = j["prefill"].as_array().unwrap();
    let lengths: Vec<u64> = prefill
        .iter()
        .map(|p| p["tokens"].as_u64().unwrap())
        .collect();
    assert_eq!(lengths, [8, 16, 300]);
    for p in &prefill[..2] {
        assert!(p["skipped"].is_null(), "{p}");
        check_stats(&p["tokens_per_s"], 2, "prefill tok/s");
        check_stats(&p["seconds"], 2, "prefill seconds");
        check_stats(&p["time_to_first_token_s"], 2, "time to first token");
        assert!(f(&p["time_to_first_token_s"]["median"]) >= f(&p["seconds"]["min"]));
    }
    let too_long = prefill[2]["skipped"]
        .as_str()
        .expect("300 tokens are skipped");
    assert!(
        too_long.contains("256"),
        "the reason names the context: {too_long}"
    );
    assert!(prefill[2]["tokens_per_s"].is_null());

    let bandwidth = f(&j["bandwidth"]["gb_per_s"]);
    assert!(bandwidth > 0.0, "{j}");
    assert_eq!(
        j["bandwidth"]["runs_gb_per_s"].as_array().unwrap().len(),
        10
    );
    assert_eq!(j["bandwidth"]["threads"], 1);
    assert_eq!(j["bandwidth"]["buffer_bytes"], 16 << 20);

    // The fixture has no output.weight: the output projection reads the whole embedding,
    // so a decode step reads every tensor.
    let weights = j["decode_weight_bytes_per_token"].as_u64().unwrap();
    assert_eq!(weights, j["model"]["weight_bytes"].as_u64().unwrap());
    let decode = j["decode"].as_array().unwrap();
    let contexts: Vec<u64> = decode
        .iter()
        .map(|d| d["context"].as_u64().unwrap())
        .collect();
    assert_eq!(contexts, [0, 8, 254]);
    for d in &decode[..2] {
        assert!(d["skipped"].is_null(), "{d}");
        assert_eq!(d["tokens"], 4);
        check_stats(&d["tokens_per_s"], 2, "decode tok/s");
        check_stats(&d["ms_per_token"], 2, "decode ms/token");
        assert!(d["bytes_read_per_token"].as_u64().unwrap() > weights, "{d}");
        let bound = f(&d["bound_tokens_per_s"]);
        let expected = bandwidth * 1e9 / d["bytes_read_per_token"].as_u64().unwrap() as f64;
        assert!((bound - expected).abs() <= 1e-6 * expected, "{d}");
        let percent = f(&d["percent_of_bound"]);
        let median = f(&d["tokens_per_s"]["median"]);
        assert!(
            (percent - 100.0 * median / bound).abs() < 1e-6 * percent,
            "{d}"
        );
    }
    // More context, more KV cache to read.
    assert!(
        decode[1]["bytes_read_per_token"].as_u64() > decode[0]["bytes_read_per_token"].as_u64()
    );
    let no_room = decode[2]["skipped"]
        .as_str()
        .expect("254 + 4 tokens are skipped");
    assert!(
        no_room.contains("254") && no_room.contains("256"),
        "{no_room}"
    );
    assert!(decode[2]["tokens_per_s"].is_null());

    let m = &j["memory"];
    let file_len = std::fs::metadata(tiny()).unwrap().len();
    assert_eq!(m["model_file_bytes"].as_u64().unwrap(), file_len);
    // The largest cache holds at least 8 + 4 positions of 512 bytes.
    assert!(
        m["kv_cache_peak_bytes"].as_u64().unwrap() >= 12 * 512,
        "{m}"
    );
    if cfg!(target_os = "linux") {
        assert!(m["peak_rss_bytes"].as_u64().unwrap() > file_len, "{m}");
        assert!(f(&m["peak_over_model_and_kv"]) > 0.0, "{m}");
    }
}

#[test]
fn the_table_shows_both_phases_and_the_bound() {
    let model = tiny();
    let o = seek(&[
        "--threads",
        "2",
        "bench",
        model.to_str().unwrap(),
        "--prefill",
        "4,1000",
        "--decode-context",
        "2",
        "--decode-tokens",
        "2",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--bandwidth-mib",
        "8",
    ]);
    assert!(o.status.success(), "seek bench failed: {}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for want in [
        "prefill",
        "decode",
        "% of bound",
        "2 threads",
        "peak RSS",
        "GB/s",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(
        out.contains("1000 tokens do not fit"),
        "the skipped length says why:\n{out}"
    );
}

#[test]
fn bad_flags_are_rejected_before_loading() {
    // A missing model would fail later: these must fail on the flag first.
    let cases: [(&[&str], &str); 5] = [
        (&["--prefill", "0"], "--prefill"),
        (&["--prefill", "8,abc"], "--prefill"),
        (&["--repeats", "0"], "--repeats"),
        (&["--decode-tokens", "0"], "--decode-tokens"),
        (&["--decode-context=-1"], "--decode-context"),
    ];
    for (flags, named) in cases {
        let mut args = vec!["bench", "/nonexistent/model.gguf"];
        args.extend_from_slice(flags);
        let o = seek(&args);
        let err = stderr(&o);
        assert!(!o.status.success(), "{flags:?} was accepted");
        assert!(
            err.contains(named),
            "{flags:?}: the error names {named}: {err}"
        );
        assert!(
            !err.contains("no such file"),
            "{flags:?}: checked after loading: {err}"
        );
    }
}

/// `--batch` times decode steps of several sequences at once, and `--hourly-price` turns
/// each measured speed into the cost of a million output tokens.
#[test]
fn batched_decode_and_cost_per_million_tokens_are_reported() {
    let model = tiny();
    let o = seek(&[
        "--threads",
        "1",
        "bench",
        model.to_str().unwrap(),
        "--prefill",
        "8",
        "--decode-context",
        "0",
        "--decode-tokens",
        "4",
        "--repeats",
        "2",
        "--bandwidth-mib",
        "0",
        "--batch",
        "1,3",
        "--hourly-price",
        "2.5",
        "--json",
    ]);
    assert!(o.status.success(), "seek bench failed: {}", stderr(&o));
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    let batched = j["batched"].as_array().unwrap();
    assert_eq!(batched.len(), 2);
    for (b, n) in batched.iter().zip([1u64, 3]) {
        assert_eq!(b["sequences"], n);
        check_stats(&b["tokens_per_s"], 2, "batched tok/s");
        // $2.5/h at T tok/s: 2.5 / 3600 / T * 1e6 dollars per million.
        let want = 2.5 / 3600.0 / f(&b["tokens_per_s"]["median"]) * 1e6;
        assert!((f(&b["cost_per_million_output_usd"]) - want).abs() < 1e-9 * want.max(1.0));
    }
    let d = &j["decode"][0];
    let want = 2.5 / 3600.0 / f(&d["tokens_per_s"]["median"]) * 1e6;
    assert!((f(&d["cost_per_million_output_usd"]) - want).abs() < 1e-9 * want.max(1.0));
    assert_eq!(f(&j["hourly_price_usd"]), 2.5);

    let o = seek(&["bench", model.to_str().unwrap(), "--hourly-price=0"]);
    assert!(
        stderr(&o).contains("--hourly-price must be a positive"),
        "{}",
        stderr(&o)
    );
}
