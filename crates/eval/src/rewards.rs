//! Rule-based rewards for R1-style reinforcement learning, under the names of TRL's reward
//! registry (`trl.rewards`), scored with the same verifier `seek eval` uses for accuracy. Shared
//! by `seek train grpo` and the reward server (`seek rewards serve`, OpenRLHF's remote
//! reward-model protocol), so a cluster run scores exactly as a local one.
//!
//! Differences from TRL, each deliberate: `accuracy_reward` verifies with [`crate::verify`]
//! (`\boxed{}`, "the answer is", the last number; numbers, fractions and LaTeX normalised)
//! instead of `math_verify`, and, like TRL, gives `None` (skip) when the gold answer cannot be
//! read; `think_format_reward` counts the opening `<think>` that a chat template put at the end
//! of the prompt (R1-Distill's templates do), which TRL's regex on the completion alone misses.

use crate::verify::{answers_match, extract_answer, extract_boxed, gsm8k_gold, normalize};

/// One completion to score.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    /// The completion's text.
    pub completion: &'a str,
    /// The verifiable answer (TRL's dataset column `solution`; OpenRLHF's `labels`).
    pub solution: Option<&'a str>,
    /// Completion length in tokens (for the overlong punishment), when known.
    pub completion_tokens: Option<usize>,
    /// Whether the prompt already opened `<think>`.
    pub prompt_opens_think: bool,
    /// The dataset row the prompt came from (TRL passes every column to a reward function):
    /// `countdown_reward` reads `nums` and `target` from it.
    pub row: Option<&'a serde_json::Value>,
}

/// A reward function.
#[derive(Debug, Clone, PartialEq)]
pub enum Reward {
    /// 1 when the final answer matches `solution`, else 0; `None` without a readable solution.
    Accuracy,
    /// As [`Reward::Accuracy`], on the text after `</think>` only (0 when it never closes).
    ReasoningAccuracy,
    /// 1 for `<think>…</think>` then an answer (one opening tag), else 0.
    ThinkFormat,
    /// Partial credit per tag: 0.25 each for one `<think>` (or one opened by the prompt), one
    /// `</think>`, the reasoning closed before the answer, and a non-empty answer.
    TagCount,
    /// DAPO's soft overlong punishment: 0 up to `max - cache` tokens, then falling linearly to
    /// -1 at `max` tokens, -1 beyond.
    SoftOverlong {
        /// `max_completion_len`.
        max: usize,
        /// `soft_punish_cache`.
        cache: usize,
    },
    /// Minus the share of repeated word 3-grams (0 for no repetition, towards -1 for a loop).
    Repetition,
    /// Countdown (`seek rewards tasks countdown`): 1 when the answer's equation uses the row's
    /// `nums` exactly once each and equals its `target`; `None` for a row without them.
    Countdown,
    /// A user's function outside Seek (`cmd:PROGRAM ARGS` or an `http(s)://` URL), scored a
    /// batch at a time by [`RewardSet::score_batch`].
    External(crate::external::External),
}

impl Reward {
    /// The reward under its TRL name (`accuracy_reward`, `reasoning_accuracy_reward`,
    /// `think_format_reward`, `get_soft_overlong_punishment`) or Seek's (`tag_count_reward`,
    /// `repetition_penalty_reward`); the overlong punishment takes `max_completion_length` and a
    /// cache of a fifth of it unless given as `get_soft_overlong_punishment:MAX:CACHE`.
    pub fn parse(name: &str, max_completion_length: usize) -> Result<Self, String> {
        let mut parts = name.split(':');
        let base = parts.next().unwrap_or_default();
        Ok(match base {
            "accuracy_reward" | "accuracy" => Reward::Accuracy,
            "reasoning_accuracy_reward" => Reward::ReasoningAccuracy,
            "think_format_reward" | "format" => Reward::ThinkFormat,
            "tag_count_reward" => Reward::TagCount,
            "repetition_penalty_reward" => Reward::Repetition,
            "countdown_reward" | "countdown" => Reward::Countdown,
            "get_soft_overlong_punishment" | "soft_overlong_punishment_reward" => {
                let num = |p: Option<&str>, d: usize| -> Result<usize, String> {
                    p.map_or(Ok(d), |s| {
                        s.parse()
                            .map_err(|_| format!("{name}: {s:?} is not a number of tokens"))
                    })
                };
                let max = num(parts.next(), max_completion_length)?;
                let cache = num(parts.next(), max / 5)?;
                if cache > max {
                    return Err(format!("{name}: the cache ({cache}) is longer than the maximum ({max})"));
                }
                Reward::SoftOverlong { max, cache }
            }
            _ if crate::external::External::parse(name).is_some() => {
                Reward::External(crate::external::External::parse(name).unwrap_or_else(|| {
                    crate::external::External::Http(name.to_string())
                }))
            }
            other => {
                return Err(format!(
                    "unknown reward {other:?}; use cmd:PROGRAM, an http(s):// URL, or accuracy_reward, reasoning_accuracy_reward, think_format_reward, \
                     get_soft_overlong_punishment, tag_count_reward, repetition_penalty_reward or countdown_reward"
                ))
            }
        })
    }

