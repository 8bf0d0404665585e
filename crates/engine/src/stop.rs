//! Stop strings over streamed text (OpenAI's `stop`): the text before the first stop string
//! is emitted, the stop string itself and everything after it are not.
//!
//! Design decision: when several stop strings match, the one that is *complete first* in the
//! stream wins (the earliest end; on equal ends, the longest). That is the only rule that
//! does not depend on how the text was chunked: `"abcd"` with stops `["abcd", "bc"]` stops at
//! `"bc"` whether it arrives whole or a character at a time. (vLLM instead takes the first
//! stop in list order that occurs in the new text, so its result depends on the chunking.)

/// What [`StopMatcher::push`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// No stop string yet: `emit` can no longer be part of one and is safe to send.
    Continue {
        /// Text to send on.
        emit: String,
    },
    /// A stop string matched: send `emit` (the text before it) and finish the request.
    Stopped {
        /// The last text to send: everything before the stop string.
        emit: String,
        /// The stop string that matched.
        matched: String,
    },
}

/// Finds stop strings in text that arrives in chunks, holding back only text that could
/// still be the start of one.
///
/// ```
/// use seek_engine::stop::{StopMatcher, StopOutcome};
///
/// let mut matcher = StopMatcher::new(vec!["\nUser:".into()]);
/// assert_eq!(matcher.push("Hi!\nUs"), StopOutcome::Continue { emit: "Hi!".into() });
/// assert_eq!(
///     matcher.push("er: more"),
///     StopOutcome::Stopped { emit: String::new(), matched: "\nUser:".into() }
/// );
/// ```
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text not emitted yet: the longest suffix of the stream that is a proper prefix of a
    /// stop string.
    held: String,
    /// The stop string that matched, once one has.
    matched: Option<String>,
}

