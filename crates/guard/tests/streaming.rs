//! A stream's output and findings equal the whole text's, at every split point.

use seek_guard::{Channel, Finding, Policy, Pseudonyms};

const POLICY: &str = r#"
name = "stream-test"
[output]
overlap = 64

[[output.rails]]
type = "words"
action = "redact"
words = ["kill", "nerve agent"]

[[output.rails]]
type = "pii"
action = "redact"
mode = "mask"

[[output.rails]]
type = "secrets"
action = "redact"

[[output.rails]]
type = "injection"
action = "redact"
checks = ["invisible"]

[[output.rails]]
type = "words"
name = "stopper"
action = "block"
words = ["forbidden"]
apply_to = ["content"]
"#;

fn policy() -> Policy {
    Policy::from_toml(POLICY, "stream-test.toml").unwrap()
}

struct Run {
    text: String,
    blocked_by: Option<String>,
    findings: Vec<Vec<Finding>>,
}

fn run(policy: &Policy, channel: Channel, p: &Pseudonyms, chunks: &[&str]) -> Run {
    let mut g = policy.output_guard(channel, p);
    let mut text = String::new();
    let mut blocked_by = None;
    for c in chunks {
        let step = g.push(c);
        text.push_str(&step.emit);
        blocked_by = step.blocked_by;
    }
    let step = g.finish();
    text.push_str(&step.emit);
    blocked_by = blocked_by.or(step.blocked_by);
    Run {
        text,
        blocked_by,
        findings: g.results().into_iter().map(|r| r.findings).collect(),
    }
}

fn boundaries(s: &str) -> Vec<usize> {
    (0..=s.len()).filter(|&i| s.is_char_boundary(i)).collect()
}

/// Whole text vs. every two-way split vs. fixed chunk sizes.
fn assert_stream_equals_whole(text: &str, p: &Pseudonyms) {
    let policy = policy();
    for channel in [Channel::Content, Channel::Reasoning] {
        let whole = run(&policy, channel, p, &[text]);
        for i in boundaries(text) {
            let split = run(&policy, channel, p, &[&text[..i], &text[i..]]);
            assert_eq!(split.text, whole.text, "split at {i} of {text:?}");
            assert_eq!(split.blocked_by, whole.blocked_by, "split at {i}");
            assert_eq!(split.findings, whole.findings, "split at {i}");
        }
        for size in 1..=20 {
            let mut chunks = Vec::new();
            let mut at = 0;
            while at < text.len() {
                let mut end = (at + size).min(text.len());
                while !text.is_char_boundary(end) {
                    end += 1;
                }
                chunks.push(&text[at..end]);
                at = end;
            }
            let r = run(&policy, channel, p, &chunks);
            assert_eq!(r.text, whole.text, "chunks of {size}");
            assert_eq!(r.findings, whole.findings, "chunks of {size}");
        }
    }
}

#[test]
fn redactions_split_anywhere_equal_the_whole_text() {
    let text = "Mail alice@example.com or call +44 20 7946 0958 to k i l l the job; \
                card 4111 1111 1111 1111, ｋｉｌｌ it, a nerve\nagent, k\u{200B}ill. Done.";
    let whole = run(&policy(), Channel::Content, &Pseudonyms::new(), &[text]);
    assert_eq!(
        whole.text,
        "Mail <EMAIL> or call <PHONE> to [REDACTED] the job; card <CREDIT_CARD>, [REDACTED] it, \
         a [REDACTED], [REDACTED]. Done."
    );
    assert_stream_equals_whole(text, &Pseudonyms::new());
}

#[test]
fn long_text_with_findings_far_apart_exercises_the_window() {
    let filler = "The quick brown fox jumps over the lazy dog. ";
    let mut text = String::new();
    for i in 0..6 {
        text.push_str(filler);
        text.push_str(&format!("user{i}@example.org "));
        text.push_str(filler);
        text.push_str("k1ll ");
    }
    text.push_str("AKIAIOSFODNN7EXAMPLE end");
    assert_stream_equals_whole(&text, &Pseudonyms::new());
    let whole = run(&policy(), Channel::Content, &Pseudonyms::new(), &[&text]);
    assert_eq!(whole.text.matches("<EMAIL>").count(), 6);
    assert_eq!(whole.text.matches("[REDACTED]").count(), 6);
    assert!(whole.text.ends_with("<AWS_ACCESS_KEY> end"));
}

