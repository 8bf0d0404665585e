//! The server's one error type and its one mapping to HTTP.
//!
//! Statuses follow OpenAI (and TGI where OpenAI is silent): 400 for anything wrong with the
//! request (bad JSON, context overflow), 404 for an unknown route or model, 401 without a valid key, 429 with
//! `Retry-After` when the queue is full or a tenant's rate limit is reached (the latter with
//! OpenAI's `x-ratelimit-*` headers), 503 while loading or draining, 500 without internals
//! (the details go to the log, under the request id). `/v1/messages` renders the same
//! errors, with the same statuses and headers, in Anthropic's shape
//! ([`crate::anthropic::error_body`]).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use seek_engine::serve::SubmitError;

use crate::ratelimit::RateLimited;
use crate::wire::{ErrorBody, ErrorResponse};

/// Why a request was not served.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AppError {
    /// The request is malformed or cannot be served as asked (400).
    #[error("{message}")]
    BadRequest {
        /// What is wrong, naming the field, the limit and the fix.
        message: String,
        /// The request field at fault.
        param: Option<&'static str>,
        /// OpenAI's code, e.g. `model_not_found`, `context_length_exceeded`.
        code: Option<&'static str>,
    },
    /// No key, or a key that is not configured (401).
    #[error("{0}")]
    Unauthorized(String),
    /// No such route (404).
    #[error("{0}")]
    NotFound(String),
    /// No such model (404 `model_not_found`, which SDKs raise as `NotFoundError`).
    #[error("{0}")]
    ModelNotFound(String),
    /// The body is larger than the server accepts (413).
    #[error("{0}")]
    TooLarge(String),
    /// The request body did not arrive within the body timeout (408); the connection closes.
    #[error("{0}")]
    Timeout(String),
    /// The queue is full (429); retry after the given seconds.
    #[error("{message}")]
    Busy {
        /// What is full.
        message: String,
        /// The `Retry-After` header.
        retry_after_s: u64,
    },
    /// The tenant's requests or tokens per minute are spent (429, with `Retry-After` and the
    /// `x-ratelimit-*` headers).
    #[error("{0}")]
    RateLimited(Box<RateLimited>),
    /// The server is loading or draining (503).
    #[error("{message}")]
    Unavailable {
        /// Why.
        message: String,
        /// `model_loading` or `shutting_down`.
        code: &'static str,
    },
    /// Something failed inside the server (500); the message is safe to show (no internals).
    #[error("{0}")]
    Internal(String),
    /// Gateway mode: the upstream model server failed or cannot be reached (502).
    #[error("{0}")]
    Upstream(String),
}

impl AppError {
    /// A 400 naming the field at fault.
    pub fn bad(param: &'static str, message: impl Into<String>) -> Self {
        AppError::BadRequest {
            message: message.into(),
            param: Some(param),
            code: None,
        }
    }

    /// The HTTP status of this error (the one place statuses are decided).
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::NotFound(_) | AppError::ModelNotFound(_) => StatusCode::NOT_FOUND,
            AppError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            AppError::Busy { .. } | AppError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            AppError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AppError::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The OpenAI error object of this error.
    pub fn body(&self) -> ErrorBody {
        let (kind, param, code) = match self {
            AppError::BadRequest { param, code, .. } => ("invalid_request_error", *param, *code),
            AppError::Unauthorized(_) => ("invalid_request_error", None, Some("invalid_api_key")),
            AppError::NotFound(_) => ("invalid_request_error", None, Some("not_found")),
            AppError::ModelNotFound(_) => (
                "invalid_request_error",
                Some("model"),
                Some("model_not_found"),
            ),
            AppError::TooLarge(_) => ("invalid_request_error", None, Some("request_too_large")),
            AppError::Timeout(_) => ("invalid_request_error", None, Some("request_timeout")),
            AppError::Busy { .. } => ("requests", None, Some("rate_limit_exceeded")),
            AppError::RateLimited(r) => (r.kind.as_str(), None, Some("rate_limit_exceeded")),
            AppError::Unavailable { code, .. } => ("server_error", None, Some(*code)),
            AppError::Internal(_) => ("server_error", None, Some("internal_error")),
            AppError::Upstream(_) => ("server_error", None, Some("upstream_error")),
        };
        ErrorBody {
            message: self.to_string(),
            kind: kind.into(),
            param: param.map(Into::into),
            code: code.map(Into::into),
        }
    }

