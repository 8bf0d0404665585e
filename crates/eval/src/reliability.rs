//! `seek eval reliability`: GSM8K and MATH-500 accuracy with the rule-based verifier of
//! [`crate::verify`] (the trainer's reward), consistency across sampling seeds, reasoning
//! length, and how often the token budget ran out before an answer.
//!
//! Each (problem, run) pair is one item of [`run_items`], so a killed run loses at most the
//! chats in flight; `--seeds K` samples every problem K times (sampling seeds 0..K) for the
//! consistency and majority-vote numbers. The prompt is DeepSeek's recommendation for R1 on
//! math: the problem, then "Please reason step by step, and put your final answer within
//! \boxed{}.", in the user turn, with no system prompt. Only the answer (`content`) is
//! verified: a reply whose budget ran out inside the reasoning is unanswered, not graded on
//! its half-finished thoughts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use seek_engine::serve::SubmitError;
use seek_types::ChatMessage;
use serde::{Deserialize, Serialize};

use crate::run::{run_items, write_json, Item, RunConfig, Sample};
use crate::target::{ChatRequest, Reply, Target};
use crate::verify::{answers_match, extract_answer_how, gsm8k_gold};
use crate::EvalError;

/// DeepSeek's recommended instruction for R1 on math problems.
pub const MATH_PROMPT: &str =
    "Please reason step by step, and put your final answer within \\boxed{}.";

/// A math dataset: one shipped in `data/`, or a JSONL file of verifiable problems.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dataset {
    /// GSM8K test split (1319 grade-school word problems, integer answers).
    Gsm8k,
    /// MATH-500 (the PRM800K subset of MATH's test split, with subject and level).
    Math500,
    /// A JSONL file, one problem a line: `question` (or `problem`, `prompt`) and `answer`
    /// (or `solution`, `gold`), checked by the same verifier.
    File(PathBuf),
}

impl Dataset {
    /// `gsm8k`, `math500`, or the file's stem, as in sample keys and the summary.
    pub fn name(&self) -> String {
        match self {
            Dataset::Gsm8k => "gsm8k".into(),
            Dataset::Math500 => "math500".into(),
            Dataset::File(p) => p
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| p.display().to_string()),
        }
    }

    /// From `gsm8k` / `math500` (also `math`, `math-500`), or a path ending in `.jsonl`.
    pub fn parse(s: &str) -> Option<Dataset> {
        match s.to_ascii_lowercase().as_str() {
            "gsm8k" => Some(Dataset::Gsm8k),
            "math500" | "math-500" | "math" => Some(Dataset::Math500),
            _ if s.ends_with(".jsonl") => Some(Dataset::File(PathBuf::from(s))),
            _ => None,
        }
    }
}

/// What the reliability suite runs.
#[derive(Debug, Clone)]
pub struct ReliabilityOptions {
    /// The datasets, in order.
    pub datasets: Vec<Dataset>,
    /// At most this many problems per dataset (a seeded sample; the sample for a smaller
    /// limit is a prefix of the one for a larger limit with the same seed).
    pub limit: Option<usize>,
    /// Seed of the problem sample.
    pub sample_seed: u64,
    /// Runs per problem (sampling seeds 0..seeds), for consistency and majority vote.
    pub seeds: usize,
    /// Most new tokens per reply, reasoning included.
    pub max_tokens: usize,
    /// Sampling temperature.
    pub temperature: f32,
}

impl Default for ReliabilityOptions {
    /// Both datasets in full, one run each, at DeepSeek's evaluation settings for R1
    /// (temperature 0.6, up to 32768 tokens).
    fn default() -> Self {
        Self {
            datasets: vec![Dataset::Gsm8k, Dataset::Math500],
            limit: None,
            sample_seed: 0,
            seeds: 1,
            max_tokens: 32768,
            temperature: 0.6,
        }
    }
}

/// One math problem.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The dataset.
    pub dataset: Dataset,
    /// `gsm8k/<line>` or `math500/<unique_id>`.
    pub id: String,
    /// The question.
    pub question: String,
    /// The reference answer.
    pub gold: String,
    /// MATH subject (`Algebra`, ...).
    pub subject: Option<String>,
    /// MATH level 1-5.
    pub level: Option<u8>,
}

