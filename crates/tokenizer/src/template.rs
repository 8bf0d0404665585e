//! Chat templates: the model's Jinja, rendered the way `transformers.apply_chat_template` does.
//!
//! `transformers` renders with Jinja2 (`trim_blocks`, `lstrip_blocks`, loop controls) plus a few
//! globals: `raise_exception`, `strftime_now`, a `tojson` that is Python's `json.dumps`, and the
//! special tokens (`bos_token`, `eos_token`). Templates also call Python string and dict methods
//! (`.strip()`, `.split()`, `.items()`), which `minijinja-contrib`'s pycompat layer provides.

use std::fmt::{self, Write as _};

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};
use seek_types::ChatMessage;
use serde::Serialize;

use crate::TokenizerError;

const NAME: &str = "chat_template";

/// Bound on template instructions per render. A long conversation with a complex template takes
/// well under a million; an untrusted template cannot spin for more than about half a second.
const FUEL: u64 = 10_000_000;

/// Deepest nesting `tojson` serializes.
const MAX_JSON_DEPTH: usize = 128;

/// A compiled chat template, with the special tokens it is rendered with.
#[derive(Clone)]
pub struct ChatTemplate {
    source: String,
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    /// Whether the template `tojson`s tool-call arguments (see `template_call`).
    args_as_mapping: bool,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source_len", &self.source.len())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

/// One message as the template sees it; field order and the `thinking` alias of
/// `reasoning_content` follow `transformers` 5.
#[derive(Serialize)]
struct TemplateMessage<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<&'a str>,
    role: &'a str,
    /// `None` (null) for a turn that is only tool calls, as OpenAI clients send it and
    /// DeepSeek's template tests for.
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

/// A call as Hugging Face's templates read it: `{"id", "type": "function", "function":
/// {"name", "arguments"}}`, with the arguments as a mapping for templates that `tojson` them
/// (Qwen, Llama) and as text for templates that concatenate them (DeepSeek), so that both
/// kinds render the JSON once; arguments that are not a JSON object stay text.
fn template_call(c: &seek_types::ToolCall, as_mapping: bool) -> serde_json::Value {
    let arguments = match serde_json::from_str::<serde_json::Value>(&c.arguments) {
        Ok(v @ serde_json::Value::Object(_)) if as_mapping => v,
        _ => serde_json::Value::String(c.arguments.clone()),
    };
    serde_json::json!({
        "id": c.id,
        "type": "function",
        "function": {"name": c.name, "arguments": arguments},
    })
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error is reported here, not at render time. `bos_token` and
    /// `eos_token` are the texts the template sees as `bos_token` / `eos_token` (left undefined
    /// when `None`, as `transformers` does).
    pub fn new(
        source: String,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, TokenizerError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(FUEL));
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(NAME, without_generation_tags(&source))
            .map_err(|e| TokenizerError::TemplateSyntax(e.to_string()))?;
        let args_as_mapping = regex::Regex::new(r#"arguments['"]?\]?\s*\|\s*tojson"#)
            .map(|r| r.is_match(&source))
            .unwrap_or(true);
        Ok(Self {
            source,
            env,
            bos_token,
            eos_token,
            args_as_mapping,
        })
    }

    /// The template as given (before the `{% generation %}` tags are neutralised).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a conversation; with `add_generation_prompt` the text ends with the opening of
    /// an assistant turn. Equal to `apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=..)` of `transformers`.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// [`Self::render`] with the functions the model may call, passed to the template as
    /// `tools` (OpenAI's `[{"type": "function", "function": {..}}]`, as `transformers` does).
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        self.render_with_kwargs(messages, tools, add_generation_prompt, None)
    }

