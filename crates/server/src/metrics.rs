//! Prometheus metrics through `prometheus-client`, the Prometheus project's Rust client.
//!
//! Counters of billed usage (tokens, cost) are the numbers the responses carry, so the cost a
//! dashboard shows is the sum of what clients were told. Latencies are measured in the server
//! from the arrival times of engine events: time to first token from the request's arrival to
//! its first generated token, inter-token latency between consecutive tokens of a choice.
//! Engine gauges (queue, running, prefix cache) and the connection counters are read when
//! scraped, through collectors.
//!
//! The exposition is the classic text format (version 0.0.4) unless the scraper's `Accept`
//! asks for OpenMetrics ([`Format::negotiate`]); Prometheus itself asks for OpenMetrics.
//! Counters are registered without their `_total`, which both encoders append.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, text, DescriptorEncoder, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use seek_engine::serve::EngineStats;

use crate::conn::ConnStats;
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

/// The two text formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Prometheus's classic text format, version 0.0.4 (curl, older scrapers).
    Prometheus,
    /// OpenMetrics 1.0 text, ending in `# EOF`.
    OpenMetrics,
}

const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Format {
    /// The format an `Accept` header prefers: the media range with the highest `q` among
    /// `application/openmetrics-text` and `text/plain` (the earlier one on a tie, as
    /// Prometheus's own client libraries choose); the classic format when neither is there.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let mut best: Option<(f32, Self)> = None;
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';').map(str::trim);
            let format = match parts.next().map(str::to_ascii_lowercase).as_deref() {
                Some("application/openmetrics-text") => Self::OpenMetrics,
                Some("text/plain") => Self::Prometheus,
                _ => continue,
            };
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(1.0, |(_, v)| v.trim().parse::<f32>().unwrap_or(0.0));
            if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
                best = Some((q, format));
            }
        }
        best.map_or(Self::Prometheus, |(_, f)| f)
    }

    /// The response's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => prometheus_text::CONTENT_TYPE,
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    model: String,
    tenant: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UsageLabels {
    model: String,
    tenant: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLimitLabels {
    tenant: String,
    limit: &'static str,
}

type Histograms = Family<ModelLabels, Histogram, fn() -> Histogram>;

/// What the scrape reads from one model's engine.
#[derive(Debug)]
pub(crate) struct EngineGauges {
    pub name: String,
    pub stats: EngineStats,
    pub prices: Prices,
    pub max_context: usize,
}

/// The server's metrics: the families requests update, in a registry built once.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    rate_limited: Family<RateLimitLabels, Counter>,
    prompt_tokens: Family<UsageLabels, Counter>,
    completion_tokens: Family<UsageLabels, Counter>,
    reasoning_tokens: Family<UsageLabels, Counter>,
    cache_hit_tokens: Family<UsageLabels, Counter>,
    cache_miss_tokens: Family<UsageLabels, Counter>,
    cost: Family<UsageLabels, Counter<f64, AtomicU64>>,
    ttft: Histograms,
    itl: Histograms,
    duration: Histograms,
    json_invalid: Family<ModelLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(Arc::default())
    }
}

