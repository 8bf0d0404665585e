//! Turns one row of logits into the next token, with vLLM's / Hugging Face's processing order.
//!
//! Design decision: a [`Sampler`] belongs to one request. It owns that request's seeded RNG
//! (same seed and logits give the same tokens, whatever else the engine is running) and the
//! scratch buffers, so that a decode step allocates nothing once the buffers have grown.
//!
//! Order per step: repetition penalty (prompt and output tokens), frequency and presence
//! penalties (output tokens), then either argmax (greedy) or temperature, top-k, top-p,
//! min-p and a draw from the softmax of what is left.
//!
//! Non-finite logits never panic: NaN counts as `-inf`; `+inf` tokens share all the
//! probability; a row with nothing finite left falls back to the argmax of the row as given
//! (NaN ignored), or token 0.

use std::cmp::Ordering;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use seek_types::{SamplingParams, TokenId};

/// How many candidates top-p looks at first; doubled until the nucleus fits. Nuclei are
/// usually a few dozen tokens, so this avoids sorting the whole vocabulary.
const TOP_P_FIRST_WINDOW: usize = 64;

/// A token still in the running, with its (processed) logit and unnormalised probability.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    id: TokenId,
    logit: f32,
    weight: f32,
}

/// Most likely first; equal logits by lowest id, so every choice is deterministic.
fn by_rank(a: &Candidate, b: &Candidate) -> Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// Samples tokens for one request.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// One counter per vocabulary entry; all zero between calls.
    counts: Vec<u32>,
    /// Tokens still in the running; reused across calls.
    candidates: Vec<Candidate>,
}

