//! Tool calls in each model family's own format: which format a chat template uses, the
//! grammar that forces a call (for `tool_choice: required` or a named function), and the
//! parser that reads calls back out of the generated text, whole or while it streams.
//!
//! Formats (chosen from the chat template, as llama.cpp and vLLM do):
//! - [`ToolFormat::Hermes`] (Qwen2.5, Qwen3, QwQ, Hermes): `<tool_call>\n{"name": .., "arguments": {..}}\n</tool_call>`;
//! - [`ToolFormat::Llama3Json`] (Llama 3.1-3.3): `{"name": .., "parameters": {..}}`, optionally after `<|python_tag|>`;
//! - [`ToolFormat::DeepSeekV3`] (V3, R1 and its distillations):
//!   `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\n{..}\n```<｜tool▁call▁end｜>…<｜tool▁calls▁end｜>`;
//! - [`ToolFormat::DeepSeekV31`] (V3.1 and later): `…<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{..}<｜tool▁call▁end｜>…`.

use serde_json::{json, Value};

use crate::{lark_string, Constraint, StructuredError};

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// Its name.
    pub name: String,
    /// What it does.
    pub description: Option<String>,
    /// The JSON Schema of its arguments.
    pub parameters: Value,
}

/// Whether and which function the model must call (OpenAI's `tool_choice`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides (calls are parsed from whatever it writes).
    Auto,
    /// No call: the tools are not shown to the model.
    None,
    /// At least one call, enforced by the grammar.
    Required,
    /// Exactly this function, enforced by the grammar.
    Named(String),
}

/// A call read from the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCall {
    /// The function's name.
    pub name: String,
    /// Its arguments: a JSON object, as the model wrote it.
    pub arguments: String,
}

/// A generated text split into its answer and its calls.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedOutput {
    /// The text outside the calls.
    pub content: String,
    /// The calls, in order.
    pub calls: Vec<ParsedCall>,
}

/// A model family's tool-call format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>{json}</tool_call>` (Qwen2.5/3, Hermes).
    Hermes,
    /// A bare `{"name", "parameters"}` object (Llama 3.x).
    Llama3Json,
    /// DeepSeek V3 / R1: markers, `function`, name, a fenced JSON block.
    DeepSeekV3,
    /// DeepSeek V3.1+: markers, name, bare JSON.
    DeepSeekV31,
}

const DS_CALLS_BEGIN: &str = "<｜tool▁calls▁begin｜>";
const DS_CALLS_END: &str = "<｜tool▁calls▁end｜>";
const DS_CALL_BEGIN: &str = "<｜tool▁call▁begin｜>";
const DS_CALL_END: &str = "<｜tool▁call▁end｜>";
const DS_SEP: &str = "<｜tool▁sep｜>";
const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";

impl ToolFormat {
    /// The format a chat template writes tool calls in, or an error naming the template's
    /// lack of one.
    pub fn detect(template: Option<&str>) -> Result<Self, StructuredError> {
        let Some(t) = template else {
            return Err(StructuredError::NoToolFormat(
                "this model has no chat template, so it has no tool-call format; leave out `tools`"
                    .into(),
            ));
        };
        if t.contains("tool▁calls▁begin") {
            // V3's template fences the arguments as ```json; V3.1's writes them bare.
            return Ok(if t.contains("```json") {
                ToolFormat::DeepSeekV3
            } else {
                ToolFormat::DeepSeekV31
            });
        }
        if t.contains(HERMES_OPEN) {
            return Ok(ToolFormat::Hermes);
        }
        if t.contains("<|python_tag|>")
            || (t.contains("\"parameters\"") && t.contains("<|eot_id|>"))
        {
            return Ok(ToolFormat::Llama3Json);
        }
        Err(StructuredError::NoToolFormat(
            "this model's chat template has no tool-call format (it never renders `tools`); \
             use a model whose template supports tools (Qwen2.5, Llama 3.1+, DeepSeek V3/R1), \
             or leave out `tools` and describe the functions in the prompt"
                .into(),
        ))
    }

