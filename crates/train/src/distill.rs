//! R1's distillation, first half (`seek train distill`): sample K traces per verifiable
//! problem from a teacher (a local model through Seek's engine, or any OpenAI-compatible URL,
//! reading `reasoning_content`), keep those whose final answer `seek eval`'s verifier accepts
//! (rejection sampling), and write them as a TRL conversational dataset for `seek train sft`.
//!
//! Every trace is appended to `traces/samples.jsonl` as soon as it is judged, so a killed run
//! resumes where it stopped (the same machinery as `seek eval`).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use seek_eval::reliability::{Dataset, Problem, MATH_PROMPT};
use seek_eval::run::{run_items, Item, RunConfig, Sample};
use seek_eval::target::{ChatRequest, Target};
use seek_eval::verify::{answers_match, extract_answer};
use seek_types::ChatMessage;
use serde::{Deserialize, Serialize};

use crate::{io_err, Result, TrainError};

/// What to sample.
#[derive(Debug, Clone)]
pub struct DistillOptions {
    /// Traces per problem (TRL's `num_generations`).
    pub num_generations: usize,
    /// Most new tokens per trace, reasoning included.
    pub max_completion_length: usize,
    /// Sampling temperature (0: greedy, the same trace K times).
    pub temperature: f32,
    /// Appended to each question (DeepSeek's math instruction by default).
    pub instruction: String,
}

impl Default for DistillOptions {
    fn default() -> Self {
        Self {
            num_generations: 4,
            max_completion_length: 1024,
            temperature: 0.6,
            instruction: MATH_PROMPT.to_string(),
        }
    }
}

/// One teacher trace, judged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TraceSample {
    /// `<problem id>#<k>`.
    pub key: String,
    /// The problem.
    pub problem_id: String,
    /// Sample index, also the sampling seed.
    pub k: usize,
    /// The user message sent.
    pub prompt: String,
    /// The reference answer.
    pub gold: String,
    /// The teacher's chain of thought (`reasoning_content`), empty for a model without one.
    pub reasoning: String,
    /// The teacher's answer.
    pub content: String,
    /// `stop`, `length`, ...
    pub finish_reason: String,
    /// The final answer the verifier found.
    pub extracted: Option<String>,
    /// The verifier accepts it (and the reply was not cut off).
    pub accepted: bool,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
}

impl Sample for TraceSample {
    fn key(&self) -> &str {
        &self.key
    }
    fn cost(&self) -> (usize, usize) {
        (1, self.completion_tokens)
    }
    fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }
}

struct Job<'a> {
    problem: &'a Problem,
    k: usize,
}

impl Item for Job<'_> {
    fn key(&self) -> String {
        format!("{}#{}", self.problem.id, self.k)
    }
}

/// What a generation run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DistillSummary {
    /// The teacher.
    pub teacher: String,
    /// Problems asked.
    pub problems: usize,
    /// Traces sampled.
    pub traces: usize,
    /// Traces the verifier accepted.
    pub accepted: usize,
    /// Problems with at least one accepted trace.
    pub problems_solved: usize,
    /// Accepted traces that ran out of tokens are never kept; how many were cut off.
    pub cut_off: usize,
    /// Accepted / sampled, per problem id.
    pub per_problem: BTreeMap<String, (usize, usize)>,
    /// The SFT dataset written.
    pub dataset: PathBuf,
}

/// Problems from `gsm8k`, `math500` or JSONL files, minus `exclude` ids (a held-out set).
pub fn problems(sources: &[String], exclude: &HashSet<String>) -> Result<Vec<Problem>> {
    let mut out = Vec::new();
    for s in sources {
        let d = Dataset::parse(s).ok_or_else(|| {
            TrainError::Config(format!(
                "--problems {s:?}: use gsm8k, math500 or a .jsonl file of problems (question, answer)"
            ))
        })?;
        let ps = seek_eval::reliability::load_problems(d)
            .map_err(|e| TrainError::Config(e.to_string()))?;
        out.extend(ps.into_iter().filter(|p| !exclude.contains(&p.id)));
    }
    Ok(out)
}

