//! Splits a reasoning model's streamed output into its chain of thought (`<think>` ..
//! `</think>`) and the visible answer, as DeepSeek's API (`reasoning_content` / `content`)
//! and vLLM's `deepseek_r1` reasoning parser do.
//!
//! Design decision: the splitter works on *text*, not token ids, and is a small state machine
//! that holds back only what could still be the start of a tag. A tag may therefore arrive
//! split across any number of chunks at any character, and the concatenated deltas of a
//! stream always equal what [`split`] returns for the whole text.
//!
//! The rules, in order:
//!
//! 1. At the very start of the output, optional whitespace followed by `<think>` is removed
//!    and opens the reasoning block (if the chat template already opened it, it is simply
//!    swallowed). `<think>` anywhere later is ordinary text.
//! 2. Whether reasoning is open at the start is the caller's knowledge: R1-Distill chat
//!    templates end the prompt with `"<think>\n"`, so the model's output starts inside the
//!    block (`start_in_reasoning = true`). When reasoning is not open and the output does not
//!    start with `<think>`, everything is content (a later `</think>` included).
//! 3. The first `</think>` closes the block; the newlines that follow it are dropped, so
//!    `"</think>\n\nThe answer"` gives the content `"The answer"` (DeepSeek's API does the
//!    same). Everything after it is content, further tags included.
//! 4. A block never closed is all reasoning (the model ran out of tokens while thinking).
//! 5. Text inside the block is kept byte for byte, including a newline right after
//!    `<think>` or right before `</think>`: vLLM's parser strips neither, and the caller
//!    may trim for display without losing anything.
#![deny(missing_docs)]

/// The tag that opens a reasoning block in DeepSeek-R1-family models.
pub const THINK_OPEN: &str = "<think>";
/// The tag that closes a reasoning block in DeepSeek-R1-family models.
pub const THINK_CLOSE: &str = "</think>";

/// Text produced by one [`ReasoningSplitter::push`] or [`ReasoningSplitter::finish`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delta {
    /// New chain-of-thought text (DeepSeek's `reasoning_content`).
    pub reasoning: String,
    /// New answer text (`content`).
    pub content: String,
}

impl Delta {
    /// Appends `other` after this delta.
    pub fn append(&mut self, other: Delta) {
        self.reasoning.push_str(&other.reasoning);
        self.content.push_str(&other.content);
    }

    /// Whether the delta carries no text at all.
    pub fn is_empty(&self) -> bool {
        self.reasoning.is_empty() && self.content.is_empty()
    }
}

/// Where the splitter is in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Only whitespace and maybe part of the open tag seen so far: undecided.
    Start,
    /// Inside the reasoning block.
    Reasoning,
    /// Just after the close tag: newlines are dropped until other text arrives.
    AfterClose,
    /// In the answer; nothing is held back any more.
    Content,
}

/// Streaming splitter of reasoning and content; see the [crate docs](crate) for the rules.
///
/// ```
/// use seek_reasoning::ReasoningSplitter;
///
/// let mut splitter = ReasoningSplitter::new(true);
/// let mut reasoning = String::new();
/// let mut content = String::new();
/// for chunk in ["Okay, 2+2", " is 4.\n</th", "ink>\n\nIt is ", "4."] {
///     let delta = splitter.push(chunk);
///     reasoning += &delta.reasoning;
///     content += &delta.content;
/// }
/// let delta = splitter.finish();
/// reasoning += &delta.reasoning;
/// content += &delta.content;
/// assert_eq!(reasoning, "Okay, 2+2 is 4.\n");
/// assert_eq!(content, "It is 4.");
/// ```
#[derive(Debug, Clone)]
pub struct ReasoningSplitter {
    open: String,
    close: String,
    start_in_reasoning: bool,
    state: State,
    /// Text received but not yet emitted: in `Start`, whitespace and a partial open tag; in
    /// `Reasoning`, a partial close tag. Always empty in the other states.
    held: String,
    closed: bool,
}

impl ReasoningSplitter {
    /// A splitter for `<think>` / `</think>`. `start_in_reasoning` is true when the prompt
    /// already opened the block (R1-Distill templates end the prompt with `"<think>\n"`).
    pub fn new(start_in_reasoning: bool) -> Self {
        Self::with_tags(THINK_OPEN, THINK_CLOSE, start_in_reasoning)
    }