#[test]
fn pseudonym_tags_split_across_chunks_are_restored() {
    let mut p = Pseudonyms::new();
    p.tag_for("EMAIL", "alice@example.com");
    p.tag_for("PHONE", "+1 415 555 2671");
    let text = "I wrote to <EMAIL_1> and called <PHONE_1>; <EMAIL_7> is unknown.";
    let whole = run(&policy(), Channel::Content, &p, &[text]);
    assert_eq!(
        whole.text,
        "I wrote to alice@example.com and called +1 415 555 2671; <EMAIL_7> is unknown."
    );
    // Restored values are the user's own: the output PII rail does not mask them.
    assert!(whole.findings.iter().all(|f| f.is_empty()));
    assert_stream_equals_whole(text, &p);
}

#[test]
fn a_block_stops_the_stream_before_any_byte_of_the_match() {
    let text =
        "This part is fine and long enough to be emitted early. Then the forbidden word, and more.";
    let start = text.find("forbidden").unwrap();
    let policy = policy();
    for i in boundaries(text) {
        let mut g = policy.output_guard(Channel::Content, &Pseudonyms::new());
        let mut emitted = g.push(&text[..i]).emit;
        let step = g.push(&text[i..]);
        emitted.push_str(&step.emit);
        let last = g.finish();
        emitted.push_str(&last.emit);
        assert_eq!(last.blocked_by.as_deref(), Some("stopper"), "split at {i}");
        assert!(emitted.len() <= start, "split at {i}: emitted {emitted:?}");
        assert!(text.starts_with(&emitted));
        // Nothing more after a block.
        assert_eq!(g.push("more text").emit, "");
    }
    // The block rail applies to content only.
    let r = run(&policy, Channel::Reasoning, &Pseudonyms::new(), &[text]);
    assert_eq!(r.blocked_by, None);
    assert_eq!(r.text, text);
}

#[test]
fn stream_never_splits_utf8_and_holds_back_at_most_overlap() {
    let policy = policy();
    let text = "日本語のテキスト、絵文字👨‍👩‍👧も含む。".repeat(8);
    let mut g = policy.output_guard(Channel::Content, &Pseudonyms::new());
    let mut emitted = String::new();
    for c in text.chars() {
        let mut b = [0u8; 4];
        emitted.push_str(&g.push(c.encode_utf8(&mut b)).emit);
        // emitted is a String: every piece was valid UTF-8 on its own.
        assert!(text.starts_with(&emitted));
    }
    assert!(
        text.len() - emitted.len() <= 64 + 3,
        "held back {}",
        text.len() - emitted.len()
    );
    emitted.push_str(&g.finish().emit);
    assert_eq!(emitted, text);
}

#[test]
fn unterminated_private_key_is_held_until_it_ends() {
    let policy = policy();
    let mut g = policy.output_guard(Channel::Content, &Pseudonyms::new());
    let mut out = g.push("Here: -----BEGIN PRIVATE KEY-----\n").emit;
    for _ in 0..20 {
        out.push_str(&g.push("MIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n").emit);
    }
    assert!(!out.contains("MIIE"), "key material emitted: {out:?}");
    out.push_str(&g.push("-----END PRIVATE KEY----- done").emit);
    out.push_str(&g.finish().emit);
    assert_eq!(out, "Here: <PRIVATE_KEY> done");
}

#[test]
fn length_limit_blocks_the_channel() {
    let policy =
        Policy::from_toml("name = \"l\"\n[output]\nmax_content_chars = 10\n", "l.toml").unwrap();
    let mut g = policy.output_guard(Channel::Content, &Pseudonyms::new());
    assert_eq!(g.push("héllo").blocked_by, None);
    assert_eq!(
        g.push(" world").blocked_by.as_deref(),
        Some("max_content_chars")
    );
    let limit = g.results().pop().unwrap();
    assert!(limit.triggered && limit.kind == "limit");
    // Reasoning has no limit in this policy.
    let mut g = policy.output_guard(Channel::Reasoning, &Pseudonyms::new());
    assert_eq!(g.push(&"x".repeat(100)).blocked_by, None);
}