    /// The name metrics are logged under (TRL's `rewards/<name>/mean`).
    pub fn name(&self) -> String {
        let s = match self {
            Reward::External(e) => return e.label(),
            Reward::Accuracy => "accuracy_reward",
            Reward::ReasoningAccuracy => "reasoning_accuracy_reward",
            Reward::ThinkFormat => "think_format_reward",
            Reward::TagCount => "tag_count_reward",
            Reward::SoftOverlong { .. } => "soft_overlong_punishment_reward",
            Reward::Repetition => "repetition_penalty_reward",
            Reward::Countdown => "countdown_reward",
        };
        s.to_string()
    }

    /// The reward of one sample; `None` when it cannot be scored (no readable solution).
    pub fn score(&self, s: &Sample<'_>) -> Option<f64> {
        let text = full_text(s);
        match self {
            Reward::Accuracy => accuracy(answer_part(&text), s.solution),
            Reward::ReasoningAccuracy => match text.find("</think>") {
                Some(i) => accuracy(&text[i + "</think>".len()..], s.solution),
                None => s.solution.filter(|g| !normalize(g).is_empty()).map(|_| 0.0),
            },
            Reward::ThinkFormat => Some(f64::from(u8::from(think_format(&text)))),
            Reward::TagCount => Some(tag_count(&text)),
            Reward::SoftOverlong { max, cache } => {
                let len = s
                    .completion_tokens
                    .unwrap_or_else(|| s.completion.split_whitespace().count());
                Some(soft_overlong(len, *max, *cache))
            }
            Reward::Repetition => Some(-repetition(answer_part(&text))),
            Reward::External(_) => None,
            Reward::Countdown => {
                let row = s.row?;
                let target = row["target"].as_i64()?;
                let nums: Vec<i64> = row["nums"]
                    .as_array()?
                    .iter()
                    .map(serde_json::Value::as_i64)
                    .collect::<Option<_>>()?;
                Some(crate::tasks::countdown_score(
                    answer_part(&text),
                    &nums,
                    target,
                ))
            }
        }
    }
}

/// The completion as the model saw it: with the `<think>` the prompt opened.
fn full_text(s: &Sample<'_>) -> String {
    if s.prompt_opens_think && !s.completion.trim_start().starts_with("<think>") {
        format!("<think>\n{}", s.completion)
    } else {
        s.completion.to_string()
    }
}

/// The answer after the reasoning (the whole text when there is no reasoning block).
fn answer_part(text: &str) -> &str {
    match text.rfind("</think>") {
        Some(i) => &text[i + "</think>".len()..],
        None => text,
    }
}

fn accuracy(answer: &str, solution: Option<&str>) -> Option<f64> {
    let gold = solution?;
    // The gold may be a worked solution: its boxed answer (MATH) or its `#### answer`
    // (GSM8K); otherwise it is the answer itself.
    let gold = if gold.contains("####") {
        gsm8k_gold(gold)
    } else {
        extract_boxed(gold).unwrap_or_else(|| gold.trim().to_string())
    };
    if normalize(&gold).is_empty() {
        return None;
    }
    let pred = extract_answer(answer).unwrap_or_default();
    Some(f64::from(u8::from(answers_match(&pred, &gold))))
}

/// TRL's `^<think>(?!.*<think>)(.*?)</think>.*$` (dot matches newlines).
fn think_format(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("<think>") else {
        return false;
    };
    !rest.contains("<think>") && rest.contains("</think>")
}

fn tag_count(text: &str) -> f64 {
    let opens = text.matches("<think>").count();
    let closes = text.matches("</think>").count();
    let mut r = 0.0;
    if opens == 1 {
        r += 0.25;
    }
    if closes == 1 {
        r += 0.25;
    }
    if let (Some(o), Some(c)) = (text.find("<think>"), text.rfind("</think>")) {
        if o < c {
            r += 0.25;
        }
    }
    if closes >= 1 && !answer_part(text).trim().is_empty() {
        r += 0.25;
    }
    r
}