    /// The format's name, as vLLM's tool parsers are named.
    pub fn name(&self) -> &'static str {
        match self {
            ToolFormat::Hermes => "hermes",
            ToolFormat::Llama3Json => "llama3_json",
            ToolFormat::DeepSeekV3 => "deepseek_v3",
            ToolFormat::DeepSeekV31 => "deepseek_v31",
        }
    }

    /// Markers that must stay in the detokenized text for the parser to see the calls.
    pub fn needs_special_tokens(&self) -> bool {
        matches!(
            self,
            ToolFormat::DeepSeekV3 | ToolFormat::DeepSeekV31 | ToolFormat::Llama3Json
        )
    }

    /// The grammar of a turn that is only calls: to `only` when given, else to any of
    /// `tools`; several when `parallel`. `special` gives the id of a special token (written
    /// `<[id]>` in the grammar), `None` when the text is an ordinary token.
    pub fn grammar(
        &self,
        tools: &[ToolSpec],
        only: Option<&str>,
        parallel: bool,
        special: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<Constraint, StructuredError> {
        let chosen: Vec<&ToolSpec> = match only {
            Some(name) => {
                let t = tools.iter().find(|t| t.name == name).ok_or_else(|| {
                    StructuredError::Invalid(format!(
                        "tool_choice names the function `{name}`, which is not in `tools`"
                    ))
                })?;
                vec![t]
            }
            None => tools.iter().collect(),
        };
        if chosen.is_empty() {
            return Err(StructuredError::Invalid(
                "tool_choice requires a call but `tools` is empty".into(),
            ));
        }
        let lit = |s: &str| match special(s) {
            Some(id) => format!("<[{id}]>"),
            None => lark_string(s),
        };
        let layout =
            json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "});
        let params = |t: &ToolSpec| -> Value {
            let mut p = match &t.parameters {
                Value::Object(_) => t.parameters.clone(),
                _ => json!({"type": "object"}),
            };
            if let Value::Object(m) = &mut p {
                m.entry("x-guidance").or_insert_with(|| layout.clone());
            }
            p
        };
        // One object per call: {"name": NAME, <args key>: ARGS}, name first.
        let object_schema = |args_key: &str| -> Value {
            let variants: Vec<Value> = chosen
                .iter()
                .map(|t| {
                    let mut args = params(t);
                    if let Value::Object(m) = &mut args {
                        m.remove("x-guidance");
                    }
                    json!({
                        "type": "object",
                        "properties": {"name": {"const": t.name}, args_key: args},
                        "required": ["name", args_key],
                        "additionalProperties": false,
                    })
                })
                .collect();
            let mut s = if variants.len() == 1 {
                variants.into_iter().next().unwrap_or_default()
            } else {
                json!({"anyOf": variants})
            };
            if let Value::Object(m) = &mut s {
                m.insert("x-guidance".into(), layout.clone());
            }
            s
        };
        let repeat = if parallel { "+" } else { "" };
        let grammar = match self {
            ToolFormat::Hermes => format!(
                "start: call{repeat}\ncall: {} body {}\nbody: %json {}\n",
                lark_string("<tool_call>\n"),
                lark_string("\n</tool_call>\n"),
                object_schema("arguments")
            ),
            ToolFormat::Llama3Json => {
                format!("start: body\nbody: %json {}\n", object_schema("parameters"))
            }
            ToolFormat::DeepSeekV3 | ToolFormat::DeepSeekV31 => {
                let mut rules = Vec::new();
                let mut alts = Vec::new();
                for (i, t) in chosen.iter().enumerate() {
                    let head = if *self == ToolFormat::DeepSeekV3 {
                        format!(
                            "{} {} {} {}",
                            lit(DS_CALL_BEGIN),
                            lark_string("function"),
                            lit(DS_SEP),
                            lark_string(&format!("{}\n```json\n", t.name))
                        )
                    } else {
                        format!(
                            "{} {} {}",
                            lit(DS_CALL_BEGIN),
                            lark_string(&t.name),
                            lit(DS_SEP)
                        )
                    };
                    let tail = if *self == ToolFormat::DeepSeekV3 {
                        format!("{} {}", lark_string("\n```"), lit(DS_CALL_END))
                    } else {
                        lit(DS_CALL_END)
                    };
                    rules.push(format!("args{i}: %json {}", params(t)));
                    alts.push(format!("{head} args{i} {tail}"));
                }
                format!(
                    "start: {} call{repeat} {}\ncall: {}\n{}\n",
                    lit(DS_CALLS_BEGIN),
                    lit(DS_CALLS_END),
                    alts.join(" | "),
                    rules.join("\n")
                )
            }
        };
        Ok(Constraint::Grammar(grammar))
    }

    /// Splits a finished text into its answer and its calls. A call that does not parse
    /// leaves the whole text as the answer (as vLLM's parsers do).
    pub fn parse(&self, text: &str) -> ParsedOutput {
        let scan = self.scan(text, true);
        if scan.calls.is_empty() || scan.calls.iter().any(|c| !c.complete || c.name.is_none()) {
            return ParsedOutput {
                content: text.to_string(),
                calls: Vec::new(),
            };
        }
        let mut calls = Vec::with_capacity(scan.calls.len());
        for c in scan.calls {
            let args = c.arguments.trim();
            let args = if args.is_empty() { "{}" } else { args };
            match serde_json::from_str::<Value>(args) {
                Ok(Value::Object(_)) => calls.push(ParsedCall {
                    name: c.name.unwrap_or_default(),
                    arguments: args.to_string(),
                }),
                _ => {
                    return ParsedOutput {
                        content: text.to_string(),
                        calls: Vec::new(),
                    }
                }
            }
        }
        ParsedOutput {
            content: text[..scan.content_end].trim_end().to_string(),
            calls,
        }
    }

    /// Reads a text that may still grow: where the answer part safely ends (a possible
    /// start of a call is held back), and the calls begun so far with their arguments up to
    /// what cannot change any more.
    pub fn scan<'a>(&self, text: &'a str, done: bool) -> Scan<'a> {
        match self {
            ToolFormat::Hermes => scan_hermes(text, done),
            ToolFormat::Llama3Json => scan_llama(text, done),
            ToolFormat::DeepSeekV3 | ToolFormat::DeepSeekV31 => scan_deepseek(*self, text, done),
        }
    }
}