/// The problems of a dataset, in file order.
pub fn load_problems(dataset: Dataset) -> Result<Vec<Problem>, EvalError> {
    let path = match &dataset {
        Dataset::Gsm8k => crate::data::data_dir().join("gsm8k/test.jsonl"),
        Dataset::Math500 => crate::data::data_dir().join("math500/test.jsonl"),
        Dataset::File(p) => p.clone(),
    };
    let text = read_data(&path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| EvalError::data(&path, format!("line {}: {e}", i + 1)))?;
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        let first = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| match &v[*k] {
                    serde_json::Value::String(t) => Some(t.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .unwrap_or_default()
        };
        out.push(match &dataset {
            Dataset::File(_) => Problem {
                dataset: dataset.clone(),
                id: format!(
                    "{}/{}",
                    dataset.name(),
                    v["id"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| i.to_string())
                ),
                question: first(&["question", "problem", "prompt"]),
                gold: first(&["answer", "solution", "gold"]),
                subject: None,
                level: None,
            },
            Dataset::Gsm8k => Problem {
                dataset: dataset.clone(),
                id: format!("gsm8k/{i}"),
                question: s("question"),
                gold: gsm8k_gold(&s("answer")),
                subject: None,
                level: None,
            },
            Dataset::Math500 => Problem {
                dataset: dataset.clone(),
                id: format!("math500/{}", s("unique_id")),
                question: s("problem"),
                gold: s("answer"),
                subject: Some(s("subject")),
                level: v["level"].as_u64().map(|l| l as u8),
            },
        });
        let p = out.last().expect("just pushed");
        if p.question.is_empty() || p.gold.is_empty() {
            return Err(EvalError::data(
                &path,
                format!("line {}: no question or no answer", i + 1),
            ));
        }
    }
    Ok(out)
}

/// `target.chat(req)`, except that a prompt the local engine refuses as invalid (longer than
/// the model's context window) is an unanswered reply with the reason, not the end of the run:
/// a small model should still be scored on the problems it can read. Such a sample is kept on
/// resume like any other; delete the folder to retry with a larger context.
pub(crate) fn chat_or_unfit(
    target: &dyn Target,
    req: &ChatRequest,
) -> Result<(Reply, Option<String>), EvalError> {
    match target.chat(req) {
        Ok(r) => Ok((r, None)),
        Err(EvalError::Submit(SubmitError::Invalid(m))) => Ok((
            Reply {
                finish_reason: "error".into(),
                ..Reply::default()
            },
            Some(m),
        )),
        Err(e) => Err(e),
    }
}

pub(crate) fn read_data(path: &Path) -> Result<String, EvalError> {
    std::fs::read_to_string(path).map_err(|e| {
        EvalError::data(
            path,
            format!("{e}; the evaluation data lives in data/ of the Seek repository (or set SEEK_EVAL_DATA)"),
        )
    })
}

/// A repeatable sample of at most `limit` of `items`: ordered by a hash of (seed, key), so a
/// larger limit with the same seed extends a smaller one instead of drawing anew.
pub fn seeded_sample<T>(
    mut items: Vec<T>,
    key: impl Fn(&T) -> String,
    seed: u64,
    limit: Option<usize>,
) -> Vec<T> {
    let Some(limit) = limit else {
        return items;
    };
    items.sort_by_cached_key(|t| {
        // FNV-1a of the key, mixed with the seed by splitmix64: stable across platforms and
        // Rust versions, unlike std's hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key(t).bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        let mut z = h ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    });
    items.truncate(limit);
    items
}

struct Job<'a> {
    problem: &'a Problem,
    run: usize,
}

impl Item for Job<'_> {
    fn key(&self) -> String {
        format!("{}#{}", self.problem.id, self.run)
    }
}

/// One reply to one problem, as `samples.jsonl` holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReliabilitySample {
    /// `<problem id>#<run>`.
    pub key: String,
    /// `gsm8k` or `math500`.
    pub dataset: String,
    /// The problem.
    pub problem_id: String,
    /// Run index, which is also the sampling seed.
    pub run: usize,
    /// MATH subject.
    pub subject: Option<String>,
    /// MATH level.
    pub level: Option<u8>,
    /// The user message sent.
    pub prompt: String,
    /// The reference answer.
    pub gold: String,
    /// The chain of thought.
    pub reasoning: String,
    /// The answer text.
    pub content: String,
    /// `stop`, `length`, `content_filter`, ...
    pub finish_reason: String,
    /// The final answer found in `content`, if any.
    pub extracted: Option<String>,
    /// How it was found: `boxed`, `answer_is` or `last_number`.
    pub extracted_by: Option<String>,
    /// It equals the reference.
    pub correct: bool,
    /// The reply ran out of tokens (`finish_reason` is `length`).
    pub budget_hit: bool,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens, reasoning included.
    pub completion_tokens: usize,
    /// Reasoning tokens.
    pub reasoning_tokens: usize,
    /// The guard rail that blocked the chat, if any.
    pub blocked_by: Option<String>,
    /// Why the target could not take the prompt (it does not fit the context window).
    #[serde(default)]
    pub error: Option<String>,
}