impl Metrics {
    /// The families, registered in the order they are exposed, then the connection counters.
    pub fn new(connections: Arc<ConnStats>) -> Self {
        let mut m = Self {
            registry: Registry::default(),
            requests: Family::default(),
            rate_limited: Family::default(),
            prompt_tokens: Family::default(),
            completion_tokens: Family::default(),
            reasoning_tokens: Family::default(),
            cache_hit_tokens: Family::default(),
            cache_miss_tokens: Family::default(),
            cost: Family::default(),
            ttft: Family::new_with_constructor(|| Histogram::new(TTFT_BUCKETS.iter().copied())),
            itl: Family::new_with_constructor(|| Histogram::new(ITL_BUCKETS.iter().copied())),
            duration: Family::new_with_constructor(|| {
                Histogram::new(DURATION_BUCKETS.iter().copied())
            }),
            json_invalid: Family::default(),
        };
        // The registry holds clones: a family is a handle on shared samples.
        let r = &mut m.registry;
        // `register` appends a full stop to the help text.
        r.register(
            "seek_requests",
            "Requests answered, by endpoint, model, tenant and HTTP status \
             (499: the client went away)",
            m.requests.clone(),
        );
        r.register(
            "seek_rate_limited",
            "Requests refused with 429 by their tenant's rate limit, by tenant and limit \
             (requests or tokens per minute)",
            m.rate_limited.clone(),
        );
        r.register(
            "seek_prompt_tokens",
            "Prompt tokens billed",
            m.prompt_tokens.clone(),
        );
        r.register(
            "seek_completion_tokens",
            "Generated tokens billed, reasoning included",
            m.completion_tokens.clone(),
        );
        r.register(
            "seek_reasoning_tokens",
            "Generated tokens inside the reasoning block",
            m.reasoning_tokens.clone(),
        );
        r.register(
            "seek_prompt_cache_hit_tokens",
            "Prompt tokens served from the prefix cache",
            m.cache_hit_tokens.clone(),
        );
        r.register(
            "seek_prompt_cache_miss_tokens",
            "Prompt tokens computed",
            m.cache_miss_tokens.clone(),
        );
        r.register(
            "seek_cost_usd",
            "Cost of the requests at the configured prices, US dollars",
            m.cost.clone(),
        );
        // Names carry their unit already (`register_with_unit` would append it again).
        r.register(
            "seek_time_to_first_token_seconds",
            "From a request's arrival to its first generated token",
            m.ttft.clone(),
        );
        r.register(
            "seek_inter_token_latency_seconds",
            "Between consecutive generated tokens of a choice",
            m.itl.clone(),
        );
        r.register(
            "seek_request_duration_seconds",
            "From a request's arrival to its last byte",
            m.duration.clone(),
        );
        r.register(
            "seek_json_invalid",
            "json_object responses whose content is not valid JSON (decoding is not constrained)",
            m.json_invalid.clone(),
        );
        r.register_collector(Box::new(connections));
        m
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
        self.requests
            .get_or_create(&RequestLabels {
                endpoint,
                model: model.to_string(),
                tenant: tenant.to_string(),
                status,
            })
            .inc();
        self.duration
            .get_or_create(&model_labels(model))
            .observe(secs);
    }

    /// Billed usage of one request.
    pub fn usage(&self, model: &str, tenant: &str, u: &Usage) {
        let labels = UsageLabels {
            model: model.to_string(),
            tenant: tenant.to_string(),
        };
        for (family, n) in [
            (&self.prompt_tokens, u.prompt_tokens),
            (&self.completion_tokens, u.completion_tokens),
            (
                &self.reasoning_tokens,
                u.completion_tokens_details.reasoning_tokens,
            ),
            (&self.cache_hit_tokens, u.prompt_cache_hit_tokens),
            (&self.cache_miss_tokens, u.prompt_cache_miss_tokens),
        ] {
            family.get_or_create(&labels).inc_by(n as u64);
        }
        self.cost.get_or_create(&labels).inc_by(u.cost);
    }

    /// Latencies of one choice: time to first token, and the gaps between its tokens.
    pub fn latencies(&self, model: &str, ttft: Option<f64>, gaps: &[f64]) {
        let labels = model_labels(model);
        if let Some(t) = ttft {
            self.ttft.get_or_create(&labels).observe(t);
        }
        let itl = self.itl.get_or_create(&labels);
        for &g in gaps {
            itl.observe(g);
        }
    }

    /// A `json_object` response whose content did not parse as JSON.
    pub fn json_invalid(&self, model: &str) {
        self.json_invalid.get_or_create(&model_labels(model)).inc();
    }

    /// A request refused by its tenant's rate limit (`limit`: `requests` or `tokens`).
    pub fn rate_limited(&self, tenant: &str, limit: &'static str) {
        self.rate_limited
            .get_or_create(&RateLimitLabels {
                tenant: tenant.to_string(),
                limit,
            })
            .inc();
    }

    /// The exposition in `format`: the registry, then what is read from the engines now.
    pub fn render(&self, engines: Vec<EngineGauges>, draining: bool, format: Format) -> String {
        let mut scrape = Registry::default();
        scrape.register_collector(Box::new(Scrape { engines, draining }));
        let mut out = String::new();
        // Writing into a String fails only if an `EncodeMetric` impl does, and these do not.
        let written = match format {
            Format::Prometheus => prometheus_text::encode(&mut out, &self.registry)
                .and_then(|()| prometheus_text::encode(&mut out, &scrape)),
            Format::OpenMetrics => text::encode_registry(&mut out, &self.registry)
                .and_then(|()| text::encode_registry(&mut out, &scrape))
                .and_then(|()| text::encode_eof(&mut out)),
        };
        written.expect("encoding metrics into a String");
        out
    }
}

