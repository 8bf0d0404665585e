//! Rate limits per tenant: requests and tokens per minute (OpenAI's RPM and TPM).
//!
//! Design decision: each limit is a token bucket that holds one minute's allowance and refills
//! continuously (limit / 60 per second), so a tenant may spend its whole minute at once and then
//! goes at the steady rate. A request takes one from its requests bucket when it is admitted.
//! Its tokens are not known until the model has run, so admission only asks that the tokens
//! bucket hold at least one token, and the request's actual tokens (prompt + completion, or what
//! a request whose client left had used) are debited when it ends. The balance may go negative;
//! later requests wait until it has refilled. Keys of one tenant share its buckets.
//!
//! Time is passed in (`now`), so the arithmetic is tested without sleeping.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// A tenant's limits; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Requests admitted per minute (`rpm=` in a keys file, `--rpm-limit`).
    pub requests_per_minute: Option<u32>,
    /// Prompt and completion tokens per minute (`tpm=` in a keys file, `--tpm-limit`).
    pub tokens_per_minute: Option<u64>,
}

impl Limits {
    /// Whether nothing is limited.
    pub fn is_none(&self) -> bool {
        self.requests_per_minute.is_none() && self.tokens_per_minute.is_none()
    }

    /// These limits, with `default`'s where these have none.
    pub fn or(self, default: Limits) -> Limits {
        Limits {
            requests_per_minute: self.requests_per_minute.or(default.requests_per_minute),
            tokens_per_minute: self.tokens_per_minute.or(default.tokens_per_minute),
        }
    }

    /// Parses the fields after a key in a keys file: whitespace-separated `rpm=N` and `tpm=N`
    /// (LiteLLM's names). The error says what is wrong and how to write it.
    pub fn parse_fields(fields: &str) -> Result<Limits, String> {
        let mut limits = Limits::default();
        for field in fields.split_whitespace() {
            let Some((name, value)) = field.split_once('=') else {
                return Err(format!(
                    "{field:?} is not a field; write rpm=N (requests per minute) or tpm=N (tokens per minute) after the key"
                ));
            };
            let number = |v: &str| -> Result<u64, String> {
                match v.parse::<u64>() {
                    Ok(0) => Err(format!(
                        "{name}=0 would refuse every request; give at least 1, or leave {name} out for the server's default"
                    )),
                    Ok(n) => Ok(n),
                    Err(_) => Err(format!(
                        "{name}={v:?} is not a whole number; write e.g. {name}=60"
                    )),
                }
            };
            let twice = || format!("{name} is given twice; give it once");
            match name {
                "rpm" => {
                    let n = number(value)?;
                    let n = u32::try_from(n)
                        .map_err(|_| format!("rpm={n} is too large; the most is {}", u32::MAX))?;
                    if limits.requests_per_minute.replace(n).is_some() {
                        return Err(twice());
                    }
                }
                "tpm" => {
                    if limits.tokens_per_minute.replace(number(value)?).is_some() {
                        return Err(twice());
                    }
                }
                _ => {
                    return Err(format!(
                        "unknown field {name:?}; the fields are rpm=N (requests per minute) and tpm=N (tokens per minute)"
                    ))
                }
            }
        }
        Ok(limits)
    }
}

impl std::fmt::Display for Limits {
    /// The keys-file form: `rpm=60 tpm=40000`, or `no limits`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(n) = self.requests_per_minute {
            parts.push(format!("rpm={n}"));
        }
        if let Some(n) = self.tokens_per_minute {
            parts.push(format!("tpm={n}"));
        }
        if parts.is_empty() {
            f.write_str("no limits")
        } else {
            f.write_str(&parts.join(" "))
        }
    }
}

/// The limits of every tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// Every tenant's limits unless its own say otherwise (`--rpm-limit`, `--tpm-limit`); the
    /// anonymous tenant of a server without keys has these.
    pub default: Limits,
    /// Tenants' own limits (from the keys file); a limit one leaves out is the default's.
    pub tenants: BTreeMap<String, Limits>,
}

impl RateLimits {
    /// The limits `tenant` runs under.
    pub fn for_tenant(&self, tenant: &str) -> Limits {
        self.tenants
            .get(tenant)
            .map_or(self.default, |l| l.or(self.default))
    }
}

/// Which limit refused a request: OpenAI's error `type`, and the `limit` label of
/// `seek_rate_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// Requests per minute.
    Requests,
    /// Tokens per minute.
    Tokens,
}

impl LimitKind {
    /// `requests` or `tokens`.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
            LimitKind::Tokens => "tokens",
        }
    }
}