impl Sampler {
    /// A sampler with an RNG seeded from `params.seed`, or from OS entropy when it is `None`.
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            params,
            rng,
            counts: Vec::new(),
            candidates: Vec::new(),
        }
    }

    /// The settings this sampler applies.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits`, one row over the vocabulary (modified in place).
    /// `prompt` holds the prompt's ids and `output` the ids generated so far; ids outside the
    /// row are ignored. An empty row gives token 0.
    pub fn sample(
        &mut self,
        logits: &mut [f32],
        prompt: &[TokenId],
        output: &[TokenId],
    ) -> TokenId {
        // One pass: NaN becomes -inf, and the argmax of the row as given is the last resort.
        let fallback = sanitize_and_argmax(logits).unwrap_or(0);

        self.apply_penalties(logits, prompt, output);

        if self.params.is_greedy() {
            return sanitize_and_argmax(logits).unwrap_or(fallback);
        }

        let temperature = self.params.temperature;
        if temperature != 1.0 {
            logits.iter_mut().for_each(|l| *l /= temperature);
        }
        self.collect_candidates(logits);
        if self.candidates.is_empty() {
            return fallback;
        }
        self.apply_top_k();
        // Weights are exp(logit - max), so the most likely token has weight 1.
        let max = self
            .candidates
            .iter()
            .map(|c| c.logit)
            .fold(f32::NEG_INFINITY, f32::max);
        for c in &mut self.candidates {
            c.weight = (c.logit - max).exp();
        }
        self.apply_top_p();
        self.apply_min_p();
        self.draw().unwrap_or(fallback)
    }

    /// Repetition penalty over prompt and output; frequency and presence penalties over
    /// the output (OpenAI: `logit -= count * frequency + (count > 0) * presence`).
    fn apply_penalties(&mut self, logits: &mut [f32], prompt: &[TokenId], output: &[TokenId]) {
        let SamplingParams {
            repetition_penalty,
            frequency_penalty,
            presence_penalty,
            ..
        } = self.params;
        // A penalty that is not positive and finite would flip signs or make infinities:
        // treat it as off (request validation should have refused it already).
        let repetition =
            repetition_penalty != 1.0 && repetition_penalty.is_finite() && repetition_penalty > 0.0;
        let additive = frequency_penalty != 0.0 || presence_penalty != 0.0;
        if !repetition && !additive {
            return;
        }
        self.counts.resize(logits.len(), 0);
        let vocab = logits.len();
        let in_row = move |id: &&TokenId| (**id as usize) < vocab;

        if repetition {
            // Mark each seen token once, penalise it on first sight, then clear the marks.
            for &id in prompt.iter().chain(output).filter(in_row) {
                let mark = &mut self.counts[id as usize];
                if *mark == 0 {
                    *mark = 1;
                    let logit = &mut logits[id as usize];
                    if *logit > 0.0 {
                        *logit /= repetition_penalty;
                    } else {
                        *logit *= repetition_penalty;
                    }
                }
            }
            for &id in prompt.iter().chain(output).filter(in_row) {
                self.counts[id as usize] = 0;
            }
        }

        if additive {
            for &id in output.iter().filter(in_row) {
                self.counts[id as usize] += 1;
            }
            // The first visit to a token applies its penalty and clears its count.
            for &id in output.iter().filter(in_row) {
                let count = std::mem::take(&mut self.counts[id as usize]);
                if count > 0 {
                    logits[id as usize] -= count as f32 * frequency_penalty + presence_penalty;
                }
            }
        }
    }

    /// Fills `candidates` with every token of non-zero probability. When some logits are
    /// `+inf`, those tokens alone remain, with equal logits.
    fn collect_candidates(&mut self, logits: &[f32]) {
        self.candidates.clear();
        let any_inf = logits.contains(&f32::INFINITY);
        for (id, &logit) in (0..).zip(logits) {
            // NaN can come back from the penalties or temperature (inf - inf, inf / inf).
            let keep = if any_inf {
                logit == f32::INFINITY
            } else {
                logit > f32::NEG_INFINITY
            };
            if keep {
                let logit = if any_inf { 0.0 } else { logit };
                self.candidates.push(Candidate {
                    id,
                    logit,
                    weight: 0.0,
                });
            }
        }
    }

    /// Keeps the `top_k` highest logits (ties: lowest ids); `0` keeps all.
    fn apply_top_k(&mut self) {
        let k = self.params.top_k;
        if k > 0 && k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(k - 1, by_rank);
            self.candidates.truncate(k);
        }
    }

    /// Keeps the smallest set of most likely tokens whose probability reaches `top_p`
    /// (always at least the most likely one). Sorts only as much as needed: a window of
    /// the best candidates is selected and sorted, and doubled until the nucleus fits.
    fn apply_top_p(&mut self) {
        let top_p = self.params.top_p;
        // A NaN top-p is off, like 1.0.
        if top_p.is_nan() || top_p >= 1.0 || self.candidates.len() <= 1 {
            return;
        }
        let total: f64 = self.candidates.iter().map(|c| f64::from(c.weight)).sum();
        let target = f64::from(top_p) * total;
        let len = self.candidates.len();
        let mut sorted = 0;
        let mut window = TOP_P_FIRST_WINDOW.min(len);
        let mut mass = 0.0_f64;
        loop {
            // candidates[..sorted] are the best `sorted` ones, in order; extend to `window`.
            let rest = &mut self.candidates[sorted..];
            if window < len {
                rest.select_nth_unstable_by(window - sorted - 1, by_rank);
            }
            rest[..window - sorted].sort_unstable_by(by_rank);
            for i in sorted..window {
                mass += f64::from(self.candidates[i].weight);
                if mass >= target {
                    self.candidates.truncate(i + 1);
                    return;
                }
            }
            if window == len {
                // Rounding left the mass just short of the target: keep everything.
                return;
            }
            sorted = window;
            window = (window * 2).min(len);
        }
    }

    /// Drops tokens less likely than `min_p` times the most likely one.
    fn apply_min_p(&mut self) {
        let min_p = self.params.min_p;
        if min_p > 0.0 {
            // The most likely candidate has weight exactly 1 and always survives.
            self.candidates.retain(|c| c.weight >= min_p.min(1.0));
        }
    }

    /// Draws one candidate in proportion to its weight.
    fn draw(&mut self) -> Option<TokenId> {
        let total: f64 = self.candidates.iter().map(|c| f64::from(c.weight)).sum();
        let mut target = self.rng.random::<f64>() * total;
        let mut last = None;
        for c in &self.candidates {
            if c.weight > 0.0 {
                if target < f64::from(c.weight) {
                    return Some(c.id);
                }
                target -= f64::from(c.weight);
                last = Some(c.id);
            }
        }
        // Only reached through rounding at the very top of the range.
        last
    }
}