/// What [`ToolFormat::scan`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan<'a> {
    /// Bytes of the text that are answer for certain.
    pub content_end: usize,
    /// Calls begun so far.
    pub calls: Vec<PartialCall<'a>>,
}

/// A call as far as it has been generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialCall<'a> {
    /// The function's name, once complete.
    pub name: Option<String>,
    /// The arguments' text so far (only what later text cannot change).
    pub arguments: &'a str,
    /// Whether the call's closing marker has been seen.
    pub complete: bool,
}

/// The length of the longest suffix of `text` that is a proper prefix of `marker` (text that
/// may be the start of the marker).
fn partial_marker(text: &str, marker: &str) -> usize {
    let max = marker.len().saturating_sub(1).min(text.len());
    (1..=max)
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && marker.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

/// Arguments still growing: hold back what may belong to the closing of the call (the
/// outer `}`, whitespace, a partial closing marker).
fn stable_prefix(args: &str) -> &str {
    let t = args.trim_end();
    let t = t.strip_suffix('}').unwrap_or(t);
    t.trim_end()
}

/// `"name": "..."` inside a call object, once its closing quote is there.
fn json_name(body: &str) -> Option<String> {
    let i = body.find("\"name\"")?;
    let rest = body[i + 6..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    let end = rest.find('"')?;
    Some(rest[..end].to_string())
}

/// Where the value of `"arguments"` (or `"parameters"`) starts in a call object.
fn args_start(body: &str) -> Option<usize> {
    for key in ["\"arguments\"", "\"parameters\""] {
        if let Some(i) = body.find(key) {
            let after = &body[i + key.len()..];
            let colon = after.find(':')?;
            let value = &after[colon + 1..];
            let skip = value.len() - value.trim_start().len();
            return Some(i + key.len() + colon + 1 + skip);
        }
    }
    None
}

/// A JSON call object `{"name": .., "arguments": ..}` (complete or growing).
fn object_call(body: &str, complete: bool) -> PartialCall<'_> {
    let name = json_name(body);
    let arguments = match args_start(body) {
        Some(s) if complete => {
            let inner = body[s..].trim_end();
            inner.strip_suffix('}').unwrap_or(inner).trim_end()
        }
        Some(s) => stable_prefix(&body[s..]),
        None => "",
    };
    PartialCall {
        name,
        arguments,
        complete,
    }
}

/// A whole answer that is one bare `{"name": .., "arguments": {..}}` object: small Qwen models
/// often write their call without the `<tool_call>` tags (llama.cpp's parser accepts it too).
fn bare_call(text: &str) -> Option<PartialCall<'_>> {
    let body = text.trim();
    let v: Value = serde_json::from_str(body).ok()?;
    let o = v.as_object()?;
    let args_ok = o.get("arguments").is_some_and(Value::is_object);
    if o.len() != 2 || !o.get("name").is_some_and(Value::is_string) || !args_ok {
        return None;
    }
    Some(object_call(body, true))
}

