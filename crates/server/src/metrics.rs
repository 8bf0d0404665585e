//! Prometheus metrics, written by hand in the text exposition format (version 0.0.4).
//!
//! Counters of billed usage (tokens, cost) are the numbers the responses carry, so the cost a
//! dashboard shows is the sum of what clients were told. Latencies are measured in the server
//! from the arrival times of engine events: time to first token from the request's arrival to
//! its first generated token, inter-token latency between consecutive tokens of a choice.
//! Engine gauges (queue, running, prefix cache) are read from the engine when scraped.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use seek_engine::serve::EngineStats;

use crate::price::Prices;
use crate::wire::Usage;

const TTFT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
const DURATION_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct UsageTotals {
    prompt: u64,
    completion: u64,
    reasoning: u64,
    cache_hit: u64,
    cache_miss: u64,
    cost: f64,
}

#[derive(Debug, Default)]
struct Inner {
    /// (endpoint, model, tenant, status) -> count.
    requests: BTreeMap<(&'static str, String, String, u16), u64>,
    /// (model, tenant) -> billed usage.
    usage: BTreeMap<(String, String), UsageTotals>,
    ttft: BTreeMap<String, Histogram>,
    itl: BTreeMap<String, Histogram>,
    duration: BTreeMap<String, Histogram>,
    json_invalid: BTreeMap<String, u64>,
    /// (tenant, limit) -> requests refused by a rate limit.
    rate_limited: BTreeMap<(String, &'static str), u64>,
}

/// What the scrape reads from one model's engine.
pub(crate) struct EngineGauges<'a> {
    pub name: &'a str,
    pub stats: EngineStats,
    pub prices: Prices,
    pub max_context: usize,
}

/// The server's metrics.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        // A panic while holding the lock leaves plain counters behind; keep counting.
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// One answered request.
    pub fn request(
        &self,
        endpoint: &'static str,
        model: &str,
        tenant: &str,
        status: u16,
        secs: f64,
    ) {
        self.with(|m| {
            *m.requests
                .entry((endpoint, model.to_string(), tenant.to_string(), status))
                .or_default() += 1;
            m.duration
                .entry(model.to_string())
                .or_insert_with(|| Histogram::new(DURATION_BUCKETS))
                .observe(secs);
        });
    }

    /// Billed usage of one request.
    pub fn usage(&self, model: &str, tenant: &str, u: &Usage) {
        self.with(|m| {
            let t = m
                .usage
                .entry((model.to_string(), tenant.to_string()))
                .or_default();
            t.prompt += u.prompt_tokens as u64;
            t.completion += u.completion_tokens as u64;
            t.reasoning += u.completion_tokens_details.reasoning_tokens as u64;
            t.cache_hit += u.prompt_cache_hit_tokens as u64;
            t.cache_miss += u.prompt_cache_miss_tokens as u64;
            t.cost += u.cost;
        });
    }

    /// Latencies of one choice: time to first token, and the gaps between its tokens.
    pub fn latencies(&self, model: &str, ttft: Option<f64>, gaps: &[f64]) {
        self.with(|m| {
            if let Some(t) = ttft {
                m.ttft
                    .entry(model.to_string())
                    .or_insert_with(|| Histogram::new(TTFT_BUCKETS))
                    .observe(t);
            }
            let h = m
                .itl
                .entry(model.to_string())
                .or_insert_with(|| Histogram::new(ITL_BUCKETS));
            for &g in gaps {
                h.observe(g);
            }
        });
    }

    /// A `json_object` response whose content did not parse as JSON.
    pub fn json_invalid(&self, model: &str) {
        self.with(|m| *m.json_invalid.entry(model.to_string()).or_default() += 1);
    }

    /// A request refused by its tenant's rate limit (`limit`: `requests` or `tokens`).
    pub fn rate_limited(&self, tenant: &str, limit: &'static str) {
        self.with(|m| {
            *m.rate_limited
                .entry((tenant.to_string(), limit))
                .or_default() += 1
        });
    }