/// One bucket as a client sees it (OpenAI's `x-ratelimit-*` headers).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketStatus {
    /// The per-minute limit.
    pub limit: u64,
    /// What may be spent now (0 while the balance is negative).
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
}

/// A limited tenant's buckets as a client sees them.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RateStatus {
    /// Requests per minute, when limited.
    pub requests: Option<BucketStatus>,
    /// Tokens per minute, when limited.
    pub tokens: Option<BucketStatus>,
}

impl RateStatus {
    /// Writes OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers, for the
    /// limits that are configured.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        for (kind, b) in [("requests", self.requests), ("tokens", self.tokens)] {
            let Some(b) = b else { continue };
            for (what, value) in [
                ("limit", b.limit.to_string()),
                ("remaining", b.remaining.to_string()),
                ("reset", format_duration(b.reset)),
            ] {
                let name = HeaderName::try_from(format!("x-ratelimit-{what}-{kind}"))
                    .expect("header names are ASCII");
                let value = HeaderValue::try_from(value).expect("numbers and units are ASCII");
                headers.insert(name, value);
            }
        }
    }
}

/// A request refused by its tenant's rate limit (HTTP 429).
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimited {
    /// The tenant.
    pub tenant: String,
    /// The limit that refused it.
    pub kind: LimitKind,
    /// That limit, per minute.
    pub limit: u64,
    /// How long until the request would be admitted.
    pub wait: Duration,
    /// The tenant's buckets at the refusal.
    pub status: RateStatus,
}

impl RateLimited {
    /// The `Retry-After` header: whole seconds, rounded up, at least 1.
    pub fn retry_after_s(&self) -> u64 {
        (self.wait.as_nanos().div_ceil(1_000_000_000) as u64).max(1)
    }
}

impl std::fmt::Display for RateLimited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Rate limit reached for {} per minute (limit {}) for tenant {:?}: please try again in {}.",
            self.kind.as_str(),
            self.limit,
            self.tenant,
            format_duration(self.wait)
        )
    }
}

/// A duration as OpenAI writes `x-ratelimit-reset-*` (Go's style): `20ms`, `1s`, `1.5s`,
/// `6m0s`, `1h2m3s`. Rounded up to the millisecond, so it never promises too early.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_nanos().div_ceil(1_000_000);
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let mut secs = if frac == 0 {
        format!("{s}s")
    } else {
        let f = format!("{frac:03}");
        format!("{s}.{}s", f.trim_end_matches('0'))
    };
    if h > 0 || m > 0 {
        secs = format!("{m}m{secs}");
    }
    if h > 0 {
        secs = format!("{h}h{secs}");
    }
    secs
}

/// Room for rounding: a bucket that has refilled to within this of what is needed has it.
const EPSILON: f64 = 1e-9;

/// One minute's allowance, refilled continuously.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    limit: f64,
    /// The balance at `at`; negative after a debit larger than it.
    level: f64,
    at: Instant,
}

impl Bucket {
    fn full(limit: u64, now: Instant) -> Self {
        Self {
            limit: limit as f64,
            level: limit as f64,
            at: now,
        }
    }

    fn per_second(&self) -> f64 {
        self.limit / 60.0
    }

    fn refill(&mut self, now: Instant) {
        // An earlier `now` (two threads racing to the lock) adds nothing.
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + dt * self.per_second()).min(self.limit);
        self.at = self.at.max(now);
    }

    fn has(&self, need: f64) -> bool {
        self.level + EPSILON >= need
    }

    /// How long until the balance reaches `need`.
    fn wait(&self, need: f64) -> Duration {
        if self.has(need) {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.level) / self.per_second())
        }
    }

    fn status(&self) -> BucketStatus {
        BucketStatus {
            limit: self.limit as u64,
            remaining: (self.level + EPSILON).max(0.0).floor() as u64,
            reset: self.wait(self.limit),
        }
    }
}

/// A tenant's buckets (`None`: that kind is not limited).
#[derive(Debug)]
struct Buckets {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

impl Buckets {
    fn refill(&mut self, now: Instant) {
        for b in [&mut self.requests, &mut self.tokens].into_iter().flatten() {
            b.refill(now);
        }
    }

    fn status(&self) -> RateStatus {
        RateStatus {
            requests: self.requests.as_ref().map(Bucket::status),
            tokens: self.tokens.as_ref().map(Bucket::status),
        }
    }
}

/// Every limited tenant's buckets.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limits: RateLimits,
    buckets: Mutex<HashMap<String, Buckets>>,
}