impl StopMatcher {
    /// A matcher for `stops`; empty strings are ignored (they would match everywhere).
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        Self {
            stops,
            held: String::new(),
            matched: None,
        }
    }

    /// Feeds the next chunk of text. After a stop, every further call returns `Stopped`
    /// again with nothing to emit.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        if let Some(matched) = &self.matched {
            return StopOutcome::Stopped {
                emit: String::new(),
                matched: matched.clone(),
            };
        }
        if self.stops.is_empty() {
            return StopOutcome::Continue {
                emit: text.to_owned(),
            };
        }
        self.held.push_str(text);

        // The held text cannot contain a whole stop string (it would have stopped), so any
        // match ends in the new text; the earliest end is the first one the stream completes.
        let first = self
            .stops
            .iter()
            .filter_map(|stop| {
                self.held
                    .find(stop.as_str())
                    .map(|at| (at + stop.len(), at, stop))
            })
            .min_by_key(|&(end, start, _)| (end, start));
        if let Some((_, start, stop)) = first {
            let matched = stop.clone();
            self.held.truncate(start);
            let emit = std::mem::take(&mut self.held);
            self.matched = Some(matched.clone());
            return StopOutcome::Stopped { emit, matched };
        }

        let keep = self.partial_stop_start();
        let held = self.held.split_off(keep);
        StopOutcome::Continue {
            emit: std::mem::replace(&mut self.held, held),
        }
    }

    /// Ends the stream: returns the held-back text (a stop string that never completed is
    /// ordinary text). Empty after a stop.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// The stop string that matched, if one has.
    pub fn matched(&self) -> Option<&str> {
        self.matched.as_deref()
    }

    /// Start of the longest suffix of `held` that is a proper prefix of some stop string, or
    /// `held.len()` when there is none. Always a char boundary.
    fn partial_stop_start(&self) -> usize {
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let earliest = self.held.len().saturating_sub(longest.saturating_sub(1));
        (earliest..self.held.len())
            .filter(|&i| self.held.is_char_boundary(i))
            .find(|&i| {
                self.stops
                    .iter()
                    .any(|stop| stop.starts_with(&self.held[i..]))
            })
            .unwrap_or(self.held.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(stops: &[&str]) -> StopMatcher {
        StopMatcher::new(stops.iter().map(|s| s.to_string()).collect())
    }

    /// Streams `chunks` and returns everything emitted plus the matched stop string.
    fn run(stops: &[&str], chunks: &[&str]) -> (String, Option<String>) {
        let mut m = matcher(stops);
        let mut out = String::new();
        for chunk in chunks {
            match m.push(chunk) {
                StopOutcome::Continue { emit } => out += &emit,
                StopOutcome::Stopped { emit, matched } => {
                    out += &emit;
                    return (out, Some(matched));
                }
            }
        }
        out += &m.finish();
        (out, None)
    }

    fn stopped(emit: &str, matched: &str) -> StopOutcome {
        StopOutcome::Stopped {
            emit: emit.into(),
            matched: matched.into(),
        }
    }

    fn cont(emit: &str) -> StopOutcome {
        StopOutcome::Continue { emit: emit.into() }
    }

    #[test]
    fn no_stops_passes_text_through() {
        let mut m = matcher(&["", ""]);
        assert_eq!(m.push("a</s>"), cont("a</s>"));
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn stop_in_one_chunk_is_not_emitted() {
        let mut m = matcher(&["STOP"]);
        assert_eq!(m.push("hello STOP world"), stopped("hello ", "STOP"));
        assert_eq!(m.push("more"), stopped("", "STOP"));
        assert_eq!(m.finish(), "");
        assert_eq!(m.matched(), Some("STOP"));
    }

    #[test]
    fn stop_split_across_pushes() {
        let mut m = matcher(&["</answer>"]);
        assert_eq!(m.push("42 </"), cont("42 "));
        assert_eq!(m.push("ans"), cont(""));
        assert_eq!(m.push("wer"), cont(""));
        assert_eq!(m.push(">tail"), stopped("", "</answer>"));
    }

    #[test]
    fn false_start_is_released() {
        let mut m = matcher(&["abc"]);
        assert_eq!(m.push("xab"), cont("x"));
        assert_eq!(m.push("d"), cont("abd"));
        // "aab": the first "a" can no longer start "abc", the second still can.
        assert_eq!(m.push("aab"), cont("a"));
        assert_eq!(m.finish(), "ab");
    }

    #[test]
    fn overlapping_candidates() {
        // Self-overlapping stop: "aab" inside "aaab".
        assert_eq!(
            run(&["aab"], &["a", "a", "a", "b", "c"]),
            ("a".into(), Some("aab".into()))
        );
        // The stop completed first wins, whatever the chunking.
        for chunks in [&["abcd"][..], &["a", "b", "c", "d"], &["ab", "cd"]] {
            assert_eq!(
                run(&["abcd", "bc"], chunks),
                ("a".into(), Some("bc".into()))
            );
        }
        // Equal ends: the longer (earlier-starting) stop wins.
        assert_eq!(
            run(&["c", "abc"], &["xabc"]),
            ("x".into(), Some("abc".into()))
        );
        assert_eq!(
            run(&["c", "abc"], &["xab", "c"]),
            ("x".into(), Some("abc".into()))
        );
        // One stop a prefix of another: the shorter one completes first.
        assert_eq!(
            run(&["abc", "ab"], &["xa", "bc"]),
            ("x".into(), Some("ab".into()))
        );
    }

    #[test]
    fn multibyte_text_and_stops() {
        assert_eq!(
            run(&["。\n"], &["答案", "是 4", "。", "\n后面"]),
            ("答案是 4".into(), Some("。\n".into()))
        );
        // A stop that shares its first byte with emitted chars must not cut them.
        let mut m = matcher(&["é!"]);
        assert_eq!(m.push("café"), cont("caf"));
        assert_eq!(m.push("è"), cont("éè"));
        assert_eq!(m.push("é"), cont(""));
        assert_eq!(m.push("!"), stopped("", "é!"));
        // Emoji and a stop made of one.
        assert_eq!(
            run(&["🛑"], &["go 🙂 ", "🛑 no"]),
            ("go 🙂 ".into(), Some("🛑".into()))
        );
    }

    #[test]
    fn every_chunking_agrees_with_whole_text() {
        let text = "Q: 2×2?\nA: 4 ✓\nQ: next</s>tail";
        let stops = ["\nQ: n", "</s>", "✓\nQ", "zz"];
        let whole = run(&stops, &[text]);
        assert_eq!(whole, ("Q: 2×2?\nA: 4 ".into(), Some("✓\nQ".into())));
        let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).skip(1).collect();
        for (n, &i) in bounds.iter().enumerate() {
            for &j in &bounds[n..] {
                assert_eq!(
                    run(&stops, &[&text[..i], &text[i..j], &text[j..]]),
                    whole,
                    "{i} {j}"
                );
            }
        }
    }

    #[test]
    fn unfinished_stop_is_flushed_at_the_end() {
        assert_eq!(run(&["</s>"], &["end </", "s"]), ("end </s".into(), None));
    }
}