fn scan_hermes(text: &str, done: bool) -> Scan<'_> {
    let Some(first) = text.find(HERMES_OPEN) else {
        let lead = text.len() - text.trim_start().len();
        if text.trim_start().starts_with('{') {
            // Maybe a bare call: held back until the answer is complete.
            if !done {
                return Scan {
                    content_end: lead,
                    calls: Vec::new(),
                };
            }
            if let Some(call) = bare_call(text) {
                return Scan {
                    content_end: lead,
                    calls: vec![call],
                };
            }
        }
        let hold = if done {
            0
        } else {
            partial_marker(text, HERMES_OPEN)
        };
        return Scan {
            content_end: text.len() - hold,
            calls: Vec::new(),
        };
    };
    let mut calls = Vec::new();
    let mut rest = &text[first..];
    while let Some(body) = rest.strip_prefix(HERMES_OPEN) {
        match body.find(HERMES_CLOSE) {
            Some(end) => {
                calls.push(object_call(body[..end].trim(), true));
                rest = body[end + HERMES_CLOSE.len()..].trim_start();
            }
            None => {
                let cut = body.len()
                    - if done {
                        0
                    } else {
                        partial_marker(body, HERMES_CLOSE)
                    };
                calls.push(object_call(body[..cut].trim_start(), false));
                rest = "";
            }
        }
    }
    Scan {
        content_end: first,
        calls,
    }
}

fn scan_llama(text: &str, done: bool) -> Scan<'_> {
    let trimmed = text.trim_start();
    let lead = text.len() - trimmed.len();
    let (body, at) = match trimmed.strip_prefix(PYTHON_TAG) {
        Some(b) => (b.trim_start(), lead),
        None if trimmed.starts_with('{') => (trimmed, lead),
        None => {
            // Not a call, unless this is the start of the tag or of an object.
            let hold = if done {
                0
            } else if trimmed.is_empty() {
                text.len()
            } else {
                partial_marker(text, PYTHON_TAG)
            };
            return Scan {
                content_end: text.len() - hold,
                calls: Vec::new(),
            };
        }
    };
    if !done && json_name(body).is_none() && body.len() < 10 {
        return Scan {
            content_end: at,
            calls: Vec::new(),
        };
    }
    let complete = done && serde_json::from_str::<Value>(body.trim()).is_ok();
    Scan {
        content_end: at,
        calls: vec![object_call(body.trim_end(), complete)],
    }
}