impl RateLimiter {
    pub fn new(limits: RateLimits) -> Self {
        Self {
            limits,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `f` on `tenant`'s buckets, refilled to `now`; `None` when the tenant has no limits.
    fn with<R>(&self, tenant: &str, now: Instant, f: impl FnOnce(&mut Buckets) -> R) -> Option<R> {
        let limits = self.limits.for_tenant(tenant);
        if limits.is_none() {
            return None;
        }
        // A panic while holding the lock leaves plain numbers behind; keep limiting.
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = map.entry(tenant.to_string()).or_insert_with(|| Buckets {
            requests: limits
                .requests_per_minute
                .map(|n| Bucket::full(n.into(), now)),
            tokens: limits.tokens_per_minute.map(|n| Bucket::full(n, now)),
        });
        b.refill(now);
        Some(f(b))
    }

    /// Admits one request of `tenant`, taking one from its requests bucket, or refuses it
    /// (taking nothing) when either bucket is empty. Returns the buckets after admission, for
    /// the response's headers (`None`: the tenant is not limited).
    pub fn admit(&self, tenant: &str, now: Instant) -> Result<Option<RateStatus>, RateLimited> {
        let decided = self.with(tenant, now, |b| {
            let refuse = |kind, bucket: &Bucket| RateLimited {
                tenant: tenant.to_string(),
                kind,
                limit: bucket.limit as u64,
                wait: bucket.wait(1.0),
                status: b.status(),
            };
            if let Some(r) = b.requests.as_ref().filter(|r| !r.has(1.0)) {
                return Err(refuse(LimitKind::Requests, r));
            }
            if let Some(t) = b.tokens.as_ref().filter(|t| !t.has(1.0)) {
                return Err(refuse(LimitKind::Tokens, t));
            }
            if let Some(r) = &mut b.requests {
                r.level -= 1.0;
            }
            Ok(b.status())
        });
        decided.transpose()
    }

    /// Debits the tokens a request of `tenant` used (the balance may go negative).
    pub fn debit(&self, tenant: &str, tokens: u64, now: Instant) {
        self.with(tenant, now, |b| {
            if let Some(t) = &mut b.tokens {
                t.level -= tokens as f64;
            }
        });
    }

    /// `tenant`'s buckets now, for the headers of a response (`None`: not limited).
    pub fn status(&self, tenant: &str, now: Instant) -> Option<RateStatus> {
        self.with(tenant, now, |b| b.status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rpm: Option<u32>, tpm: Option<u64>) -> RateLimiter {
        RateLimiter::new(RateLimits {
            default: Limits {
                requests_per_minute: rpm,
                tokens_per_minute: tpm,
            },
            tenants: BTreeMap::new(),
        })
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn requests_refill_at_the_limit_per_minute() {
        let l = limiter(Some(2), None);
        let t0 = Instant::now();
        let s = l.admit("a", t0).unwrap().unwrap();
        assert_eq!(s.requests.unwrap().remaining, 1);
        assert_eq!(s.tokens, None);
        l.admit("a", t0).unwrap();
        let e = l.admit("a", t0).unwrap_err();
        assert_eq!(e.kind, LimitKind::Requests);
        assert_eq!(e.limit, 2);
        // Two per minute: one every 30 s.
        assert_eq!(e.wait, secs(30.0));
        assert_eq!(e.retry_after_s(), 30);
        let r = e.status.requests.unwrap();
        assert_eq!((r.limit, r.remaining, r.reset), (2, 0, secs(60.0)));
        // A refusal takes nothing: 29.5 s later one is still 0.5 s away.
        let e = l.admit("a", t0 + secs(29.5)).unwrap_err();
        assert!((e.wait.as_secs_f64() - 0.5).abs() < 1e-6, "{e:?}");
        assert_eq!(e.retry_after_s(), 1);
        let s = l.admit("a", t0 + secs(30.0)).unwrap().unwrap();
        assert_eq!(s.requests.unwrap().remaining, 0);
        // A long pause refills to the limit, not beyond.
        let s = l.status("a", t0 + secs(3600.0)).unwrap();
        assert_eq!(s.requests.unwrap().remaining, 2);
        assert_eq!(s.requests.unwrap().reset, Duration::ZERO);
    }

    #[test]
    fn tokens_are_debited_after_the_fact_and_may_go_negative() {
        let l = limiter(None, Some(600)); // 10 tokens a second
        let t0 = Instant::now();
        assert_eq!(l.admit("a", t0).unwrap().unwrap().requests, None);
        // The request used more than the whole minute.
        l.debit("a", 900, t0);
        let e = l.admit("a", t0).unwrap_err();
        assert_eq!(e.kind, LimitKind::Tokens);
        assert_eq!(e.limit, 600);
        let t = e.status.tokens.unwrap();
        assert_eq!(t.remaining, 0);
        // From -300 to 1 at 10 a second, and to 600 for the reset.
        assert!((e.wait.as_secs_f64() - 30.1).abs() < 1e-6, "{e:?}");
        assert_eq!(e.retry_after_s(), 31);
        assert!((t.reset.as_secs_f64() - 90.0).abs() < 1e-6, "{t:?}");
        assert!(l.admit("a", t0 + secs(30.0)).is_err());
        let s = l.admit("a", t0 + secs(30.1)).unwrap().unwrap();
        assert_eq!(s.tokens.unwrap().remaining, 1);
        // Admission takes no tokens; only the debit does.
        l.debit("a", 1, t0 + secs(30.1));
        assert!(l.admit("a", t0 + secs(30.1)).is_err());
    }

    #[test]
    fn tenants_have_their_own_buckets_and_limits() {
        let mut tenants = BTreeMap::new();
        tenants.insert(
            "small".to_string(),
            Limits {
                requests_per_minute: Some(1),
                tokens_per_minute: None,
            },
        );
        let l = RateLimiter::new(RateLimits {
            default: Limits {
                requests_per_minute: Some(100),
                tokens_per_minute: Some(1000),
            },
            tenants,
        });
        let t0 = Instant::now();
        // "small" takes the default's token limit for the one it leaves out.
        let s = l.admit("small", t0).unwrap().unwrap();
        assert_eq!(s.requests.unwrap().limit, 1);
        assert_eq!(s.tokens.unwrap().limit, 1000);
        assert!(l.admit("small", t0).is_err());
        assert_eq!(
            l.admit("other", t0)
                .unwrap()
                .unwrap()
                .requests
                .unwrap()
                .remaining,
            99
        );
        let unlimited = limiter(None, None);
        assert_eq!(unlimited.admit("x", t0), Ok(None));
        assert_eq!(unlimited.status("x", t0), None);
    }

    #[test]
    fn an_earlier_instant_adds_nothing() {
        let l = limiter(Some(60), None);
        let t0 = Instant::now();
        l.admit("a", t0 + secs(10.0)).unwrap();
        let s = l.status("a", t0).unwrap().requests.unwrap();
        assert_eq!(s.remaining, 59);
    }

    #[test]
    fn durations_are_written_like_openai() {
        for (d, want) in [
            (0.0, "0s"),
            (0.0000001, "1ms"),
            (0.02, "20ms"),
            (0.9994, "1s"),
            (1.0, "1s"),
            (1.2, "1.2s"),
            (8.64, "8.64s"),
            (59.9995, "1m0s"),
            (360.0, "6m0s"),
            (86.4, "1m26.4s"),
            (3723.0, "1h2m3s"),
            (7200.0, "2h0m0s"),
        ] {
            assert_eq!(format_duration(secs(d)), want, "{d}");
        }
    }

    #[test]
    fn headers_name_only_the_configured_limits() {
        let mut h = HeaderMap::new();
        RateStatus {
            requests: Some(BucketStatus {
                limit: 60,
                remaining: 59,
                reset: secs(1.0),
            }),
            tokens: None,
        }
        .write_headers(&mut h);
        assert_eq!(h["x-ratelimit-limit-requests"], "60");
        assert_eq!(h["x-ratelimit-remaining-requests"], "59");
        assert_eq!(h["x-ratelimit-reset-requests"], "1s");
        assert!(!h.contains_key("x-ratelimit-limit-tokens"));
    }

    #[test]
    fn fields_parse_or_say_how_to_write_them() {
        assert_eq!(Limits::parse_fields("").unwrap(), Limits::default());
        let l = Limits::parse_fields(" rpm=60\ttpm=40000 ").unwrap();
        assert_eq!(l.requests_per_minute, Some(60));
        assert_eq!(l.tokens_per_minute, Some(40000));
        assert_eq!(l.to_string(), "rpm=60 tpm=40000");
        for (bad, says) in [
            ("burst=5", "unknown field \"burst\""),
            ("rpm=ten", "not a whole number"),
            ("tpm=-1", "not a whole number"),
            ("rpm=0", "at least 1"),
            ("rpm=1 rpm=2", "given twice"),
            ("rpm", "write rpm=N"),
            ("rpm=99999999999", "too large"),
        ] {
            let e = Limits::parse_fields(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