    /// [`Self::render_with_tools`] with extra template variables, as `apply_chat_template(..,
    /// **kwargs)` passes them (vLLM's `chat_template_kwargs`): Qwen3's `enable_thinking`,
    /// DeepSeek-V3.1's `thinking`. They cannot replace the conversation's own variables.
    pub fn render_with_kwargs(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
        kwargs: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<String, TokenizerError> {
        let messages: Vec<TemplateMessage<'_>> = messages
            .iter()
            .map(|m| TemplateMessage {
                thinking: m.reasoning_content.as_deref(),
                role: &m.role,
                content: (!m.content.is_empty() || m.tool_calls.is_empty())
                    .then_some(m.content.as_str()),
                reasoning_content: m.reasoning_content.as_deref(),
                tool_calls: m
                    .tool_calls
                    .iter()
                    .map(|c| template_call(c, self.args_as_mapping))
                    .collect(),
                tool_call_id: m.tool_call_id.as_deref(),
                name: m.name.as_deref(),
            })
            .collect();
        let tools = match tools {
            Some(t) if !t.is_empty() => Value::from_serialize(t),
            _ => Value::from(()),
        };
        let mut ctx = vec![
            ("messages", Value::from_serialize(&messages)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("tools", tools),
            ("documents", Value::from(())),
        ];
        if let Some(b) = &self.bos_token {
            ctx.push(("bos_token", Value::from(b.as_str())));
        }
        if let Some(e) = &self.eos_token {
            ctx.push(("eos_token", Value::from(e.as_str())));
        }
        let mut ctx: Vec<(String, Value)> =
            ctx.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        for (k, v) in kwargs.into_iter().flatten() {
            if ctx.iter().any(|(name, _)| name == k) {
                return Err(TokenizerError::TemplateRender(format!(
                    "chat_template_kwargs cannot set {k:?}: the conversation sets it"
                )));
            }
            ctx.push((k.clone(), Value::from_serialize(v)));
        }
        let ctx: Value = ctx.into_iter().collect();
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| TokenizerError::TemplateRender(e.to_string()))?;
        template.render(ctx).map_err(render_error)
    }
}

/// Marks the error `raise_exception` returns, so that it can be told from engine errors.
#[derive(Debug)]
struct Raised(String);

impl fmt::Display for Raised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

fn render_error(err: Error) -> TokenizerError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(raised) = e.downcast_ref::<Raised>() {
            return TokenizerError::TemplateRaised(raised.0.clone());
        }
        source = e.source();
    }
    let mut message = err.to_string();
    if err.kind() == ErrorKind::OutOfFuel {
        message.push_str(" (the template runs too long; it may loop over a huge range)");
    }
    TokenizerError::TemplateRender(message)
}

/// `raise_exception(message)`: the template rejects its input.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
}

/// `strftime_now(format)`: the local time, formatted like Python's `datetime.strftime`.
fn strftime_now(format: String) -> Result<String, Error> {
    use chrono::format::{Item, StrftimeItems};
    let items: Vec<Item<'_>> = StrftimeItems::new(&format).collect();
    if items.iter().any(|i| matches!(i, Item::Error)) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format string {format:?}"),
        ));
    }
    let mut out = String::new();
    write!(
        out,
        "{}",
        chrono::Local::now().format_with_items(items.iter())
    )
    .map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: cannot format {format:?}"),
        )
    })?;
    Ok(out)
}

/// Prints values as Python's `str()` does where Jinja2 and minijinja differ: `None`, `True`,
/// `False`.
fn python_formatter(
    out: &mut minijinja::Output,
    state: &State,
    value: &Value,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.write_str("None").map_err(Error::from),
        ValueKind::Bool => out
            .write_str(if value.is_true() { "True" } else { "False" })
            .map_err(Error::from),
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// Turns `{% generation %}` / `{% endgeneration %}` (transformers' assistant-mask tags) into an
/// always-true `if`, which renders the body unchanged and keeps the tags' whitespace control.
fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        // The closing `%}` comes after the opening `{%` (in `{%}` they overlap: no tag).
        let Some(len) = rest[start + 2..].find("%}").map(|i| i + 2) else {
            break;
        };
        let tag = &rest[start..start + len + 2];
        let inner = &tag[2..tag.len() - 2];
        let core = inner.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        out.push_str(&rest[..start]);
        match core {
            "generation" => out.push_str(&tag.replacen("generation", "if true", 1)),
            "endgeneration" => out.push_str(&tag.replacen("endgeneration", "endif", 1)),
            _ => out.push_str(tag),
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// The `tojson` filter of `transformers`: Python's `json.dumps(x, ensure_ascii=False,
/// indent=None, separators=None, sort_keys=False)`, so `{"a": 1, "b": [1, 2]}` with spaces and
/// no HTML escaping (minijinja's own filter writes compact, HTML-safe JSON).
fn tojson(value: &Value, kwargs: Kwargs) -> Result<String, Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;

    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.is_integer() => {
            Some(" ".repeat(v.as_i64().unwrap_or(0).clamp(0, 64) as usize))
        }
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                return Err(bad_arg(format!(
                    "tojson: indent must be an int or a string, not {v}"
                )))
            }
        },
    };
    let (item_sep, key_sep) = match separators {
        Some(v) if !v.is_none() => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => (
                    a.as_str().unwrap_or_default().to_string(),
                    b.as_str().unwrap_or_default().to_string(),
                ),
                _ => {
                    return Err(bad_arg(
                        "tojson: separators must be a pair of strings".into(),
                    ))
                }
            }
        }
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let writer = PyJson {
        ensure_ascii: ensure_ascii.unwrap_or(false),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    writer.value(&mut out, value, 0)?;
    Ok(out)
}

fn bad_arg(message: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, message)
}