/// The ids `seek eval reliability --datasets D --limit N --seed S` evaluates, to keep them
/// out of training.
pub fn eval_sample_ids(sources: &[String], limit: usize, seed: u64) -> Result<HashSet<String>> {
    let mut ids = HashSet::new();
    for s in sources {
        let Some(d) = Dataset::parse(s) else { continue };
        let ps = seek_eval::reliability::load_problems(d)
            .map_err(|e| TrainError::Config(e.to_string()))?;
        let sample = seek_eval::reliability::seeded_sample(ps, |p| p.id.clone(), seed, Some(limit));
        ids.extend(sample.into_iter().map(|p| p.id));
    }
    Ok(ids)
}

/// Samples, judges and keeps traces; writes `out/traces/samples.jsonl`,
/// `out/distill.jsonl` (the SFT data) and `out/distill_summary.json`.
pub fn generate(
    teacher: &dyn Target,
    run: &RunConfig,
    problems: &[Problem],
    opts: &DistillOptions,
) -> Result<DistillSummary> {
    let jobs: Vec<Job> = problems
        .iter()
        .flat_map(|problem| (0..opts.num_generations.max(1)).map(move |k| Job { problem, k }))
        .collect();
    let traces_cfg = RunConfig {
        out: run.out.join("traces"),
        ..run.clone()
    };
    let samples: Vec<TraceSample> = run_items(&traces_cfg, &jobs, |job| {
        let p = job.problem;
        let prompt = if opts.instruction.is_empty() {
            p.question.clone()
        } else {
            format!("{}\n{}", p.question, opts.instruction)
        };
        let reply = teacher.chat(&ChatRequest {
            messages: vec![ChatMessage::user(&prompt)],
            max_tokens: opts.max_completion_length,
            temperature: opts.temperature,
            seed: Some(job.k as u64),
            choice: None,
        })?;
        let extracted = extract_answer(&reply.content);
        let cut = reply.finish_reason == "length";
        Ok(TraceSample {
            key: job.key(),
            problem_id: p.id.clone(),
            k: job.k,
            prompt,
            gold: p.gold.clone(),
            accepted: !cut
                && extracted
                    .as_ref()
                    .is_some_and(|a| answers_match(a, &p.gold)),
            extracted,
            reasoning: reply.reasoning,
            content: reply.content,
            finish_reason: reply.finish_reason,
            prompt_tokens: reply.prompt_tokens,
            completion_tokens: reply.completion_tokens,
        })
    })
    .map_err(|e| TrainError::Config(format!("sampling the teacher: {e}")))?;
    write_dataset(&run.out, &teacher.name(), problems, &samples)
}

/// Writes the accepted traces as TRL conversations and the summary.
fn write_dataset(
    out: &Path,
    teacher: &str,
    problems: &[Problem],
    samples: &[TraceSample],
) -> Result<DistillSummary> {
    let mut per_problem: BTreeMap<String, (usize, usize)> =
        problems.iter().map(|p| (p.id.clone(), (0, 0))).collect();
    let mut text = String::new();
    let (mut accepted, mut cut_off) = (0, 0);
    for s in samples {
        let e = per_problem.entry(s.problem_id.clone()).or_default();
        e.1 += 1;
        cut_off += usize::from(s.finish_reason == "length");
        if !s.accepted {
            continue;
        }
        e.0 += 1;
        accepted += 1;
        let mut assistant = serde_json::json!({"role": "assistant", "content": s.content});
        if !s.reasoning.is_empty() {
            assistant["reasoning_content"] = s.reasoning.clone().into();
        }
        let row = serde_json::json!({
            "messages": [{"role": "user", "content": s.prompt}, assistant],
            "problem_id": s.problem_id,
        });
        text.push_str(&row.to_string());
        text.push('\n');
    }
    let dataset = out.join("distill.jsonl");
    let tmp = out.join("distill.jsonl.tmp");
    std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &dataset).map_err(io_err(&dataset))?;
    let summary = DistillSummary {
        teacher: teacher.to_string(),
        problems: problems.len(),
        traces: samples.len(),
        accepted,
        problems_solved: per_problem.values().filter(|(a, _)| *a > 0).count(),
        cut_off,
        per_problem,
        dataset,
    };
    let p = out.join("distill_summary.json");
    std::fs::write(
        &p,
        serde_json::to_string_pretty(&summary).expect("json") + "\n",
    )
    .map_err(io_err(&p))?;
    Ok(summary)
}
