//! API keys: `Authorization: Bearer KEY` (or Anthropic's `x-api-key: KEY`), one tenant per key.
//!
//! Keys are compared in constant time (every configured key is compared, and each comparison
//! takes the same time whatever the bytes), so response times say nothing about how much of a
//! guess was right. A server bound to anything but loopback refuses to start without keys,
//! unless the operator says `--insecure-no-auth` (the exposed-database lesson).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::error::AppError;
use crate::ratelimit::Limits;
#[cfg(doc)]
use crate::ratelimit::RateLimits;

/// The tenant of keys given without one (`--api-key KEY`, or a bare line in a keys file).
pub const DEFAULT_TENANT: &str = "default";
/// The tenant of requests to a server without keys.
pub const ANONYMOUS_TENANT: &str = "anonymous";
/// Anthropic's key header.
const X_API_KEY: &str = "x-api-key";

/// The configured keys and their tenants.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for ApiKeys {
    // Never print the keys themselves.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tenants: Vec<&str> = self.keys.iter().map(|(t, _)| t.as_str()).collect();
        f.debug_struct("ApiKeys")
            .field("tenants", &tenants)
            .finish()
    }
}

/// A key or keys file that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KeysError {
    /// A line of the keys file is malformed.
    #[error("line {line} of the keys file: {problem}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// A key is empty or has whitespace or control characters.
    #[error("an API key is empty or contains whitespace or control characters")]
    BadKey,
    /// The same key is given twice.
    #[error("the same API key is configured twice (tenants {0:?} and {1:?}); keys must be unique")]
    Duplicate(String, String),
}

/// Why the server refuses to start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "refusing to serve on {addr} without API keys: the address is reachable from other machines. \
     Pass --api-key KEY (or --api-keys-file FILE), bind --host 127.0.0.1, or, on a network you \
     trust completely, pass --insecure-no-auth"
)]
pub struct ExposedWithoutKeys {
    /// The address asked for.
    pub addr: SocketAddr,
}

impl ApiKeys {
    /// No keys: every request is accepted as [`ANONYMOUS_TENANT`].
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds `key` for `tenant`.
    pub fn add(&mut self, tenant: &str, key: &str) -> Result<(), KeysError> {
        if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(KeysError::BadKey);
        }
        if let Some((t, _)) = self.keys.iter().find(|(_, k)| k == key.as_bytes()) {
            return Err(KeysError::Duplicate(t.clone(), tenant.to_string()));
        }
        self.keys
            .push((tenant.to_string(), key.as_bytes().to_vec()));
        Ok(())
    }

    /// Adds the keys of a keys file: one `tenant:key` or bare `key` per line, optionally
    /// followed by the tenant's rate limits (`tenant:key rpm=60 tpm=40000`; keys cannot contain
    /// whitespace, so what follows it is fields); blank lines and lines starting with `#` are
    /// skipped. Tenant names are `[A-Za-z0-9_.-]+` (they become metrics labels).
    ///
    /// Returns the limits the lines give tenants (for [`RateLimits::tenants`]); a tenant with
    /// several keys may state its limits on one line or repeat them, but not contradict them.
    pub fn add_file(&mut self, text: &str) -> Result<BTreeMap<String, Limits>, KeysError> {
        let mut limits: BTreeMap<String, (Limits, usize)> = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |problem: &str| KeysError::BadLine {
                line: i + 1,
                problem: problem.into(),
            };
            let (tenant, rest) = match line.split_once(':') {
                Some((t, k)) => (t.trim(), k.trim()),
                None => (DEFAULT_TENANT, line),
            };
            let (key, fields) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            if tenant.is_empty()
                || !tenant
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            {
                return Err(bad(
                    "the tenant must be letters, digits, '_', '.' or '-' (write `tenant:key`)",
                ));
            }
            self.add(tenant, key).map_err(|e| match e {
                KeysError::BadKey => bad("the key is empty or contains control characters"),
                e => e,
            })?;
            let given =
                Limits::parse_fields(fields).map_err(|e| bad(&format!("after the key: {e}")))?;
            if given.is_none() {
                continue;
            }
            match limits.get(tenant) {
                Some((earlier, at)) if *earlier != given => {
                    return Err(bad(&format!(
                        "tenant {tenant:?} was given {earlier} on line {at} and {given} here; \
                         give a tenant's limits on one of its lines, or the same on each"
                    )));
                }
                Some(_) => {}
                None => {
                    limits.insert(tenant.to_string(), (given, i + 1));
                }
            }
        }
        Ok(limits.into_iter().map(|(t, (l, _))| (t, l)).collect())
    }

    /// Whether no key is configured (the server is open).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The tenant of the request's key, or 401. The key is `Authorization: Bearer KEY`
    /// (OpenAI's clients) or, without that header, `x-api-key: KEY` (Anthropic's).
    pub fn check(&self, headers: &HeaderMap) -> Result<String, AppError> {
        if self.is_empty() {
            return Ok(ANONYMOUS_TENANT.into());
        }
        let given = match (
            headers.get(axum::http::header::AUTHORIZATION),
            headers.get(X_API_KEY),
        ) {
            (Some(value), _) => {
                // The scheme is case-insensitive (RFC 9110).
                let v = value.as_bytes();
                (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
                    .then(|| v[7..].trim_ascii())
                    .ok_or_else(|| {
                        AppError::Unauthorized(
                            "the Authorization header must be `Bearer KEY`".into(),
                        )
                    })?
            }
            (None, Some(value)) => value.as_bytes().trim_ascii(),
            (None, None) => {
                return Err(AppError::Unauthorized(
                    "no API key: send it as `Authorization: Bearer KEY` (or `x-api-key: KEY`)"
                        .into(),
                ))
            }
        };
        // Compare against every key, without stopping at a match.
        let mut found: Option<&str> = None;
        for (tenant, key) in &self.keys {
            if bool::from(key.as_slice().ct_eq(given)) {
                found = Some(tenant);
            }
        }
        found
            .map(str::to_string)
            .ok_or_else(|| AppError::Unauthorized("incorrect API key provided".into()))
    }

    /// The tenants, in the order configured (for metrics and logs).
    pub fn tenants(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(t, _)| t.as_str())
    }
}