impl Sample for ReliabilitySample {
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

/// Scores of a set of problems.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Problems.
    pub problems: usize,
    /// Replies (problems × runs).
    pub samples: usize,
    /// Fraction of replies that are correct (pass@1, averaged over runs).
    pub accuracy: f64,
    /// Fraction of problems whose most frequent answer is correct (unanswered runs do not
    /// vote; ties go to the answer seen first).
    pub majority_accuracy: f64,
    /// Fraction of problems whose runs all gave the same answer (an unanswered run disagrees);
    /// `None` with one run per problem.
    pub consistency: Option<f64>,
    /// Fraction of replies with no answer in `content`.
    pub unanswered: f64,
    /// Fraction of replies that ran out of tokens.
    pub budget_hit: f64,
    /// Of the unanswered replies, how many ran out of tokens.
    pub unanswered_budget_hit: usize,
    /// Replies whose answer was only found as the last number (no box, no "answer is").
    pub last_number_fallback: usize,
    /// Replies the guard blocked.
    pub blocked: usize,
    /// Prompts the target could not take (longer than its context window); unanswered.
    pub errors: usize,
    /// Mean reasoning tokens per reply.
    pub reasoning_tokens_mean: f64,
    /// Median reasoning tokens per reply.
    pub reasoning_tokens_median: f64,
    /// Mean generated tokens per reply.
    pub completion_tokens_mean: f64,
}

/// The suite's result, as `reliability/summary.json` holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReliabilitySummary {
    /// The model or endpoint.
    pub target: String,
    /// Runs per problem.
    pub seeds: usize,
    /// Problems per dataset asked for.
    pub limit: Option<usize>,
    /// Seed of the problem sample.
    pub sample_seed: u64,
    /// Most new tokens per reply.
    pub max_tokens: usize,
    /// Sampling temperature.
    pub temperature: f32,
    /// Every problem together.
    pub overall: Score,
    /// Per dataset (`gsm8k`, `math500`).
    pub by_dataset: BTreeMap<String, Score>,
    /// MATH-500 per subject.
    pub by_subject: BTreeMap<String, Score>,
    /// MATH-500 per level (`1`..`5`).
    pub by_level: BTreeMap<String, Score>,
}

/// Runs the reliability suite on `target`, writing `samples.jsonl` and `summary.json` to
/// `cfg.out/reliability` (resuming what a previous run there finished).
pub fn reliability(
    target: &dyn Target,
    cfg: &RunConfig,
    opts: &ReliabilityOptions,
) -> Result<ReliabilitySummary, EvalError> {
    let mut problems = Vec::new();
    for d in &opts.datasets {
        problems.extend(seeded_sample(
            load_problems(d.clone())?,
            |p| p.id.clone(),
            opts.sample_seed,
            opts.limit,
        ));
    }
    let jobs: Vec<Job> = problems
        .iter()
        .flat_map(|problem| (0..opts.seeds.max(1)).map(move |run| Job { problem, run }))
        .collect();
    let cfg = RunConfig {
        out: cfg.out.join("reliability"),
        ..cfg.clone()
    };
    let samples = run_items(&cfg, &jobs, |job| {
        let p = job.problem;
        let prompt = format!("{}\n{MATH_PROMPT}", p.question);
        let (reply, error) = chat_or_unfit(
            target,
            &ChatRequest {
                messages: vec![ChatMessage::user(&prompt)],
                max_tokens: opts.max_tokens,
                temperature: opts.temperature,
                seed: Some(job.run as u64),
                choice: None,
            },
        )?;
        let found = extract_answer_how(&reply.content);
        Ok(ReliabilitySample {
            key: job.key(),
            dataset: p.dataset.name(),
            problem_id: p.id.clone(),
            run: job.run,
            subject: p.subject.clone(),
            level: p.level,
            prompt,
            gold: p.gold.clone(),
            correct: found
                .as_ref()
                .is_some_and(|(a, _)| answers_match(a, &p.gold)),
            extracted_by: found.as_ref().map(|(_, how)| how.as_str().to_string()),
            extracted: found.map(|(a, _)| a),
            budget_hit: reply.finish_reason == "length",
            reasoning: reply.reasoning,
            content: reply.content,
            finish_reason: reply.finish_reason,
            prompt_tokens: reply.prompt_tokens,
            completion_tokens: reply.completion_tokens,
            reasoning_tokens: reply.reasoning_tokens,
            blocked_by: reply.blocked_by,
            error,
        })
    })?;
    let summary = summarize(&target.name(), opts, &samples);
    write_json(&cfg.out, "summary.json", &summary)?;
    Ok(summary)
}