fn scan_deepseek(format: ToolFormat, text: &str, done: bool) -> Scan<'_> {
    let Some(first) = text.find(DS_CALLS_BEGIN) else {
        let hold = if done {
            0
        } else {
            partial_marker(text, DS_CALLS_BEGIN)
        };
        return Scan {
            content_end: text.len() - hold,
            calls: Vec::new(),
        };
    };
    let mut calls = Vec::new();
    let mut rest = &text[first + DS_CALLS_BEGIN.len()..];
    while let Some(i) = rest.find(DS_CALL_BEGIN) {
        let body = &rest[i + DS_CALL_BEGIN.len()..];
        let (call, complete, next) = match body.find(DS_CALL_END) {
            Some(e) => (&body[..e], true, &body[e + DS_CALL_END.len()..]),
            None => {
                let cut = body.len()
                    - if done {
                        0
                    } else {
                        partial_marker(body, DS_CALL_END)
                    };
                (&body[..cut], false, "")
            }
        };
        let Some(sep) = call.find(DS_SEP) else {
            calls.push(PartialCall {
                name: None,
                arguments: "",
                complete: false,
            });
            break;
        };
        let (head, after) = (&call[..sep], &call[sep + DS_SEP.len()..]);
        let (name, args) = if format == ToolFormat::DeepSeekV3 {
            // function<sep>NAME\n```json\n{..}\n```
            match after.find('\n') {
                Some(nl) => {
                    let name = after[..nl].trim().to_string();
                    let a = after[nl + 1..].trim_start();
                    // A fence still arriving is not arguments yet.
                    let a = if !complete && "```json".starts_with(a) {
                        ""
                    } else {
                        a.strip_prefix("```json").unwrap_or(a).trim_start()
                    };
                    let a = if complete {
                        a.trim_end().strip_suffix("```").unwrap_or(a).trim_end()
                    } else {
                        let t = a.trim_end();
                        t.strip_suffix("```")
                            .or_else(|| t.strip_suffix("``"))
                            .or_else(|| t.strip_suffix('`'))
                            .unwrap_or(t)
                    };
                    (Some(name), a)
                }
                None => (None, ""),
            }
        } else {
            (Some(head.trim().to_string()), after.trim())
        };
        let args = if complete { args } else { stable_prefix(args) };
        calls.push(PartialCall {
            name,
            arguments: args,
            complete,
        });
        rest = next;
        if !complete {
            break;
        }
    }
    Scan {
        content_end: first,
        calls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, args: &str) -> ParsedCall {
        ParsedCall {
            name: name.into(),
            arguments: args.into(),
        }
    }

    #[test]
    fn formats_are_detected_from_templates() {
        let d = |t: &str| ToolFormat::detect(Some(t));
        assert_eq!(d("{{ '<tool_call>\\n' }}").unwrap(), ToolFormat::Hermes);
        assert_eq!(
            d("<｜tool▁calls▁begin｜>' + '```json' ").unwrap(),
            ToolFormat::DeepSeekV3
        );
        assert_eq!(
            d("<｜tool▁calls▁begin｜>").unwrap(),
            ToolFormat::DeepSeekV31
        );
        assert_eq!(d("{{'<|python_tag|>'}}").unwrap(), ToolFormat::Llama3Json);
        let e = d("{% for m in messages %}{{ m.content }}{% endfor %}").unwrap_err();
        assert!(e.to_string().contains("no tool-call format"), "{e}");
        assert!(ToolFormat::detect(None).is_err());
    }

    #[test]
    fn hermes_calls_parse_with_content_before() {
        let t = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>";
        let p = ToolFormat::Hermes.parse(t);
        assert_eq!(p.content, "Let me check.");
        assert_eq!(
            p.calls,
            vec![
                call("get_weather", "{\"city\": \"Paris\"}"),
                call("now", "{}")
            ]
        );
        // A bare call object (no tags) is a call too; other JSON stays the answer.
        let p = ToolFormat::Hermes.parse(" {\"name\": \"f\", \"arguments\": {\"x\": 1}}");
        assert_eq!(p.calls, vec![call("f", "{\"x\": 1}")]);
        assert_eq!(p.content, "");
        let p = ToolFormat::Hermes.parse("{\"name\": \"Ada\", \"age\": 36}");
        assert!(p.calls.is_empty());
        // Broken JSON: the text stays the answer.
        let p =
            ToolFormat::Hermes.parse("<tool_call>{\"name\": \"x\", \"arguments\": {</tool_call>");
        assert!(p.calls.is_empty());
        assert!(p.content.starts_with("<tool_call>"));
        // No call at all.
        assert_eq!(ToolFormat::Hermes.parse("Hello").content, "Hello");
    }

    #[test]
    fn streamed_hermes_arguments_only_grow() {
        let full = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": {\"b\": 1}, \"c\": \"}\"}}\n</tool_call>";
        let final_args = ToolFormat::Hermes.parse(full).calls[0].arguments.clone();
        let mut last = String::new();
        for end in 1..=full.len() {
            if !full.is_char_boundary(end) {
                continue;
            }
            let s = ToolFormat::Hermes.scan(&full[..end], false);
            assert_eq!(s.content_end, 0, "{end}");
            if let Some(c) = s.calls.first() {
                assert!(
                    final_args.starts_with(c.arguments),
                    "{:?} vs {final_args}",
                    c.arguments
                );
                assert!(c.arguments.starts_with(last.as_str()) || last.is_empty());
                last = c.arguments.to_string();
            }
        }
        // A possible start of the tag is held back from the answer.
        let s = ToolFormat::Hermes.scan("Sure <tool_", false);
        assert_eq!(s.content_end, "Sure ".len());
    }

    #[test]
    fn deepseek_calls_parse_in_both_versions() {
        let v3 = format!("ok{DS_CALLS_BEGIN}{DS_CALL_BEGIN}function{DS_SEP}get_weather\n```json\n{{\"city\": \"Paris\"}}\n```{DS_CALL_END}{DS_CALLS_END}");
        let p = ToolFormat::DeepSeekV3.parse(&v3);
        assert_eq!(p.content, "ok");
        assert_eq!(p.calls, vec![call("get_weather", "{\"city\": \"Paris\"}")]);
        let v31 = format!("{DS_CALLS_BEGIN}{DS_CALL_BEGIN}a{DS_SEP}{{}}{DS_CALL_END}{DS_CALL_BEGIN}b{DS_SEP}{{\"x\": 1}}{DS_CALL_END}{DS_CALLS_END}");
        let p = ToolFormat::DeepSeekV31.parse(&v31);
        assert_eq!(p.calls, vec![call("a", "{}"), call("b", "{\"x\": 1}")]);
    }

    #[test]
    fn streamed_deepseek_arguments_only_grow() {
        let full = format!("{DS_CALLS_BEGIN}{DS_CALL_BEGIN}function{DS_SEP}f\n```json\n{{\"a\": [1, 2]}}\n```{DS_CALL_END}{DS_CALLS_END}");
        let final_args = ToolFormat::DeepSeekV3.parse(&full).calls[0]
            .arguments
            .clone();
        for end in (1..=full.len()).filter(|&e| full.is_char_boundary(e)) {
            let s = ToolFormat::DeepSeekV3.scan(&full[..end], false);
            if let Some(c) = s.calls.first() {
                assert!(
                    final_args.starts_with(c.arguments),
                    "{:?} at {end}",
                    c.arguments
                );
            }
        }
    }

    #[test]
    fn llama_json_calls_parse() {
        let p = ToolFormat::Llama3Json
            .parse("<|python_tag|>{\"name\": \"f\", \"parameters\": {\"q\": \"x\"}}");
        assert_eq!(p.calls, vec![call("f", "{\"q\": \"x\"}")]);
        let p = ToolFormat::Llama3Json.parse("{\"name\": \"f\", \"parameters\": {}}");
        assert_eq!(p.calls, vec![call("f", "{}")]);
        assert!(ToolFormat::Llama3Json
            .parse("The answer is 4.")
            .calls
            .is_empty());
    }

    #[test]
    fn a_named_choice_must_exist() {
        let tools = vec![ToolSpec {
            name: "f".into(),
            description: None,
            parameters: json!({"type": "object"}),
        }];
        let e = ToolFormat::Hermes
            .grammar(&tools, Some("g"), false, &|_| None)
            .unwrap_err();
        assert!(e.to_string().contains("`g`"), "{e}");
        let g = ToolFormat::Hermes
            .grammar(&tools, None, true, &|_| None)
            .unwrap();
        assert!(matches!(g, Constraint::Grammar(ref s) if s.contains("%json")));
    }
}