/// Whether every address `addr` stands for is loopback.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Refuses a non-loopback address without keys, unless `insecure_no_auth`.
pub fn check_exposure(
    addr: &SocketAddr,
    keys: &ApiKeys,
    insecure_no_auth: bool,
) -> Result<(), ExposedWithoutKeys> {
    if keys.is_empty() && !insecure_no_auth && !is_loopback(addr) {
        return Err(ExposedWithoutKeys { addr: *addr });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn keys_file_lines() {
        let mut k = ApiKeys::none();
        k.add_file("# comment\n\nteam-a:sk-aaa\n  sk-bare  \nteam_b : sk-bbb\n")
            .unwrap();
        assert_eq!(
            k.tenants().collect::<Vec<_>>(),
            ["team-a", "default", "team_b"]
        );
        assert_eq!(k.check(&headers("Bearer sk-aaa")).unwrap(), "team-a");
        assert_eq!(k.check(&headers("bearer  sk-aaa ")).unwrap(), "team-a");
        assert_eq!(k.check(&headers("Bearer sk-bare")).unwrap(), "default");
        assert_eq!(k.check(&headers("Bearer sk-bbb")).unwrap(), "team_b");
    }

    #[test]
    fn keys_file_errors_name_the_line() {
        let e = ApiKeys::none()
            .add_file("ok:sk-1\nbad tenant:sk-2\n")
            .unwrap_err();
        assert!(matches!(e, KeysError::BadLine { line: 2, .. }), "{e}");
        let e = ApiKeys::none().add_file("a:sk-1\nb:sk-1\n").unwrap_err();
        assert!(matches!(e, KeysError::Duplicate(..)), "{e}");
        let e = ApiKeys::none().add_file("a:\n").unwrap_err();
        assert!(matches!(e, KeysError::BadLine { line: 1, .. }), "{e}");
    }

    #[test]
    fn keys_file_lines_carry_rate_limits() {
        let mut k = ApiKeys::none();
        let limits = k
            .add_file(
                "team-a:sk-a1 rpm=60 tpm=40000\nteam-a:sk-a2\nteam-a:sk-a3 rpm=60  tpm=40000\n\
                 team-b : sk-b tpm=100\nsk-bare rpm=5\nteam-c:sk-c\n",
            )
            .unwrap();
        assert_eq!(k.check(&headers("Bearer sk-a2")).unwrap(), "team-a");
        assert_eq!(k.check(&headers("Bearer sk-b")).unwrap(), "team-b");
        assert_eq!(k.check(&headers("Bearer sk-bare")).unwrap(), DEFAULT_TENANT);
        let want = |rpm, tpm| Limits {
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
        };
        assert_eq!(
            limits.into_iter().collect::<Vec<_>>(),
            [
                ("default".to_string(), want(Some(5), None)),
                ("team-a".to_string(), want(Some(60), Some(40000))),
                ("team-b".to_string(), want(None, Some(100))),
            ]
        );
    }

    #[test]
    fn keys_file_limit_errors_name_the_line_and_the_fix() {
        for (text, line, says) in [
            (
                "a:sk-1\nb:sk-2 rpm=ten\n",
                2,
                "rpm=\"ten\" is not a whole number; write e.g. rpm=60",
            ),
            ("a:sk-1 burst=3\n", 1, "unknown field \"burst\""),
            ("# c\na:sk-1 tpm=0\n", 2, "tpm=0 would refuse every request"),
            (
                "a:sk-1 rpm=60\na:sk-2\na:sk-3 rpm=30\n",
                3,
                "tenant \"a\" was given rpm=60 on line 1 and rpm=30 here",
            ),
            (
                "a:sk-1 rpm=60\na:sk-2 rpm=60 tpm=9\n",
                2,
                "was given rpm=60 on line 1 and rpm=60 tpm=9 here",
            ),
        ] {
            let e = ApiKeys::none().add_file(text).unwrap_err();
            assert!(
                matches!(e, KeysError::BadLine { line: l, .. } if l == line),
                "{text:?}: {e}"
            );
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("line {line} of the keys file: ")),
                "{msg}"
            );
            assert!(msg.contains(says), "{text:?}: {msg}");
        }
    }

    #[test]
    fn missing_wrong_and_malformed_keys_are_401() {
        let mut k = ApiKeys::none();
        k.add(DEFAULT_TENANT, "sk-right").unwrap();
        for h in [
            HeaderMap::new(),
            headers("Bearer sk-wrong"),
            headers("sk-right"),
            headers("Bearer sk-righ"),
        ] {
            assert_eq!(k.check(&h).unwrap_err().status(), 401);
        }
    }

    #[test]
    fn anthropics_x_api_key_header_is_a_key_too() {
        let mut k = ApiKeys::none();
        k.add("team-a", "sk-a").unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("sk-a"));
        assert_eq!(k.check(&h).unwrap(), "team-a");
        h.insert("x-api-key", HeaderValue::from_static("sk-b"));
        assert_eq!(k.check(&h).unwrap_err().status(), 401);
        // With both, Authorization is the key.
        h.insert("authorization", HeaderValue::from_static("Bearer sk-a"));
        assert_eq!(k.check(&h).unwrap(), "team-a");
        let mut h = headers("Bearer sk-wrong");
        h.insert("x-api-key", HeaderValue::from_static("sk-a"));
        assert_eq!(k.check(&h).unwrap_err().status(), 401);
    }

    #[test]
    fn no_keys_means_anonymous() {
        assert_eq!(
            ApiKeys::none().check(&HeaderMap::new()).unwrap(),
            ANONYMOUS_TENANT
        );
    }

    #[test]
    fn only_loopback_may_go_without_keys() {
        let keys = ApiKeys::none();
        for a in ["127.0.0.1:8000", "[::1]:8000", "[::ffff:127.0.0.1]:1"] {
            assert!(
                check_exposure(&a.parse().unwrap(), &keys, false).is_ok(),
                "{a}"
            );
        }
        for a in ["0.0.0.0:8000", "[::]:8000", "192.168.1.5:80"] {
            let addr = a.parse().unwrap();
            let e = check_exposure(&addr, &keys, false).unwrap_err();
            assert!(e.to_string().contains("--insecure-no-auth"), "{e}");
            assert!(check_exposure(&addr, &keys, true).is_ok());
        }
        let mut with = ApiKeys::none();
        with.add("t", "k").unwrap();
        assert!(check_exposure(&"0.0.0.0:1".parse().unwrap(), &with, false).is_ok());
    }
}