/// DAPO, Eq. 13 (TRL's `get_soft_overlong_punishment`).
pub fn soft_overlong(len: usize, max: usize, cache: usize) -> f64 {
    let start = max.saturating_sub(cache);
    if len <= start {
        0.0
    } else if len <= max {
        (start as f64 - len as f64) / cache.max(1) as f64
    } else {
        -1.0
    }
}

/// The share of word 3-grams that repeat an earlier one.
fn repetition(text: &str) -> f64 {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() < 4 {
        return 0.0;
    }
    let grams: Vec<&[&str]> = words.windows(3).collect();
    let unique: std::collections::HashSet<&[&str]> = grams.iter().copied().collect();
    1.0 - unique.len() as f64 / grams.len() as f64
}

/// Reward functions with weights: a recipe's `reward_funcs` and `reward_weights`.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardSet {
    /// Each function and its weight.
    pub funcs: Vec<(Reward, f64)>,
    /// How long an external function may take per batch.
    pub timeout: std::time::Duration,
    /// How a batch an external function failed on is scored.
    pub on_error: OnError,
}

/// What a failed external reward gives its batch (`--reward_on_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Left out of the sum (as a function that cannot score; advantage 0 if nothing else scores).
    Skip,
    /// 0.
    Zero,
}

/// An external reward that failed on a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardError {
    /// The function (`cmd:...` or the URL).
    pub func: String,
    /// What went wrong.
    pub message: String,
    /// The first completion of the batch it was given (shortened).
    pub input: String,
}

/// One sample's rewards.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// The weighted sum of the functions that could score it (NaN when none could).
    pub total: f64,
    /// Each function's reward (`None`: could not score).
    pub per_func: Vec<Option<f64>>,
}

