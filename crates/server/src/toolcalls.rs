//! Tool calls on the wire: the calls of a finished answer, and OpenAI's streamed tool-call
//! deltas (index, id and name first, then argument fragments) cut from an answer that is
//! still growing, with the text before the first call sent as content.

use seek_structured::ToolFormat;

use crate::wire;

/// A new call id, `call_` and 24 random letters and digits (OpenAI's shape).
pub(crate) fn call_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let id: String = (0..24)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("call_{id}")
}

/// A finished answer split into its content (`None` when only calls remain) and its calls.
pub(crate) fn finished(
    format: ToolFormat,
    names: &[String],
    text: &str,
) -> (Option<String>, Option<Vec<wire::ToolCall>>) {
    let parsed = format.parse(text);
    // A call to a function the request did not offer is text, not a call.
    if parsed.calls.is_empty() || parsed.calls.iter().any(|c| !names.contains(&c.name)) {
        return (Some(text.to_string()), None);
    }
    let calls = parsed
        .calls
        .into_iter()
        .map(|c| wire::ToolCall {
            id: call_id(),
            kind: "function".into(),
            function: wire::FunctionCall {
                name: c.name,
                arguments: c.arguments,
            },
        })
        .collect();
    let content = (!parsed.content.is_empty()).then_some(parsed.content);
    (content, Some(calls))
}

/// What a streamed choice has sent of its calls.
pub(crate) struct ToolStream {
    format: ToolFormat,
    /// The functions the request offered.
    names: Vec<String>,
    /// Bytes of the answer sent as content.
    content_sent: usize,
    /// Per call begun: its id and the bytes of its arguments sent.
    calls: Vec<(String, usize)>,
}

/// The pieces to send after an update.
#[derive(Debug, Default)]
pub(crate) struct ToolDeltas {
    /// New content (text before the first call).
    pub content: String,
    /// New call pieces.
    pub calls: Vec<wire::ToolCallDelta>,
}

impl ToolStream {
    pub(crate) fn new(format: ToolFormat, names: Vec<String>) -> Self {
        Self {
            format,
            names,
            content_sent: 0,
            calls: Vec::new(),
        }
    }

    /// Whether any call has been sent.
    pub(crate) fn has_calls(&self) -> bool {
        !self.calls.is_empty()
    }

    /// The pieces that `answer` (all the content so far) adds to what was sent; with `done`,
    /// everything left.
    pub(crate) fn update(&mut self, answer: &str, done: bool) -> ToolDeltas {
        let mut scan = self.format.scan(answer, done);
        let unknown = scan
            .calls
            .iter()
            .any(|c| c.name.as_ref().is_some_and(|n| !self.names.contains(n)));
        if unknown && self.calls.is_empty() {
            // Not a call to an offered function: the text is the answer.
            scan.calls.clear();
            scan.content_end = if done {
                answer.len()
            } else {
                self.content_sent
            };
        }
        let mut out = ToolDeltas::default();
        if scan.content_end > self.content_sent {
            out.content = answer[self.content_sent..scan.content_end].to_string();
            self.content_sent = scan.content_end;
        }
        for (index, call) in scan.calls.iter().enumerate() {
            if index == self.calls.len() {
                let Some(name) = &call.name else { break };
                let id = call_id();
                out.calls.push(wire::ToolCallDelta {
                    index,
                    id: Some(id.clone()),
                    kind: Some("function".into()),
                    function: wire::FunctionCallDelta {
                        name: Some(name.clone()),
                        arguments: Some(String::new()),
                    },
                });
                self.calls.push((id, 0));
            }
            let sent = &mut self.calls[index].1;
            let args = if call.complete && call.arguments.trim().is_empty() {
                "{}"
            } else {
                call.arguments
            };
            if args.len() > *sent && args.is_char_boundary(*sent) {
                out.calls.push(wire::ToolCallDelta {
                    index,
                    id: None,
                    kind: None,
                    function: wire::FunctionCallDelta {
                        name: None,
                        arguments: Some(args[*sent..].to_string()),
                    },
                });
                *sent = args.len();
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_pieces_add_up_to_the_finished_calls() {
        let text = "Checking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": [1, 2]}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>";
        let offered = vec!["get_weather".to_string(), "now".to_string()];
        let mut s = ToolStream::new(ToolFormat::Hermes, offered.clone());
        let mut content = String::new();
        let mut names: Vec<String> = Vec::new();
        let mut args: Vec<String> = Vec::new();
        let mut ends: Vec<usize> = (1..text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        ends.push(text.len());
        for (k, &end) in ends.iter().enumerate() {
            let d = s.update(&text[..end], k + 1 == ends.len());
            content.push_str(&d.content);
            for c in d.calls {
                if let Some(n) = c.function.name {
                    assert_eq!(c.index, names.len(), "id and name come first");
                    assert!(c.id.as_deref().is_some_and(|i| i.starts_with("call_")));
                    names.push(n);
                    args.push(String::new());
                }
                if let Some(a) = c.function.arguments {
                    args[c.index].push_str(&a);
                }
            }
        }
        let (whole_content, calls) = finished(ToolFormat::Hermes, &offered, text);
        let calls = calls.unwrap();
        assert_eq!(content.trim_end(), whole_content.unwrap());
        assert_eq!(names, ["get_weather", "now"]);
        for (a, c) in args.iter().zip(&calls) {
            assert_eq!(a, &c.function.arguments);
            serde_json::from_str::<serde_json::Value>(a).unwrap();
        }
    }

    #[test]
    fn plain_answers_stream_as_content() {
        let mut s = ToolStream::new(ToolFormat::Hermes, vec!["f".into()]);
        let mut content = String::new();
        for end in [3, 9, 12] {
            content.push_str(&s.update(&"The answer <is 4"[..end], false).content);
        }
        content.push_str(&s.update("The answer <is 4", true).content);
        assert_eq!(content, "The answer <is 4");
        assert!(!s.has_calls());
        assert_eq!(finished(ToolFormat::Hermes, &["f".into()], "Hi").1, None);
        // A bare call to an offered function is a call; to another, text.
        let bare = "{\"name\": \"f\", \"arguments\": {}}";
        assert!(finished(ToolFormat::Hermes, &["f".into()], bare)
            .1
            .is_some());
        assert_eq!(finished(ToolFormat::Hermes, &["g".into()], bare).1, None);
        let mut s = ToolStream::new(ToolFormat::Hermes, vec!["g".into()]);
        assert_eq!(s.update(&bare[..10], false).content, "");
        let d = s.update(bare, true);
        assert_eq!(d.content, bare);
        assert!(d.calls.is_empty());
    }
}