/// The summary of a set of samples.
pub fn summarize(
    target: &str,
    opts: &ReliabilityOptions,
    samples: &[ReliabilitySample],
) -> ReliabilitySummary {
    let all: Vec<&ReliabilitySample> = samples.iter().collect();
    let group = |key: &dyn Fn(&ReliabilitySample) -> Option<String>| {
        let mut m: BTreeMap<String, Vec<&ReliabilitySample>> = BTreeMap::new();
        for s in samples {
            if let Some(k) = key(s) {
                m.entry(k).or_default().push(s);
            }
        }
        m.into_iter()
            .map(|(k, v)| (k, score(&v, opts.seeds)))
            .collect()
    };
    ReliabilitySummary {
        target: target.to_string(),
        seeds: opts.seeds.max(1),
        limit: opts.limit,
        sample_seed: opts.sample_seed,
        max_tokens: opts.max_tokens,
        temperature: opts.temperature,
        overall: score(&all, opts.seeds),
        by_dataset: group(&|s| Some(s.dataset.clone())),
        by_subject: group(&|s| s.subject.clone()),
        by_level: group(&|s| s.level.map(|l| l.to_string())),
    }
}

fn score(samples: &[&ReliabilitySample], seeds: usize) -> Score {
    let n = samples.len();
    if n == 0 {
        return Score::default();
    }
    let frac = |count: usize| count as f64 / n as f64;
    let mut by_problem: BTreeMap<&str, Vec<&ReliabilitySample>> = BTreeMap::new();
    for s in samples {
        by_problem.entry(&s.problem_id).or_default().push(s);
    }
    let (mut majority_right, mut consistent) = (0, 0);
    for runs in by_problem.values() {
        // Clusters of equivalent answers, in order of first appearance.
        let mut clusters: Vec<(&str, usize)> = Vec::new();
        for a in runs.iter().filter_map(|s| s.extracted.as_deref()) {
            match clusters.iter_mut().find(|(c, _)| answers_match(a, c)) {
                Some(c) => c.1 += 1,
                None => clusters.push((a, 1)),
            }
        }
        let mut best: Option<(&str, usize)> = None;
        for &(a, count) in &clusters {
            if best.is_none_or(|(_, b)| count > b) {
                best = Some((a, count));
            }
        }
        if best.is_some_and(|(a, _)| answers_match(a, &runs[0].gold)) {
            majority_right += 1;
        }
        if clusters.len() == 1 && clusters[0].1 == runs.len() {
            consistent += 1;
        }
    }
    let mut reasoning: Vec<usize> = samples.iter().map(|s| s.reasoning_tokens).collect();
    reasoning.sort_unstable();
    let median = if n % 2 == 1 {
        reasoning[n / 2] as f64
    } else {
        (reasoning[n / 2 - 1] + reasoning[n / 2]) as f64 / 2.0
    };
    let unanswered: Vec<&&ReliabilitySample> =
        samples.iter().filter(|s| s.extracted.is_none()).collect();
    let problems = by_problem.len();
    Score {
        problems,
        samples: n,
        accuracy: frac(samples.iter().filter(|s| s.correct).count()),
        majority_accuracy: majority_right as f64 / problems as f64,
        consistency: (seeds > 1).then(|| consistent as f64 / problems as f64),
        unanswered: frac(unanswered.len()),
        budget_hit: frac(samples.iter().filter(|s| s.budget_hit).count()),
        unanswered_budget_hit: unanswered.iter().filter(|s| s.budget_hit).count(),
        last_number_fallback: samples
            .iter()
            .filter(|s| s.extracted_by.as_deref() == Some("last_number"))
            .count(),
        blocked: samples.iter().filter(|s| s.blocked_by.is_some()).count(),
        errors: samples.iter().filter(|s| s.error.is_some()).count(),
        reasoning_tokens_mean: reasoning.iter().sum::<usize>() as f64 / n as f64,
        reasoning_tokens_median: median,
        completion_tokens_mean: frac(samples.iter().map(|s| s.completion_tokens).sum()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(problem: &str, run: usize, answer: Option<&str>, gold: &str) -> ReliabilitySample {
        ReliabilitySample {
            key: format!("{problem}#{run}"),
            dataset: "math500".into(),
            problem_id: problem.into(),
            run,
            subject: Some("Algebra".into()),
            level: Some(2),
            prompt: String::new(),
            gold: gold.into(),
            reasoning: String::new(),
            content: answer
                .map(|a| format!("\\boxed{{{a}}}"))
                .unwrap_or_default(),
            finish_reason: if answer.is_some() { "stop" } else { "length" }.into(),
            extracted: answer.map(str::to_string),
            extracted_by: answer.map(|_| "boxed".into()),
            correct: answer.is_some_and(|a| answers_match(a, gold)),
            budget_hit: answer.is_none(),
            prompt_tokens: 10,
            completion_tokens: 100,
            reasoning_tokens: 10 * (run + 1),
            blocked_by: None,
            error: None,
        }
    }

    /// Three problems, three runs each, scored by hand.
    #[test]
    fn majority_consistency_and_budget_by_hand() {
        let s = vec![
            // p1: all three agree (0.5 written three ways) and are right.
            sample("p1", 0, Some("1/2"), "\\frac{1}{2}"),
            sample("p1", 1, Some("0.5"), "\\frac{1}{2}"),
            sample("p1", 2, Some("\\frac12"), "\\frac{1}{2}"),
            // p2: two wrong (7) against one right (3): majority wrong, inconsistent.
            sample("p2", 0, Some("7"), "3"),
            sample("p2", 1, Some("3"), "3"),
            sample("p2", 2, Some("7"), "3"),
            // p3: one right answer and two runs out of budget: majority right, inconsistent.
            sample("p3", 0, None, "5"),
            sample("p3", 1, Some("5"), "5"),
            sample("p3", 2, None, "5"),
        ];
        let opts = ReliabilityOptions {
            seeds: 3,
            ..Default::default()
        };
        let sum = summarize("t", &opts, &s);
        let o = &sum.overall;
        assert_eq!((o.problems, o.samples), (3, 9));
        assert!((o.accuracy - 5.0 / 9.0).abs() < 1e-12, "{}", o.accuracy);
        assert!((o.majority_accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(o.consistency, Some(1.0 / 3.0));
        assert!((o.unanswered - 2.0 / 9.0).abs() < 1e-12);
        assert_eq!(o.unanswered_budget_hit, 2);
        assert_eq!(o.reasoning_tokens_median, 20.0);
        assert_eq!(o.reasoning_tokens_mean, 20.0);
        assert_eq!(sum.by_subject["Algebra"], *o);
        assert_eq!(sum.by_level["2"], *o);
        assert_eq!(sum.by_dataset["math500"], *o);
        let one = summarize("t", &ReliabilityOptions::default(), &s[..1]);
        assert_eq!(one.overall.consistency, None);
    }

    #[test]
    fn problems_load_and_samples_nest() {
        let gsm = load_problems(Dataset::Gsm8k).unwrap();
        assert_eq!(gsm.len(), 1319);
        assert_eq!(gsm[0].gold, "18");
        let math = load_problems(Dataset::Math500).unwrap();
        assert_eq!(math.len(), 500);
        assert!(math
            .iter()
            .all(|p| p.subject.is_some() && p.level.is_some()));
        let small = seeded_sample(gsm.clone(), |p| p.id.clone(), 7, Some(3));
        let large = seeded_sample(gsm.clone(), |p| p.id.clone(), 7, Some(10));
        let other = seeded_sample(gsm, |p| p.id.clone(), 8, Some(3));
        let ids = |v: &[Problem]| v.iter().map(|p| p.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&small), ids(&large)[..3]);
        assert_ne!(ids(&small), ids(&other));
    }
}