fn model_labels(model: &str) -> ModelLabels {
    ModelLabels {
        model: model.to_string(),
    }
}

/// A value read at scrape time: counts stay integers in the exposition.
enum Sample {
    Int(u64),
    Float(f64),
}

type Read = fn(&EngineGauges) -> Sample;

/// The families read from each model's engine when scraped: name (a counter's without its
/// `_total`), type, help, value.
const ENGINE_FAMILIES: [(&str, MetricType, &str, Read); 15] = {
    use MetricType::{Counter, Gauge};
    use Sample::{Float, Int};
    [
        (
            "seek_queue_depth",
            Gauge,
            "Requests waiting for a place in the batch.",
            |g| Int(g.stats.queued as u64),
        ),
        (
            "seek_running_sequences",
            Gauge,
            "Sequences in the running batch.",
            |g| Int(g.stats.running as u64),
        ),
        (
            "seek_prefix_cache_tokens",
            Gauge,
            "Tokens held by the per-sequence prefix cache (models without paged KV).",
            |g| Int(g.stats.prefix_cache_tokens as u64),
        ),
        (
            "seek_prompt_cache_hit_ratio",
            Gauge,
            "Prompt tokens served from the prefix cache over all prompt tokens admitted.",
            |g| {
                let s = &g.stats;
                Float(if s.prompt_tokens == 0 {
                    0.0
                } else {
                    s.cached_prompt_tokens as f64 / s.prompt_tokens as f64
                })
            },
        ),
        (
            "seek_engine_requests_finished",
            Counter,
            "Requests the engine ended (any reason).",
            |g| Int(g.stats.requests_finished),
        ),
        (
            "seek_engine_generated_tokens",
            Counter,
            "Tokens the engine generated (including for clients that left).",
            |g| Int(g.stats.generated_tokens),
        ),
        (
            "seek_engine_decode_steps",
            Counter,
            "Batched decode steps.",
            |g| Int(g.stats.decode_steps),
        ),
        (
            "seek_engine_batched_sequences",
            Counter,
            "Sequences decoded, summed over steps (over decode steps: the mean batch).",
            |g| Int(g.stats.batched_sequences),
        ),
        // A gauge, whatever its name says: the size of the KV pool.
        (
            "seek_kv_blocks_total",
            Gauge,
            "Blocks of paged KV memory (0 for a model with per-sequence caches).",
            |g| Int(g.stats.kv_blocks_total as u64),
        ),
        (
            "seek_kv_blocks_in_use",
            Gauge,
            "Blocks of paged KV memory held by running sequences.",
            |g| Int(g.stats.kv_blocks_in_use as u64),
        ),
        (
            "seek_engine_preemptions",
            Counter,
            "Sequences whose KV blocks were released to make room (they recompute later).",
            |g| Int(g.stats.preemptions),
        ),
        (
            "seek_model_max_context_tokens",
            Gauge,
            "The model's context window.",
            |g| Int(g.max_context as u64),
        ),
        (
            "seek_price_output_usd_per_million_tokens",
            Gauge,
            "Configured output price.",
            |g| Float(g.prices.output),
        ),
        (
            "seek_price_input_cache_hit_usd_per_million_tokens",
            Gauge,
            "Configured input price.",
            |g| Float(g.prices.input_cache_hit),
        ),
        (
            "seek_price_input_cache_miss_usd_per_million_tokens",
            Gauge,
            "Configured input price.",
            |g| Float(g.prices.input_cache_miss),
        ),
    ]
};