/// Replaces NaN with `-inf` and returns the first index of the largest value, or `None`
/// when every value is `-inf` (or the row is empty).
fn sanitize_and_argmax(logits: &mut [f32]) -> Option<TokenId> {
    let mut best: Option<(TokenId, f32)> = None;
    for (id, logit) in (0..).zip(logits.iter_mut()) {
        if logit.is_nan() {
            *logit = f32::NEG_INFINITY;
        }
        if *logit > best.map_or(f32::NEG_INFINITY, |(_, l)| l) {
            best = Some((id, *logit));
        }
    }
    best.map(|(id, _)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            seed: Some(7),
            ..SamplingParams::default()
        }
    }

    fn softmax(logits: &[f32]) -> Vec<f64> {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f64> = logits.iter().map(|&l| f64::from(l - max).exp()).collect();
        let total: f64 = exps.iter().sum();
        exps.iter().map(|e| e / total).collect()
    }

    /// Draws `n` tokens from fresh copies of `logits` and returns the frequency of each id.
    fn frequencies(sampler: &mut Sampler, logits: &[f32], n: usize) -> Vec<f64> {
        let mut counts = vec![0usize; logits.len()];
        let mut row = logits.to_vec();
        for _ in 0..n {
            row.copy_from_slice(logits);
            counts[sampler.sample(&mut row, &[], &[]) as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / n as f64).collect()
    }

    fn sequence(seed: u64, logits: &[f32], n: usize) -> Vec<TokenId> {
        let mut sampler = Sampler::new(SamplingParams {
            seed: Some(seed),
            ..params(1.0)
        });
        (0..n)
            .map(|_| sampler.sample(&mut logits.to_vec(), &[], &[]))
            .collect()
    }

    #[test]
    fn greedy_is_argmax_with_lowest_id_on_ties() {
        let mut sampler = Sampler::new(SamplingParams::greedy());
        assert_eq!(sampler.sample(&mut [0.1, 2.0, -1.0, 0.5], &[], &[]), 1);
        assert_eq!(sampler.sample(&mut [1.0, 3.0, 3.0, 3.0], &[], &[]), 1);
        assert_eq!(sampler.sample(&mut [f32::NAN, -5.0, f32::NAN], &[], &[]), 1);
    }

    #[test]
    fn same_seed_same_tokens_different_seed_different_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        assert_eq!(sequence(1, &logits, 200), sequence(1, &logits, 200));
        // 200 draws over ~50 plausible tokens: equal sequences would be a broken seed.
        assert_ne!(sequence(1, &logits, 200), sequence(2, &logits, 200));
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 * 0.05).collect();
        // The largest value, 100 * 0.05, first appears at i = 30 (30 * 37 = 10 * 101 + 100).
        let argmax = 30;
        assert!(logits[..30].iter().all(|&l| l < logits[30]));
        assert!(logits[30..].iter().all(|&l| l <= logits[30]));
        let mut greedy = Sampler::new(SamplingParams::greedy());
        assert_eq!(greedy.sample(&mut logits.clone(), &[], &[]), argmax);
        let mut top_k = Sampler::new(SamplingParams {
            top_k: 1,
            ..params(1.5)
        });
        let mut top_p = Sampler::new(SamplingParams {
            top_p: 1e-6,
            ..params(1.5)
        });
        for _ in 0..100 {
            assert_eq!(top_k.sample(&mut logits.clone(), &[], &[]), argmax);
            assert_eq!(top_p.sample(&mut logits.clone(), &[], &[]), argmax);
        }
    }

    #[test]
    fn top_k_keeps_only_the_k_best() {
        let logits = [0.0, 3.0, 1.0, 2.9, 2.8, -1.0];
        let mut sampler = Sampler::new(SamplingParams {
            top_k: 3,
            ..params(5.0)
        });
        let freq = frequencies(&mut sampler, &logits, 3000);
        assert!(freq[1] > 0.2 && freq[3] > 0.2 && freq[4] > 0.2, "{freq:?}");
        assert_eq!(freq[0] + freq[2] + freq[5], 0.0, "{freq:?}");
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // Probabilities 0.5, 0.3, 0.15, 0.05 (shuffled ids): top_p 0.75 keeps ids 2 and 0.
        let logits = [0.3_f32.ln(), 0.05_f32.ln(), 0.5_f32.ln(), 0.15_f32.ln()];
        let mut sampler = Sampler::new(SamplingParams {
            top_p: 0.75,
            ..params(1.0)
        });
        let freq = frequencies(&mut sampler, &logits, 5000);
        assert_eq!(freq[1] + freq[3], 0.0, "{freq:?}");
        assert!((freq[2] - 0.625).abs() < 0.03, "{freq:?}");
        // top_p 0.85 needs the third token too.
        let mut sampler = Sampler::new(SamplingParams {
            top_p: 0.85,
            ..params(1.0)
        });
        let freq = frequencies(&mut sampler, &logits, 5000);
        assert!(freq[3] > 0.1 && freq[1] == 0.0, "{freq:?}");
    }

    #[test]
    fn top_p_over_a_large_flat_vocabulary() {
        // 10_000 equal tokens: the nucleus (9_000) is far past the first window.
        let logits = vec![0.0_f32; 10_000];
        let mut sampler = Sampler::new(SamplingParams {
            top_p: 0.9,
            ..params(1.0)
        });
        let mut row = logits.clone();
        for _ in 0..300 {
            row.copy_from_slice(&logits);
            assert!(sampler.sample(&mut row, &[], &[]) < 9_000);
        }
    }

    #[test]
    fn min_p_filters_relative_to_the_top_token() {
        // Probabilities relative to the top: 1, 0.5, 0.2, 0.09.
        let logits = [0.0, 0.5_f32.ln(), 0.2_f32.ln(), 0.09_f32.ln()];
        let mut sampler = Sampler::new(SamplingParams {
            min_p: 0.1,
            ..params(1.0)
        });
        let freq = frequencies(&mut sampler, &logits, 5000);
        assert_eq!(freq[3], 0.0, "{freq:?}");
        assert!(freq[2] > 0.05, "{freq:?}");
        let mut sampler = Sampler::new(SamplingParams {
            min_p: 0.6,
            ..params(1.0)
        });
        assert!(frequencies(&mut sampler, &logits, 200)
            .iter()
            .skip(1)
            .all(|&f| f == 0.0));
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        let mut sampler = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy()
        });
        // Token 0 (seen in the prompt, twice) 3.0 -> 1.5 loses to token 1 (2.0, unseen).
        let mut logits = [3.0, 2.0, -1.0, 0.0];
        assert_eq!(sampler.sample(&mut logits, &[0, 0, 2, 99], &[3]), 1);
        assert_eq!(logits, [1.5, 2.0, -2.0, 0.0]);
    }

    #[test]
    fn frequency_and_presence_penalties_follow_openai() {
        let greedy = SamplingParams::greedy();
        let mut sampler = Sampler::new(SamplingParams {
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            ..greedy.clone()
        });
        // Token 0: 2.0 - 3*0.5 - 0.25 = 0.25; token 1: 1.0 - 0.5 - 0.25 = 0.25; token 2 is
        // only in the prompt, so it keeps 0.5 and wins.
        let mut logits = [2.0, 1.0, 0.5, 0.0];
        assert_eq!(sampler.sample(&mut logits, &[2, 2], &[0, 1, 0, 0]), 2);
        assert_eq!(logits, [0.25, 0.25, 0.5, 0.0]);
        // Buffers were cleared: the same call on a fresh row gives the same result.
        let mut again = [2.0, 1.0, 0.5, 0.0];
        sampler.sample(&mut again, &[2, 2], &[0, 1, 0, 0]);
        assert_eq!(again, logits);
        // Negative penalties encourage repetition.
        let mut sampler = Sampler::new(SamplingParams {
            presence_penalty: -2.0,
            ..greedy
        });
        assert_eq!(sampler.sample(&mut [1.0, 0.0], &[], &[1]), 1);
    }

    #[test]
    fn temperature_one_matches_softmax() {
        let logits = [1.0, 0.0, 2.0, -1.0, 0.5, 1.5, -3.0, 0.2];
        let want = softmax(&logits);
        let mut sampler = Sampler::new(params(1.0));
        let n = 20_000;
        let got = frequencies(&mut sampler, &logits, n);
        let max_diff = want
            .iter()
            .zip(&got)
            .map(|(w, g)| (w - g).abs())
            .fold(0.0, f64::max);
        // Pearson's chi-square, 7 degrees of freedom: p = 0.001 at 24.3.
        let chi2: f64 = want
            .iter()
            .zip(&got)
            .map(|(w, g)| n as f64 * (g - w).powi(2) / w)
            .sum();
        assert!(
            max_diff < 0.02 && chi2 < 24.3,
            "max diff {max_diff}, chi2 {chi2}\n{want:?}\n{got:?}"
        );
    }

    #[test]
    fn temperature_sharpens_as_expected() {
        // At T = 0.5 the distribution is softmax(2 * logits).
        let logits = [1.0, 0.0, 0.5];
        let want = softmax(&[2.0, 0.0, 1.0]);
        let got = frequencies(&mut Sampler::new(params(0.5)), &logits, 20_000);
        assert!(
            want.iter().zip(&got).all(|(w, g)| (w - g).abs() < 0.02),
            "{want:?} {got:?}"
        );
    }

    #[test]
    fn non_finite_logits_do_not_panic() {
        let mut sampler = Sampler::new(SamplingParams {
            top_k: 2,
            top_p: 0.5,
            ..params(0.7)
        });
        assert_eq!(sampler.sample(&mut [f32::NAN, 1.0, f32::NAN], &[], &[]), 1);
        assert_eq!(sampler.sample(&mut [f32::NAN; 3], &[], &[]), 0);
        assert_eq!(sampler.sample(&mut [f32::NEG_INFINITY; 3], &[], &[]), 0);
        assert_eq!(sampler.sample(&mut [], &[], &[]), 0);
        for _ in 0..50 {
            let token = sampler.sample(&mut [0.0, f32::INFINITY, 5.0, f32::INFINITY], &[], &[]);
            assert!(token == 1 || token == 3);
        }
        // Penalties that drive every logit to -inf fall back to the argmax as given.
        let mut sampler = Sampler::new(SamplingParams {
            presence_penalty: f32::INFINITY,
            ..params(1.0)
        });
        assert_eq!(sampler.sample(&mut [0.0, 2.0, 1.0], &[], &[0, 1, 2]), 1);
        let mut sampler = Sampler::new(SamplingParams {
            presence_penalty: f32::INFINITY,
            ..SamplingParams::greedy()
        });
        assert_eq!(
            sampler.sample(&mut [0.0, 2.0, f32::NAN], &[], &[0, 1, 2]),
            1
        );
        // Absurd settings are survivable too.
        let mut sampler = Sampler::new(SamplingParams {
            temperature: f32::NAN,
            top_p: f32::NAN,
            min_p: f32::NAN,
            repetition_penalty: 0.0,
            ..params(1.0)
        });
        assert_eq!(sampler.sample(&mut [0.0, 2.0], &[1, 7], &[u32::MAX]), 1);
    }
}