    /// A splitter for other tags. An empty `open` never matches; an empty `close` never
    /// matches, so the block then runs to the end of the output.
    pub fn with_tags(open: &str, close: &str, start_in_reasoning: bool) -> Self {
        Self {
            open: open.to_owned(),
            close: close.to_owned(),
            start_in_reasoning,
            state: State::Start,
            held: String::new(),
            closed: false,
        }
    }

    /// Feeds the next chunk of output text and returns what can be emitted now. Text that
    /// might still turn out to be (part of) a tag is held back until it is decided.
    pub fn push(&mut self, text: &str) -> Delta {
        let mut delta = Delta::default();
        self.feed(text, &mut delta);
        delta
    }

    /// Ends the stream: emits the held-back text. A partial tag at the end is plain text of
    /// the section it is in; a block never closed stays reasoning.
    pub fn finish(&mut self) -> Delta {
        let mut delta = Delta::default();
        if self.state == State::Start {
            // The output ended before the open tag could be decided: it was not there.
            let held = std::mem::take(&mut self.held);
            self.state = self.fallback_state();
            self.feed(&held, &mut delta);
        }
        if self.state == State::Reasoning {
            delta.reasoning.push_str(&self.held);
        } else {
            // Only `Reasoning` (and `Start`, handled above) ever hold text back.
            delta.content.push_str(&self.held);
        }
        self.held.clear();
        delta
    }

    /// Whether text pushed now would be reasoning. Before the start of the output is
    /// decided this is `start_in_reasoning`.
    pub fn in_reasoning(&self) -> bool {
        match self.state {
            State::Start => self.start_in_reasoning,
            State::Reasoning => true,
            State::AfterClose | State::Content => false,
        }
    }

    /// Whether the close tag has been seen.
    pub fn reasoning_closed(&self) -> bool {
        self.closed
    }

    /// The state taken when the output turns out not to start with the open tag.
    fn fallback_state(&self) -> State {
        if self.start_in_reasoning {
            State::Reasoning
        } else {
            State::Content
        }
    }

    /// Runs `text` through the state machine, appending what it emits to `delta`.
    fn feed(&mut self, text: &str, delta: &mut Delta) {
        let mut rest = text;
        // Each pass either consumes all of `rest` or moves to a later state, so this ends.
        while !rest.is_empty() {
            match self.state {
                State::Start => {
                    self.held.push_str(rest);
                    rest = "";
                    let space = self.held.len() - self.held.trim_start().len();
                    let trimmed = &self.held[space..];
                    if !self.open.is_empty() && trimmed.starts_with(&self.open) {
                        let tail = self.held.split_off(space + self.open.len());
                        self.held.clear();
                        self.state = State::Reasoning;
                        self.feed(&tail, delta);
                    } else if self.open.is_empty() || !self.open.starts_with(trimmed) {
                        let held = std::mem::take(&mut self.held);
                        self.state = self.fallback_state();
                        self.feed(&held, delta);
                    }
                    // Otherwise `held` is whitespace and a proper prefix of the open tag.
                }
                State::Reasoning => {
                    self.held.push_str(rest);
                    rest = "";
                    if let Some(at) = find_nonempty(&self.held, &self.close) {
                        delta.reasoning.push_str(&self.held[..at]);
                        let tail = self.held.split_off(at + self.close.len());
                        self.held.clear();
                        self.closed = true;
                        self.state = State::AfterClose;
                        self.feed(&tail, delta);
                    } else {
                        let keep = partial_suffix_start(&self.held, &self.close);
                        delta.reasoning.push_str(&self.held[..keep]);
                        self.held.drain(..keep);
                    }
                }
                State::AfterClose => {
                    rest = trim_leading_newlines(rest);
                    if !rest.is_empty() {
                        self.state = State::Content;
                    }
                }
                State::Content => {
                    delta.content.push_str(rest);
                    rest = "";
                }
            }
        }
    }
}

/// Splits a whole output at once. Returns `(reasoning, content)`; `reasoning` is `None` when
/// no reasoning block was open (`start_in_reasoning` false and no leading `<think>`).
/// Agrees with the streaming [`ReasoningSplitter`] fed the same text in any chunks.
///
/// ```
/// let (reasoning, content) = seek_reasoning::split("<think>\nHmm.</think>\n\n42", false);
/// assert_eq!(reasoning.as_deref(), Some("\nHmm."));
/// assert_eq!(content, "42");
/// ```
pub fn split(text: &str, start_in_reasoning: bool) -> (Option<String>, String) {
    let (opened, body) = match text.trim_start().strip_prefix(THINK_OPEN) {
        Some(after) => (true, after),
        None => (start_in_reasoning, text),
    };
    if !opened {
        return (None, text.to_owned());
    }
    match body.split_once(THINK_CLOSE) {
        Some((reasoning, content)) => (
            Some(reasoning.to_owned()),
            trim_leading_newlines(content).to_owned(),
        ),
        None => (Some(body.to_owned()), String::new()),
    }
}