/// What one scrape reads from the engines, and whether the server is draining.
#[derive(Debug)]
struct Scrape {
    engines: Vec<EngineGauges>,
    draining: bool,
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if !self.engines.is_empty() {
            for (name, kind, help, read) in ENGINE_FAMILIES {
                let mut family = encoder.encode_descriptor(name, help, None, kind)?;
                for g in &self.engines {
                    let labels = [("model", g.name.as_str())];
                    let sample = family.encode_family(&labels)?;
                    match (kind, read(g)) {
                        (MetricType::Counter, Sample::Int(n)) => {
                            ConstCounter::new(n).encode(sample)?
                        }
                        (MetricType::Counter, Sample::Float(x)) => {
                            ConstCounter::new(x).encode(sample)?
                        }
                        (_, Sample::Int(n)) => ConstGauge::new(n).encode(sample)?,
                        (_, Sample::Float(x)) => ConstGauge::new(x).encode(sample)?,
                    }
                }
            }
        }
        let draining = ConstGauge::new(i64::from(self.draining));
        draining.encode(encoder.encode_descriptor(
            "seek_draining",
            "1 while the server shuts down.",
            None,
            draining.metric_type(),
        )?)
    }
}

impl Collector for ConnStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let open = ConstGauge::new(g(&self.open) as i64);
        open.encode(encoder.encode_descriptor(
            "seek_connections_open",
            "Client connections open now.",
            None,
            open.metric_type(),
        )?)?;
        let accepted = ConstCounter::new(g(&self.accepted));
        accepted.encode(encoder.encode_descriptor(
            "seek_connections_accepted",
            "Client connections accepted.",
            None,
            accepted.metric_type(),
        )?)?;
        let mut closed = encoder.encode_descriptor(
            "seek_connections_closed",
            "Connections the server closed, by reason.",
            None,
            MetricType::Counter,
        )?;
        for (reason, a) in [
            ("refused_at_cap", &self.refused),
            ("evicted_at_cap", &self.evicted),
            ("idle_timeout", &self.idle_timeouts),
            ("header_timeout", &self.header_timeouts),
            ("write_timeout", &self.write_timeouts),
            ("tls_handshake_failed", &self.tls_failures),
        ] {
            ConstCounter::new(g(a)).encode(closed.encode_family(&[("reason", reason)])?)?;
        }
        let errors = ConstCounter::new(g(&self.accept_errors));
        errors.encode(encoder.encode_descriptor(
            "seek_accept_errors",
            "Failed accepts (e.g. out of file descriptors).",
            None,
            errors.metric_type(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(name: &str) -> Vec<EngineGauges> {
        vec![EngineGauges {
            name: name.into(),
            stats: EngineStats::default(),
            prices: Prices::default(),
            max_context: 10,
        }]
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        for v in [0.05, 0.5, 0.7, 5.0] {
            m.request("chat", "m", "t", 200, v);
        }
        let out = m.render(Vec::new(), false, Format::Prometheus);
        let x = "seek_request_duration_seconds";
        assert!(
            out.contains(&format!("{x}_bucket{{model=\"m\",le=\"0.1\"}} 1\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{x}_bucket{{model=\"m\",le=\"1\"}} 3\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{x}_bucket{{model=\"m\",le=\"+Inf\"}} 4\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{x}_count{{model=\"m\"}} 4\n")),
            "{out}"
        );
        // OpenMetrics writes bounds as floats, as its specification asks.
        let out = m.render(Vec::new(), false, Format::OpenMetrics);
        assert!(
            out.contains(&format!("{x}_bucket{{le=\"1.0\",model=\"m\"}} 3\n")),
            "{out}"
        );
    }

    #[test]
    fn labels_are_escaped() {
        let m = Metrics::default();
        m.request("chat", "a\"b", "t\\", 200, 0.1);
        let text = m.render(Vec::new(), false, Format::Prometheus);
        assert!(text.contains(r#"model="a\"b",tenant="t\\""#), "{text}");
    }

    #[test]
    fn rate_limit_refusals_are_counted_by_tenant_and_limit() {
        let m = Metrics::default();
        m.rate_limited("a", "requests");
        m.rate_limited("a", "requests");
        m.rate_limited("b", "tokens");
        let text = m.render(Vec::new(), false, Format::Prometheus);
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
        let text = m.render(engine("m"), false, Format::Prometheus);
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

    #[test]
    fn every_family_keeps_its_name_in_both_formats() {
        let m = Metrics::default();
        m.request("chat", "m", "t", 200, 0.1);
        m.usage(
            "m",
            "t",
            &Usage {
                prompt_tokens: 5,
                completion_tokens: 3,
                total_tokens: 8,
                prompt_tokens_details: crate::wire::PromptTokensDetails { cached_tokens: 2 },
                completion_tokens_details: crate::wire::CompletionTokensDetails {
                    reasoning_tokens: 1,
                },
                prompt_cache_hit_tokens: 2,
                prompt_cache_miss_tokens: 3,
                cost: 1.75,
                cost_details: crate::wire::Cost {
                    currency: crate::wire::Currency::Usd,
                    input_cache_hit: 0.25,
                    input_cache_miss: 0.5,
                    output: 1.0,
                    total: 1.75,
                },
            },
        );
        m.json_invalid("m");
        m.latencies("m", Some(0.2), &[0.01]);
        m.rate_limited("t", "tokens");
        let names = |text: &str| -> std::collections::BTreeSet<String> {
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
                .collect()
        };
        let classic = m.render(engine("m"), true, Format::Prometheus);
        let open = m.render(engine("m"), true, Format::OpenMetrics);
        assert_eq!(names(&classic), names(&open));
        // Every family the hand-written exposition had, under the same sample names.
        for name in [
            "seek_requests_total",
            "seek_rate_limited_total",
            "seek_prompt_tokens_total",
            "seek_completion_tokens_total",
            "seek_reasoning_tokens_total",
            "seek_prompt_cache_hit_tokens_total",
            "seek_prompt_cache_miss_tokens_total",
            "seek_cost_usd_total",
            "seek_time_to_first_token_seconds_bucket",
            "seek_inter_token_latency_seconds_sum",
            "seek_request_duration_seconds_count",
            "seek_json_invalid_total",
            "seek_queue_depth",
            "seek_running_sequences",
            "seek_prefix_cache_tokens",
            "seek_prompt_cache_hit_ratio",
            "seek_engine_requests_finished_total",
            "seek_engine_generated_tokens_total",
            "seek_engine_decode_steps_total",
            "seek_engine_batched_sequences_total",
            "seek_kv_blocks_total",
            "seek_kv_blocks_in_use",
            "seek_engine_preemptions_total",
            "seek_model_max_context_tokens",
            "seek_price_output_usd_per_million_tokens",
            "seek_price_input_cache_hit_usd_per_million_tokens",
            "seek_price_input_cache_miss_usd_per_million_tokens",
            "seek_draining",
            "seek_connections_open",
            "seek_connections_accepted_total",
            "seek_connections_closed_total",
            "seek_accept_errors_total",
        ] {
            assert!(names(&classic).contains(name), "{name} in\n{classic}");
        }
        assert_eq!(names(&classic).len(), 38, "{:?}", names(&classic));
        assert!(
            classic.contains("# TYPE seek_kv_blocks_total gauge\n"),
            "{classic}"
        );
        assert!(classic.contains("seek_draining 1\n"), "{classic}");
        assert!(!classic.contains("# EOF"), "{classic}");
        // OpenMetrics names a counter's family without `_total` and ends with `# EOF`.
        assert!(open.contains("# TYPE seek_requests counter\n"), "{open}");
        assert!(
            open.contains("# TYPE seek_kv_blocks_total gauge\n"),
            "{open}"
        );
        assert!(open.ends_with("\n# EOF\n"), "{open}");
    }

    #[test]
    fn the_accept_header_picks_the_format() {
        use Format::{OpenMetrics, Prometheus};
        for (accept, want) in [
            (None, Prometheus),
            (Some("*/*"), Prometheus),
            (Some("text/plain"), Prometheus),
            (Some("application/openmetrics-text"), OpenMetrics),
            // Prometheus 2's scrape.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,\
                     application/openmetrics-text;version=0.0.1;q=0.75,\
                     text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                OpenMetrics,
            ),
            // Prometheus 3's, from its default scrape protocols.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,\
                     application/openmetrics-text;version=0.0.1;q=0.4,\
                     text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,\
                     text/plain;version=0.0.4;q=0.2,*/*;q=0.1",
                ),
                OpenMetrics,
            ),
            (
                Some("text/plain;version=0.0.4;q=0.9, application/openmetrics-text;q=0.5"),
                Prometheus,
            ),
            (Some("Application/OpenMetrics-Text; Q=1"), OpenMetrics),
            (
                Some("application/openmetrics-text;q=0, text/plain"),
                Prometheus,
            ),
            (Some("application/json"), Prometheus),
        ] {
            assert_eq!(Format::negotiate(accept), want, "{accept:?}");
        }
        assert_eq!(
            Prometheus.content_type(),
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert_eq!(
            OpenMetrics.content_type(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
    }
}