impl RewardSet {
    /// From names and optional weights (default 1 each).
    pub fn new(
        names: &[String],
        weights: Option<&[f64]>,
        max_completion_length: usize,
    ) -> Result<Self, String> {
        if names.is_empty() {
            return Err("no reward functions; name at least one, e.g. accuracy_reward".into());
        }
        if let Some(w) = weights {
            if w.len() != names.len() {
                return Err(format!(
                    "{} reward weights for {} reward functions; give one weight per function",
                    w.len(),
                    names.len()
                ));
            }
        }
        let funcs = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                Reward::parse(n, max_completion_length).map(|r| (r, weights.map_or(1.0, |w| w[i])))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            funcs,
            timeout: std::time::Duration::from_secs(60),
            on_error: OnError::Skip,
        })
    }

    /// Scores a batch: built-in functions per sample, external ones with one call for the whole
    /// batch. A failed external call is returned with its input and scored as `on_error` says.
    pub fn score_batch(&self, batch: &[Sample<'_>]) -> (Vec<Scored>, Vec<RewardError>) {
        let mut per: Vec<Vec<Option<f64>>> = batch
            .iter()
            .map(|s| self.funcs.iter().map(|(f, _)| f.score(s)).collect())
            .collect();
        let mut errors = Vec::new();
        for (k, (f, _)) in self.funcs.iter().enumerate() {
            let Reward::External(ext) = f else { continue };
            if batch.is_empty() {
                continue;
            }
            match ext.score(batch, self.timeout) {
                Ok(vals) => {
                    for (row, v) in per.iter_mut().zip(vals) {
                        row[k] = v;
                    }
                }
                Err(message) => {
                    let input: String = batch[0].completion.chars().take(200).collect();
                    errors.push(RewardError {
                        func: ext.label(),
                        message,
                        input,
                    });
                    if self.on_error == OnError::Zero {
                        for row in &mut per {
                            row[k] = Some(0.0);
                        }
                    }
                }
            }
        }
        let scored = per.into_iter().map(|p| self.total(p)).collect();
        (scored, errors)
    }

    fn total(&self, per_func: Vec<Option<f64>>) -> Scored {
        let mut total = 0.0;
        let mut any = false;
        for ((_, w), r) in self.funcs.iter().zip(&per_func) {
            if let Some(r) = r {
                total += w * r;
                any = true;
            }
        }
        Scored {
            total: if any { total } else { f64::NAN },
            per_func,
        }
    }

    /// Scores one sample with every function (TRL's `sum_then_normalize` sum: functions that
    /// cannot score are left out; NaN when none can).
    pub fn score(&self, s: &Sample<'_>) -> Scored {
        let (mut s, _) = self.score_batch(std::slice::from_ref(s));
        s.pop().unwrap_or(Scored {
            total: f64::NAN,
            per_func: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(c: &'a str, sol: Option<&'a str>) -> Sample<'a> {
        Sample {
            completion: c,
            solution: sol,
            completion_tokens: None,
            prompt_opens_think: false,
            row: None,
        }
    }

    #[test]
    fn accuracy_uses_the_eval_verifier() {
        let r = Reward::Accuracy;
        assert_eq!(
            r.score(&sample("so \\boxed{\\frac{1}{3}}", Some("\\frac{1}{3}"))),
            Some(1.0)
        );
        assert_eq!(
            r.score(&sample("so \\boxed{\\frac{1}{2}}", Some("\\frac{1}{3}"))),
            Some(0.0)
        );
        assert_eq!(
            r.score(&sample("The answer is 1,234.", Some("1234"))),
            Some(1.0)
        );
        // Worked solutions as the gold: MATH's boxed answer, GSM8K's `#### answer`.
        assert_eq!(
            r.score(&sample("= 72", Some("48 + 24 = \\boxed{72}"))),
            Some(1.0)
        );
        assert_eq!(
            r.score(&sample("so 72", Some("48 + 24 = 72\n#### 72"))),
            Some(1.0)
        );
        assert_eq!(r.score(&sample("42", None)), None);
        // Only the answer after the reasoning counts.
        let c = "<think>maybe 5</think> The answer is 7";
        assert_eq!(r.score(&sample(c, Some("7"))), Some(1.0));
        assert_eq!(
            Reward::ReasoningAccuracy.score(&sample("7", Some("7"))),
            Some(0.0)
        );
    }

    #[test]
    fn think_format_as_trl_with_a_prefilled_tag() {
        let f = Reward::ThinkFormat;
        assert_eq!(
            f.score(&sample("<think>\nhmm\n</think>\n4", None)),
            Some(1.0)
        );
        assert_eq!(
            f.score(&sample("<think>a<think>b</think>4", None)),
            Some(0.0)
        );
        assert_eq!(f.score(&sample("4", None)), Some(0.0));
        // R1-Distill's template opens <think> in the prompt: the completion starts inside it.
        let mut s = sample("hmm\n</think>\n4", None);
        assert_eq!(f.score(&s), Some(0.0));
        s.prompt_opens_think = true;
        assert_eq!(f.score(&s), Some(1.0));
        assert_eq!(Reward::TagCount.score(&s), Some(1.0));
        assert_eq!(
            Reward::TagCount.score(&sample("<think>x", None)),
            Some(0.25)
        );
    }

    #[test]
    fn soft_overlong_follows_dapo() {
        // TRL's docstring: max 100, cache 20, 90 tokens -> -0.5.
        assert_eq!(soft_overlong(90, 100, 20), -0.5);
        assert_eq!(soft_overlong(80, 100, 20), 0.0);
        assert_eq!(soft_overlong(101, 100, 20), -1.0);
        let r = Reward::parse("get_soft_overlong_punishment:100:20", 64).unwrap();
        assert_eq!(
            r,
            Reward::SoftOverlong {
                max: 100,
                cache: 20
            }
        );
        assert!(Reward::parse("get_soft_overlong_punishment:10:20", 64).is_err());
        assert!(Reward::parse("nope", 64)
            .unwrap_err()
            .contains("unknown reward"));
    }

    #[test]
    fn a_set_sums_weighted_rewards_and_skips_what_cannot_score() {
        let set = RewardSet::new(
            &["accuracy_reward".into(), "think_format_reward".into()],
            Some(&[1.0, 0.5]),
            128,
        )
        .unwrap();
        let s = set.score(&sample("<think>x</think>\\boxed{3}", Some("3")));
        assert_eq!(s.total, 1.5);
        let s = set.score(&sample("<think>x</think>\\boxed{3}", None));
        assert_eq!(s.per_func, [None, Some(1.0)]);
        assert_eq!(s.total, 0.5);
        assert!(RewardSet::new(&["accuracy_reward".into()], Some(&[1.0, 2.0]), 8).is_err());
        assert!(
            Reward::Repetition
                .score(&sample("a b c a b c a b c a b c", None))
                .unwrap()
                < -0.5
        );
    }
}