/// `haystack.find(needle)`, except that an empty needle never matches.
fn find_nonempty(haystack: &str, needle: &str) -> Option<usize> {
    if needle.is_empty() {
        None
    } else {
        haystack.find(needle)
    }
}

/// Start of the longest suffix of `text` that is a proper, non-empty prefix of `tag`, or
/// `text.len()` when there is none. Always a char boundary of `text`.
fn partial_suffix_start(text: &str, tag: &str) -> usize {
    let earliest = text.len().saturating_sub(tag.len().saturating_sub(1));
    (earliest..text.len())
        .find(|&i| text.is_char_boundary(i) && tag.starts_with(&text[i..]))
        .unwrap_or(text.len())
}

/// `text` without its leading line breaks (`\n`, and `\r` of CRLF).
fn trim_leading_newlines(text: &str) -> &str {
    text.trim_start_matches(['\n', '\r'])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` to a fresh splitter and returns the concatenated output plus the final
    /// `(in_reasoning, reasoning_closed)`.
    fn stream<'a>(
        chunks: impl IntoIterator<Item = &'a str>,
        start_in_reasoning: bool,
    ) -> (String, String, bool, bool) {
        let mut splitter = ReasoningSplitter::new(start_in_reasoning);
        let (mut reasoning, mut content) = (String::new(), String::new());
        for chunk in chunks {
            let delta = splitter.push(chunk);
            reasoning += &delta.reasoning;
            content += &delta.content;
        }
        let delta = splitter.finish();
        reasoning += &delta.reasoning;
        content += &delta.content;
        (
            reasoning,
            content,
            splitter.in_reasoning(),
            splitter.reasoning_closed(),
        )
    }

    /// Checks that streaming `chunks` agrees with `split` on their concatenation.
    fn assert_agrees(chunks: &[&str], start_in_reasoning: bool) {
        let whole: String = chunks.concat();
        let (want_reasoning, want_content) = split(&whole, start_in_reasoning);
        let (reasoning, content, in_reasoning, closed) =
            stream(chunks.iter().copied(), start_in_reasoning);
        let opened = in_reasoning || closed;
        assert_eq!(
            (
                want_reasoning.is_some(),
                want_reasoning.unwrap_or_default(),
                want_content
            ),
            (opened, reasoning, content),
            "chunks {chunks:?}, start_in_reasoning {start_in_reasoning}"
        );
    }

    const CASES: &[&str] = &[
        "",
        "<think>",
        "</think>",
        "  \n<think>\nLet me see.\n</think>\n\nThe answer is 4.",
        "<think></think>answer",
        "<think>never closed <th",
        "never closed </thi",
        "Hello <think>world</think> again",
        "Answer first.</think>\n\nthen this",
        "<thin",
        "< think>x</think>y",
        "<<think>x</think>y",
        "<think>a</think></think>\n\n<think>b</think>",
        "</think>\r\n\r\nCRLF answer\n",
        "</think>\n\n\n",
        "\n\n",
        "<think>数学：2×2=4 🙂</think>\n\n答案是 4。",
        "\u{3000}<think>wide space</think>é",
        "   plain answer with spaces",
        "<think>x</t</think>y</think>z",
    ];

    #[test]
    fn distill_template_stream() {
        let chunks = [
            "Okay",
            ", so",
            " 2+2.\n</",
            "think",
            ">\n",
            "\nThe",
            " answer is 4.",
        ];
        let (reasoning, content, in_reasoning, closed) = stream(chunks, true);
        assert_eq!(reasoning, "Okay, so 2+2.\n");
        assert_eq!(content, "The answer is 4.");
        assert!(!in_reasoning && closed);
    }

    #[test]
    fn model_opens_its_own_block() {
        assert_eq!(
            split(" \n<think>\nHmm.\n</think>\n\nYes.", false),
            (Some("\nHmm.\n".into()), "Yes.".into())
        );
        // Already open: a repeated open tag at the start is swallowed.
        assert_eq!(
            split("<think>Hmm.</think>Yes.", true),
            (Some("Hmm.".into()), "Yes.".into())
        );
    }

    #[test]
    fn open_tag_only_counts_at_the_start() {
        assert_eq!(
            split("Hi <think>x</think>", false),
            (None, "Hi <think>x</think>".into())
        );
        assert_eq!(
            split("x</think><think>y", true),
            (Some("x".into()), "<think>y".into())
        );
        // Not opened: a close tag is plain text.
        assert_eq!(split("a</think>b", false), (None, "a</think>b".into()));
    }

    #[test]
    fn unclosed_block_is_all_reasoning() {
        assert_eq!(
            split("<think>still going <", false),
            (Some("still going <".into()), "".into())
        );
        let (reasoning, content, in_reasoning, closed) = stream(["still </th", "in"], true);
        assert_eq!((reasoning.as_str(), content.as_str()), ("still </thin", ""));
        assert!(in_reasoning && !closed);
    }

    #[test]
    fn holds_back_only_a_possible_tag() {
        let mut splitter = ReasoningSplitter::new(true);
        let delta = splitter.push("abc </thi");
        assert_eq!(delta.reasoning, "abc ");
        let delta = splitter.push("x");
        assert_eq!(delta.reasoning, "</thix");
        let delta = splitter.push("<");
        assert!(delta.is_empty());
        let delta = splitter.push("/think>\n");
        assert!(delta.is_empty());
        assert!(splitter.reasoning_closed() && !splitter.in_reasoning());
        assert_eq!(splitter.push("\nok").content, "ok");
        assert_eq!(splitter.push("\n\n").content, "\n\n");
        assert!(splitter.finish().is_empty());
    }

    #[test]
    fn undecided_start_is_held_until_decided() {
        let mut splitter = ReasoningSplitter::new(false);
        assert!(splitter.push("\n <th").is_empty());
        assert_eq!(splitter.push("e").content, "\n <the");
        let mut splitter = ReasoningSplitter::new(false);
        assert!(splitter.push("  ").is_empty());
        assert_eq!(splitter.finish().content, "  ");
        let mut splitter = ReasoningSplitter::new(true);
        assert!(splitter.push("<think").is_empty());
        assert_eq!(splitter.finish().reasoning, "<think");
    }

    #[test]
    fn custom_and_empty_tags() {
        let mut splitter = ReasoningSplitter::with_tags("<seed:think>", "</seed:think>", false);
        let mut delta = splitter.push("<seed:think>r</seed:");
        assert_eq!(delta.reasoning, "r");
        delta = splitter.push("think>c");
        assert_eq!(delta.content, "c");

        let mut splitter = ReasoningSplitter::with_tags("", "", true);
        assert_eq!(splitter.push("a").reasoning, "a");
        assert_eq!(splitter.finish(), Delta::default());
        assert!(!splitter.reasoning_closed());
    }

    #[test]
    fn every_char_boundary_agrees_with_split() {
        for &start in &[false, true] {
            for case in CASES {
                assert_agrees(&[case], start);
                // Two chunks, cut at every char boundary: every byte boundary a &str allows.
                for (i, _) in case.char_indices().skip(1) {
                    assert_agrees(&[&case[..i], &case[i..]], start);
                }
                // Three chunks, cut at every pair of char boundaries.
                let cuts: Vec<usize> = case.char_indices().map(|(i, _)| i).skip(1).collect();
                for (n, &i) in cuts.iter().enumerate() {
                    for &j in &cuts[n..] {
                        assert_agrees(&[&case[..i], &case[i..j], &case[j..]], start);
                    }
                }
                // One char per chunk, with empty chunks mixed in.
                let mut chars: Vec<&str> = Vec::new();
                for (i, c) in case.char_indices() {
                    chars.push(&case[i..i + c.len_utf8()]);
                    chars.push("");
                }
                assert_agrees(&chars, start);
            }
        }
    }

    #[test]
    fn random_chunkings_agree_with_split() {
        // A tiny xorshift keeps the crate dependency-free and the test reproducible.
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let pieces = [
            "<think>", "</think>", "<", "/", "think", ">", "\n", " ", "a", "é", "🙂",
        ];
        for _ in 0..2_000 {
            let len = (next() % 12) as usize;
            let text: String = (0..len)
                .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                .collect();
            let mut chunks = Vec::new();
            let mut rest = text.as_str();
            while !rest.is_empty() {
                let mut cut = (next() % (rest.len() as u64 + 1)) as usize;
                while !rest.is_char_boundary(cut) {
                    cut += 1;
                }
                let (head, tail) = rest.split_at(cut);
                chunks.push(head);
                rest = tail;
            }
            assert_agrees(&chunks, next() % 2 == 0);
        }
    }
}
