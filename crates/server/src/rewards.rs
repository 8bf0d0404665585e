//! The reward server: OpenRLHF's remote reward-model protocol over Seek's rule-based rewards
//! (`seek_eval::rewards`, the ones `seek train grpo` and `seek eval` use), so that a run on a
//! GPU cluster (OpenRLHF's `--remote_rm_url`, or a veRL / TRL reward function that posts here)
//! scores exactly as a local one.
//!
//! `POST /get_reward` with `{"query": [prompt + completion, ...], "prompts": [prompt, ...],
//! "labels": [solution, ...]}` answers `{"rewards": [...], "scores": [...], "extra_logs":
//! {"<reward name>": [...]}}` (a sample no function could score, for want of a readable label,
//! gets 0 and is counted in `extra_logs.unscorable`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use seek_eval::rewards::{RewardSet, Sample};
use serde::Deserialize;
use std::sync::Arc;

/// A `/get_reward` request (OpenRLHF's field names).
#[derive(Debug, Deserialize)]
pub struct RewardRequest {
    /// Each sample's full text: its prompt followed by its completion.
    pub query: Vec<String>,
    /// Each sample's prompt (stripped from the front of its query).
    #[serde(default)]
    pub prompts: Vec<String>,
    /// Each sample's verifiable answer.
    #[serde(default)]
    pub labels: Vec<Option<String>>,
}

/// The routes of `seek rewards serve`: `POST /get_reward`, `GET /health`.
pub fn router(rewards: RewardSet) -> Router {
    Router::new()
        .route("/get_reward", post(get_reward))
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .with_state(Arc::new(rewards))
}

fn bad(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({"error": {"message": message, "type": "invalid_request_error"}})),
    )
        .into_response()
}

async fn get_reward(
    State(set): State<Arc<RewardSet>>,
    body: Result<Json<RewardRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let req = match body {
        Ok(Json(r)) => r,
        Err(e) => {
            return bad(format!(
                "the body is not a reward request ({e}); send {{\"query\": [...], \"prompts\": [...], \"labels\": [...]}}"
            ))
        }
    };
    let n = req.query.len();
    if !req.prompts.is_empty() && req.prompts.len() != n {
        return bad(format!(
            "{} prompts for {n} queries; send one prompt per query",
            req.prompts.len()
        ));
    }
    if !req.labels.is_empty() && req.labels.len() != n {
        return bad(format!(
            "{} labels for {n} queries; send one label per query",
            req.labels.len()
        ));
    }
    let mut rewards = Vec::with_capacity(n);
    let mut logs: Vec<Vec<f64>> = vec![Vec::with_capacity(n); set.funcs.len()];
    let mut unscorable = 0;
    for (i, query) in req.query.iter().enumerate() {
        let prompt = req.prompts.get(i).map(String::as_str).unwrap_or("");
        let completion = query.strip_prefix(prompt).unwrap_or(query);
        let label = req.labels.get(i).and_then(|l| l.as_deref());
        // A label that is a JSON object is the row's columns (Countdown's `nums` and `target`).
        let row = label
            .filter(|l| l.trim_start().starts_with('{'))
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok());
        let sample = Sample {
            completion,
            solution: label,
            completion_tokens: None,
            prompt_opens_think: prompt.trim_end().ends_with("<think>"),
            row: row.as_ref(),
        };
        let s = set.score(&sample);
        if s.total.is_nan() {
            unscorable += 1;
            rewards.push(0.0);
        } else {
            rewards.push(s.total);
        }
        for (k, r) in s.per_func.iter().enumerate() {
            logs[k].push(r.unwrap_or(f64::NAN));
        }
    }
    let mut extra = serde_json::Map::new();
    for ((f, _), vals) in set.funcs.iter().zip(logs) {
        let vals: Vec<serde_json::Value> = vals
            .into_iter()
            .map(|v| {
                if v.is_nan() {
                    serde_json::Value::Null
                } else {
                    v.into()
                }
            })
            .collect();
        extra.insert(f.name(), vals.into());
    }
    extra.insert("unscorable".into(), unscorable.into());
    Json(serde_json::json!({"rewards": rewards, "scores": rewards, "extra_logs": extra}))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn post(app: Router, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = app
            .oneshot(
                Request::post("/get_reward")
                    .header("content-type", "application/json")
                    .body(Body::from(body.to_string()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = r.status().as_u16();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    /// The body OpenRLHF's `remote_rm_fn` sends (`openrlhf/utils/remote_rm_utils.py`):
    /// `{"query": queries, "prompts": prompts, "labels": labels}`.
    #[tokio::test]
    async fn openrlhfs_request_shape_is_scored_with_seeks_rewards() {
        let set = RewardSet::new(
            &["accuracy_reward".into(), "think_format_reward".into()],
            None,
            128,
        )
        .unwrap();
        let prompt = "<｜User｜>What is 6 * 7?<｜Assistant｜><think>\n";
        let body = serde_json::json!({
            "query": [
                format!("{prompt}6 times 7.\n</think>\n\\boxed{{42}}"),
                format!("{prompt}hmm\n</think>\n\\boxed{{41}}"),
                format!("{prompt}no closing tag, 42"),
            ],
            "prompts": [prompt, prompt, prompt],
            "labels": ["42", "42", "42"],
        });
        let (status, v) = post(router(set.clone()), body).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["rewards"], serde_json::json!([2.0, 1.0, 1.0]), "{v}");
        assert_eq!(v["scores"], v["rewards"]);
        assert_eq!(
            v["extra_logs"]["accuracy_reward"],
            serde_json::json!([1.0, 0.0, 1.0])
        );
        assert_eq!(
            v["extra_logs"]["think_format_reward"],
            serde_json::json!([1.0, 1.0, 0.0])
        );
        // Mismatched lengths and a body that is not a reward request are 400s that say why.
        let (status, v) = post(
            router(set.clone()),
            serde_json::json!({"query": ["a"], "labels": ["1", "2"]}),
        )
        .await;
        assert_eq!(status, 400);
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("one label per query"),
            "{v}"
        );
        let (status, _) = post(router(set), serde_json::json!({"queries": ["a"]})).await;
        assert_eq!(status, 400);
    }
}