    pub(crate) fn shutting_down() -> Self {
        AppError::Unavailable {
            message: "the server is shutting down; retry on another replica".into(),
            code: "shutting_down",
        }
    }
}

impl From<SubmitError> for AppError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::QueueFull { .. } => AppError::Busy {
                message: e.to_string(),
                retry_after_s: 1,
            },
            SubmitError::ShuttingDown => AppError::shutting_down(),
            SubmitError::Invalid(message) => AppError::BadRequest {
                message,
                param: None,
                code: None,
            },
        }
    }
}

impl From<RateLimited> for AppError {
    fn from(r: RateLimited) -> Self {
        AppError::RateLimited(Box::new(r))
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = ErrorResponse { error: self.body() };
        self.respond(body)
    }
}

impl AppError {
    /// The response in Anthropic's shape (`/v1/messages`): the same status and headers.
    pub(crate) fn into_anthropic_response(self) -> Response {
        let body = crate::anthropic::error_body(&self);
        self.respond(body)
    }

    /// This error's status and headers around `body` (its OpenAI or Anthropic rendering).
    fn respond(self, body: impl serde::Serialize) -> Response {
        let mut res = (self.status(), axum::Json(body)).into_response();
        match &self {
            AppError::Busy { retry_after_s, .. } => {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
            }
            AppError::RateLimited(r) => {
                let h = res.headers_mut();
                h.insert(header::RETRY_AFTER, HeaderValue::from(r.retry_after_s()));
                r.status.write_headers(h);
            }
            AppError::Unauthorized(_) => {
                res.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            AppError::Timeout(_) => {
                // The rest of the body may still be on its way: do not read it as a request.
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_full_is_429_with_retry_after() {
        let e: AppError = SubmitError::QueueFull {
            queued: 3,
            limit: 3,
        }
        .into();
        let res = e.into_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn a_rate_limit_is_429_in_openai_shape_with_its_headers() {
        use crate::ratelimit::{BucketStatus, LimitKind, RateStatus};
        use std::time::Duration;
        let e: AppError = RateLimited {
            tenant: "x".into(),
            kind: LimitKind::Tokens,
            limit: 40000,
            wait: Duration::from_millis(1200),
            status: RateStatus {
                requests: None,
                tokens: Some(BucketStatus {
                    limit: 40000,
                    remaining: 0,
                    reset: Duration::from_secs(360),
                }),
            },
        }
        .into();
        let body = e.body();
        assert_eq!(
            body.message,
            "Rate limit reached for tokens per minute (limit 40000) for tenant \"x\": please try again in 1.2s."
        );
        assert_eq!(
            (body.kind.as_str(), body.code.as_deref()),
            ("tokens", Some("rate_limit_exceeded"))
        );
        let res = e.into_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        let h = res.headers();
        assert_eq!(h[header::RETRY_AFTER], "2");
        assert_eq!(h["x-ratelimit-limit-tokens"], "40000");
        assert_eq!(h["x-ratelimit-remaining-tokens"], "0");
        assert_eq!(h["x-ratelimit-reset-tokens"], "6m0s");
        assert!(!h.contains_key("x-ratelimit-limit-requests"));
    }

    #[test]
    fn statuses() {
        assert_eq!(AppError::bad("n", "x").status(), 400);
        assert_eq!(AppError::Unauthorized("x".into()).status(), 401);
        assert_eq!(AppError::shutting_down().status(), 503);
        assert_eq!(
            AppError::from(SubmitError::ShuttingDown).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(AppError::Internal("x".into()).status(), 500);
    }
}