    /// The exposition text.
    pub fn render(&self, engines: &[EngineGauges<'_>], draining: bool) -> String {
        let mut o = String::new();
        let help = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        self.with(|m| {
            help(&mut o, "seek_requests_total", "counter", "Requests answered, by endpoint, model, tenant and HTTP status (499: the client went away).");
            for ((e, model, tenant, status), n) in &m.requests {
                let _ = writeln!(
                    o,
                    "seek_requests_total{{endpoint=\"{e}\",model=\"{}\",tenant=\"{}\",status=\"{status}\"}} {n}",
                    esc(model),
                    esc(tenant)
                );
            }
            help(&mut o, "seek_rate_limited_total", "counter", "Requests refused with 429 by their tenant's rate limit, by tenant and limit (requests or tokens per minute).");
            for ((tenant, limit), n) in &m.rate_limited {
                let _ = writeln!(
                    o,
                    "seek_rate_limited_total{{tenant=\"{}\",limit=\"{limit}\"}} {n}",
                    esc(tenant)
                );
            }
            type Field = fn(&UsageTotals) -> f64;
            let families: [(&str, &str, Field); 6] = [
                ("seek_prompt_tokens_total", "Prompt tokens billed.", |t| t.prompt as f64),
                ("seek_completion_tokens_total", "Generated tokens billed, reasoning included.", |t| t.completion as f64),
                ("seek_reasoning_tokens_total", "Generated tokens inside the reasoning block.", |t| t.reasoning as f64),
                ("seek_prompt_cache_hit_tokens_total", "Prompt tokens served from the prefix cache.", |t| t.cache_hit as f64),
                ("seek_prompt_cache_miss_tokens_total", "Prompt tokens computed.", |t| t.cache_miss as f64),
                ("seek_cost_usd_total", "Cost of the requests at the configured prices, US dollars.", |t| t.cost),
            ];
            for (name, text, field) in families {
                help(&mut o, name, "counter", text);
                for ((model, tenant), t) in &m.usage {
                    let _ = writeln!(
                        o,
                        "{name}{{model=\"{}\",tenant=\"{}\"}} {}",
                        esc(model),
                        esc(tenant),
                        field(t)
                    );
                }
            }
            let hists = [
                ("seek_time_to_first_token_seconds", "From a request's arrival to its first generated token.", &m.ttft),
                ("seek_inter_token_latency_seconds", "Between consecutive generated tokens of a choice.", &m.itl),
                ("seek_request_duration_seconds", "From a request's arrival to its last byte.", &m.duration),
            ];
            for (name, text, map) in hists {
                help(&mut o, name, "histogram", text);
                for (model, h) in map {
                    h.write(&mut o, name, &format!("model=\"{}\"", esc(model)));
                }
            }
            help(&mut o, "seek_json_invalid_total", "counter", "json_object responses whose content is not valid JSON (decoding is not constrained).");
            for (model, n) in &m.json_invalid {
                let _ = writeln!(o, "seek_json_invalid_total{{model=\"{}\"}} {n}", esc(model));
            }
        });
        type Gauge = fn(&EngineGauges<'_>) -> f64;
        let gauges: [(&str, &str, &str, Gauge); 13] = [
            (
                "seek_queue_depth",
                "gauge",
                "Requests waiting for a place in the batch.",
                |g| g.stats.queued as f64,
            ),
            (
                "seek_running_sequences",
                "gauge",
                "Sequences in the running batch.",
                |g| g.stats.running as f64,
            ),
            (
                "seek_prefix_cache_tokens",
                "gauge",
                "Tokens held by the per-sequence prefix cache (models without paged KV).",
                |g| g.stats.prefix_cache_tokens as f64,
            ),
            (
                "seek_prompt_cache_hit_ratio",
                "gauge",
                "Prompt tokens served from the prefix cache over all prompt tokens admitted.",
                |g| {
                    if g.stats.prompt_tokens == 0 {
                        0.0
                    } else {
                        g.stats.cached_prompt_tokens as f64 / g.stats.prompt_tokens as f64
                    }
                },
            ),
            (
                "seek_engine_requests_finished_total",
                "counter",
                "Requests the engine ended (any reason).",
                |g| g.stats.requests_finished as f64,
            ),
            (
                "seek_engine_generated_tokens_total",
                "counter",
                "Tokens the engine generated (including for clients that left).",
                |g| g.stats.generated_tokens as f64,
            ),
            (
                "seek_engine_decode_steps_total",
                "counter",
                "Batched decode steps.",
                |g| g.stats.decode_steps as f64,
            ),
            (
                "seek_engine_batched_sequences_total",
                "counter",
                "Sequences decoded, summed over steps (over decode steps: the mean batch).",
                |g| g.stats.batched_sequences as f64,
            ),
            (
                "seek_kv_blocks_total",
                "gauge",
                "Blocks of paged KV memory (0 for a model with per-sequence caches).",
                |g| g.stats.kv_blocks_total as f64,
            ),
            (
                "seek_kv_blocks_in_use",
                "gauge",
                "Blocks of paged KV memory held by running sequences.",
                |g| g.stats.kv_blocks_in_use as f64,
            ),
            (
                "seek_engine_preemptions_total",
                "counter",
                "Sequences whose KV blocks were released to make room (they recompute later).",
                |g| g.stats.preemptions as f64,
            ),
            (
                "seek_model_max_context_tokens",
                "gauge",
                "The model's context window.",
                |g| g.max_context as f64,
            ),
            (
                "seek_price_output_usd_per_million_tokens",
                "gauge",
                "Configured output price.",
                |g| g.prices.output,
            ),
        ];
        for (name, kind, text, f) in gauges {
            help(&mut o, name, kind, text);
            for g in engines {
                let _ = writeln!(o, "{name}{{model=\"{}\"}} {}", esc(g.name), f(g));
            }
        }
        for (name, f) in [
            (
                "seek_price_input_cache_hit_usd_per_million_tokens",
                (|p: &Prices| p.input_cache_hit) as fn(&Prices) -> f64,
            ),
            ("seek_price_input_cache_miss_usd_per_million_tokens", |p| {
                p.input_cache_miss
            }),
        ] {
            help(&mut o, name, "gauge", "Configured input price.");
            for g in engines {
                let _ = writeln!(o, "{name}{{model=\"{}\"}} {}", esc(g.name), f(&g.prices));
            }
        }
        help(
            &mut o,
            "seek_draining",
            "gauge",
            "1 while the server shuts down.",
        );
        let _ = writeln!(o, "seek_draining {}", u8::from(draining));
        o
    }
}

/// Escapes a label value (backslash, quote, newline).
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.5, 0.7, 5.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.write(&mut out, "x", "model=\"m\"");
        assert!(
            out.contains("x_bucket{model=\"m\",le=\"0.1\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("x_bucket{model=\"m\",le=\"1\"} 3\n"), "{out}");
        assert!(
            out.contains("x_bucket{model=\"m\",le=\"+Inf\"} 4\n"),
            "{out}"
        );
        assert!(out.contains("x_count{model=\"m\"} 4\n"), "{out}");
    }

    #[test]
    fn labels_are_escaped() {
        let m = Metrics::default();
        m.request("chat", "a\"b", "t\\", 200, 0.1);
        let text = m.render(&[], false);
        assert!(text.contains(r#"model="a\"b",tenant="t\\""#), "{text}");
    }

    #[test]
    fn rate_limit_refusals_are_counted_by_tenant_and_limit() {
        let m = Metrics::default();
        m.rate_limited("a", "requests");
        m.rate_limited("a", "requests");
        m.rate_limited("b", "tokens");
        let text = m.render(&[], false);
        assert!(
            text.contains("# TYPE seek_rate_limited_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("seek_rate_limited_total{tenant=\"a\",limit=\"requests\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("seek_rate_limited_total{tenant=\"b\",limit=\"tokens\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn every_sample_line_has_a_type() {
        let m = Metrics::default();
        m.request("chat", "m", "t", 200, 0.1);
        m.rate_limited("t", "tokens");
        m.latencies("m", Some(0.2), &[0.01, 0.02]);
        let text = m.render(
            &[EngineGauges {
                name: "m",
                stats: EngineStats::default(),
                prices: Prices::default(),
                max_context: 10,
            }],
            false,
        );
        let typed: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(typed.contains(&name) || typed.contains(&base), "{line}");
        }
    }
}