/// Python's `json.dumps`, over minijinja values.
struct PyJson {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl PyJson {
    fn value(&self, out: &mut String, v: &Value, depth: usize) -> Result<(), Error> {
        if depth > MAX_JSON_DEPTH {
            return Err(bad_arg(format!(
                "tojson: nesting deeper than {MAX_JSON_DEPTH}"
            )));
        }
        match v.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number if v.is_integer() => out.push_str(&v.to_string()),
            ValueKind::Number => out.push_str(&py_float(f64::try_from(v.clone())?)),
            ValueKind::String => self.string(out, v.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.container(out, '[', ']', &items, depth, |out, item| {
                    self.value(out, item, depth + 1)
                })?;
            }
            ValueKind::Map => {
                let mut entries = Vec::new();
                for key in v.try_iter()? {
                    let item = v.get_item(&key)?;
                    entries.push((self.key(&key)?, item));
                }
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.container(out, '{', '}', &entries, depth, |out, (key, item)| {
                    self.string(out, key);
                    out.push_str(&self.key_sep);
                    self.value(out, item, depth + 1)
                })?;
            }
            kind => {
                return Err(bad_arg(format!(
                    "tojson: a value of type {kind} is not JSON serializable"
                )));
            }
        }
        Ok(())
    }

    fn container<T>(
        &self,
        out: &mut String,
        open: char,
        close: char,
        items: &[T],
        depth: usize,
        mut each: impl FnMut(&mut String, &T) -> Result<(), Error>,
    ) -> Result<(), Error> {
        out.push(open);
        if items.is_empty() {
            out.push(close);
            return Ok(());
        }
        let newline = |out: &mut String, level: usize| {
            if let Some(indent) = &self.indent {
                out.push('\n');
                for _ in 0..level {
                    out.push_str(indent);
                }
            }
        };
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(&self.item_sep);
            }
            newline(out, depth + 1);
            each(out, item)?;
        }
        newline(out, depth);
        out.push(close);
        Ok(())
    }

    /// A map key as Python's `json.dumps` converts it.
    fn key(&self, key: &Value) -> Result<String, Error> {
        Ok(match key.kind() {
            ValueKind::String => key.as_str().unwrap_or_default().to_string(),
            ValueKind::None => "null".into(),
            ValueKind::Bool => if key.is_true() { "true" } else { "false" }.into(),
            ValueKind::Number if key.is_integer() => key.to_string(),
            ValueKind::Number => py_float(f64::try_from(key.clone())?),
            kind => {
                return Err(bad_arg(format!(
                    "tojson: keys must be str, int, float, bool or None, not {kind}"
                )))
            }
        })
    }

    fn string(&self, out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !(' '..='~').contains(&c)) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// Python's `repr(float)`: shortest round-trip digits, exponent form outside `1e-4 <= |x| < 1e16`.
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let sci = format!("{:e}", f.abs()); // e.g. "1.5e-7": shortest digits, one before the point
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return f.to_string();
    };
    let Ok(exp) = exp.parse::<i32>() else {
        return f.to_string();
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if f < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let (int, frac) = if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                (
                    format!("{digits}{}", "0".repeat(int_len - digits.len())),
                    "0".to_string(),
                )
            } else {
                (digits[..int_len].to_string(), digits[int_len..].to_string())
            }
        } else {
            (
                "0".to_string(),
                format!("{}{digits}", "0".repeat((-exp - 1) as usize)),
            )
        };
        format!("{sign}{int}.{frac}")
    } else {
        let mantissa = if digits.len() == 1 {
            digits
        } else {
            format!("{}.{}", &digits[..1], &digits[1..])
        };
        format!(
            "{sign}{mantissa}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            reasoning_content: None,
            ..ChatMessage::default()
        }
    }

    fn render(source: &str) -> Result<String, TokenizerError> {
        ChatTemplate::new(source.into(), Some("<s>".into()), Some("</s>".into()))?
            .render(&[msg("user", "Hi")], true)
    }

    #[test]
    fn python_floats() {
        let cases = [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (123.25, "123.25"),
            (1e16, "1e+16"),
            (1.5e-7, "1.5e-07"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5, "-2.5"),
            (1e15, "1000000000000000.0"),
            (1.23456789, "1.23456789"),
        ];
        for (f, want) in cases {
            assert_eq!(py_float(f), want, "{f}");
        }
    }

    #[test]
    fn tojson_is_python_json_dumps() {
        let t = r#"{{ {"b": [1, 2.5, none, true], "a": "é\"<"} | tojson }}|{{ [] | tojson(indent=2) }}|{{ {"x": {"y": 1}} | tojson(indent=2) }}|{{ "é😀" | tojson(ensure_ascii=true) }}|{{ {"b": 1, "a": 2} | tojson(sort_keys=true, separators=[",", ":"]) }}"#;
        assert_eq!(
            render(t).unwrap(),
            "{\"b\": [1, 2.5, null, true], \"a\": \"é\\\"<\"}|[]|{\n  \"x\": {\n    \"y\": 1\n  }\n}|\"\\u00e9\\ud83d\\ude00\"|{\"a\":2,\"b\":1}"
        );
        assert!(matches!(
            render("{{ 1 | tojson(bogus=1) }}"),
            Err(TokenizerError::TemplateRender(_))
        ));
    }

    #[test]
    fn raise_exception_surfaces_the_message() {
        let err = render("{% if messages[0].role == 'user' %}{{ raise_exception('no users allowed') }}{% endif %}")
            .unwrap_err();
        match err {
            TokenizerError::TemplateRaised(m) => assert_eq!(m, "no users allowed"),
            other => panic!("wrong error: {other}"),
        }
    }

    #[test]
    fn syntax_errors_are_reported_at_compile_time() {
        let err = ChatTemplate::new("{% for m in messages %}{{ m.content }".into(), None, None)
            .unwrap_err();
        assert!(matches!(err, TokenizerError::TemplateSyntax(_)), "{err}");
        let err = ChatTemplate::new("{% if x %}".into(), None, None).unwrap_err();
        assert!(err.to_string().contains("syntax error"), "{err}");
    }

    #[test]
    fn unknown_functions_and_filters_fail_at_render_time() {
        assert!(matches!(
            render("{{ no_such_function() }}"),
            Err(TokenizerError::TemplateRender(_))
        ));
        assert!(matches!(
            render("{{ 'x' | no_such_filter }}"),
            Err(TokenizerError::TemplateRender(_))
        ));
        assert!(matches!(
            render("{{ undefined_thing.attr }}"),
            Err(TokenizerError::TemplateRender(_))
        ));
    }

    #[test]
    fn runaway_templates_run_out_of_fuel() {
        let err = render(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        )
        .unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
    }

    #[test]
    fn fuel_is_counted_per_render() {
        // A loop step is at least three instructions: 60 renders of 100 000 steps need more
        // than the whole budget of one render.
        let t = ChatTemplate::new(
            "{% for i in range(100000) %}{% endfor %}ok".into(),
            None,
            None,
        )
        .unwrap();
        for _ in 0..60 {
            assert_eq!(t.render(&[], false).unwrap(), "ok");
        }
    }

    #[test]
    fn hf_globals_and_python_methods() {
        let t = "{{ bos_token }}{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}\
                 {{ m.content.strip().upper() }}{{ '  a,b '.split(',')[-1].strip() }}{{ m.role.startswith('us') }}{% endfor %}\
                 {{ ns.n }}{{ none }}{{ tools is none }}{{ eos_token }}";
        assert_eq!(render(t).unwrap(), "<s>HIbTrue1NoneTrue</s>");
        let year = render("{{ strftime_now('%Y') }}").unwrap();
        assert_eq!(year.len(), 4, "{year}");
        assert!(year.parse::<u32>().is_ok(), "{year}");
        assert!(matches!(
            render("{{ strftime_now('%Q %') }}"),
            Err(TokenizerError::TemplateRender(_))
        ));
    }

    #[test]
    fn trim_and_lstrip_blocks_like_transformers() {
        let t = "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n";
        assert_eq!(render(t).unwrap(), "[Hi]\n");
    }

    #[test]
    fn generation_tags_render_their_body() {
        let t = "{% for m in messages %}{%- generation -%} {{ m.content }} {%- endgeneration -%}{% endfor %}";
        assert_eq!(render(t).unwrap(), "Hi");
        assert_eq!(
            without_generation_tags("{% generation %}x{% endgeneration %}"),
            "{% if true %}x{% endif %}"
        );
        // Found by the fuzzer (crates/cli/tests/fuzz.rs): overlapping `{%}` panicked.
        assert_eq!(without_generation_tags("a{%}b"), "a{%}b");
        assert!(ChatTemplate::new("{%}{{ x }}".into(), None, None).is_err());
    }

    #[test]
    fn reasoning_content_is_also_thinking() {
        let t = "{% for m in messages %}{{ m.reasoning_content }}|{{ m.thinking }}|{{ m | tojson }}{% endfor %}";
        let m = ChatMessage {
            role: "assistant".into(),
            content: "A".into(),
            reasoning_content: Some("R".into()),
            ..ChatMessage::default()
        };
        let out = ChatTemplate::new(t.into(), None, None)
            .unwrap()
            .render(&[m], false)
            .unwrap();
        assert_eq!(
            out,
            r#"R|R|{"thinking": "R", "role": "assistant", "content": "A", "reasoning_content": "R"}"#
        );
    }
}
