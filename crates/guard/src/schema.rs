//! Output validation against a JSON Schema (a request's `response_format: json_schema`).
//!
//! Decoding is not constrained, so the answer is checked after the fact and the result goes
//! to the response's headers, the metrics and the audit log. The validator covers the part
//! of JSON Schema (draft 2020-12) that OpenAI's structured outputs accept: `type` (one or a
//! list), `properties`, `required`, `additionalProperties` (bool or schema), `items`,
//! `minItems`/`maxItems`, `enum`, `const`, `minimum`/`maximum`/`exclusiveMinimum`/
//! `exclusiveMaximum`, `minLength`/`maxLength`, `pattern`, `anyOf`/`oneOf`/`allOf`, and
//! local `$ref`s (`#/$defs/..`, `#/definitions/..`). Unknown keywords are ignored, as the
//! specification says.

use serde_json::Value;

/// Why a value does not match its schema: a JSON Pointer into the value and the rule broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaViolation {
    /// Where, e.g. `/items/2/name` (empty for the whole value).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for SchemaViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(f, "at {at}: {}", self.message)
    }
}

/// Checks `text` (the model's answer) against `schema`: the first few violations, empty when
/// it matches. An answer that is not JSON at all is one violation at the root.
pub fn validate_json(text: &str, schema: &Value) -> Vec<SchemaViolation> {
    let value: Value = match serde_json::from_str(text.trim()) {
        Ok(v) => v,
        Err(e) => {
            return vec![SchemaViolation {
                path: String::new(),
                message: format!("the answer is not JSON: {e}"),
            }]
        }
    };
    let mut out = Vec::new();
    check(&value, schema, schema, "", &mut out, 0);
    out.truncate(MAX_VIOLATIONS);
    out
}

const MAX_VIOLATIONS: usize = 8;
const MAX_DEPTH: usize = 64;

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_type(v: &Value, t: &str) -> bool {
    let actual = type_name(v);
    actual == t
        || (t == "number" && actual == "integer")
        || (t == "integer" && v.as_f64().is_some_and(|f| f.fract() == 0.0))
}

fn resolve<'a>(root: &'a Value, r: &str) -> Option<&'a Value> {
    let path = r.strip_prefix('#')?;
    root.pointer(path)
}

fn check(
    v: &Value,
    s: &Value,
    root: &Value,
    path: &str,
    out: &mut Vec<SchemaViolation>,
    depth: usize,
) {
    let mut fail = |m: String| {
        out.push(SchemaViolation {
            path: path.to_string(),
            message: m,
        })
    };
    if depth > MAX_DEPTH {
        return fail("the schema nests (or refers to itself) too deeply".into());
    }
    let Some(s) = s.as_object() else {
        if s == &Value::Bool(false) {
            fail("no value is allowed here".into());
        }
        return;
    };
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        match resolve(root, r) {
            Some(target) => check(v, target, root, path, out, depth + 1),
            None => fail(format!(
                "the schema refers to {r:?}, which it does not define"
            )),
        }
        return;
    }
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !types.is_empty() && !types.iter().any(|t| is_type(v, t)) {
            return fail(format!(
                "expected {}, found {}",
                types.join(" or "),
                type_name(v)
            ));
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            fail(format!("{v} is not one of {}", Value::Array(e.clone())));
        }
    }
    if let Some(c) = s.get("const") {
        if c != v {
            fail(format!("expected {c}, found {v}"));
        }
    }
    if let Some(x) = v.as_f64() {
        let num = |k: &str| s.get(k).and_then(Value::as_f64);
        if let Some(m) = num("minimum").filter(|m| x < *m) {
            fail(format!("{x} is below the minimum {m}"));
        }
        if let Some(m) = num("maximum").filter(|m| x > *m) {
            fail(format!("{x} is above the maximum {m}"));
        }
        if let Some(m) = num("exclusiveMinimum").filter(|m| x <= *m) {
            fail(format!("{x} is not above {m}"));
        }
        if let Some(m) = num("exclusiveMaximum").filter(|m| x >= *m) {
            fail(format!("{x} is not below {m}"));
        }
    }
    if let Some(text) = v.as_str() {
        let n = text.chars().count() as u64;
        if let Some(m) = s
            .get("minLength")
            .and_then(Value::as_u64)
            .filter(|m| n < *m)
        {
            fail(format!("{n} characters, fewer than {m}"));
        }
        if let Some(m) = s
            .get("maxLength")
            .and_then(Value::as_u64)
            .filter(|m| n > *m)
        {
            fail(format!("{n} characters, more than {m}"));
        }
        if let Some(p) = s.get("pattern").and_then(Value::as_str) {
            match regex::Regex::new(p) {
                Ok(re) if !re.is_match(text) => fail(format!("{text:?} does not match {p:?}")),
                Ok(_) => {}
                Err(_) => fail(format!("the schema's pattern {p:?} is not a valid regex")),
            }
        }
    }
    if let Some(items) = v.as_array() {
        let n = items.len() as u64;
        if let Some(m) = s.get("minItems").and_then(Value::as_u64).filter(|m| n < *m) {
            fail(format!("{n} items, fewer than {m}"));
        }
        if let Some(m) = s.get("maxItems").and_then(Value::as_u64).filter(|m| n > *m) {
            fail(format!("{n} items, more than {m}"));
        }
        if let Some(item) = s.get("items") {
            for (i, x) in items.iter().enumerate() {
                check(x, item, root, &format!("{path}/{i}"), out, depth + 1);
            }
        }
    }
    if let Some(obj) = v.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        for r in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(k) = r.as_str().filter(|k| !obj.contains_key(*k)) {
                out.push(SchemaViolation {
                    path: path.to_string(),
                    message: format!("the required property {k:?} is missing"),
                });
            }
        }
        for (k, x) in obj {
            let sub = format!("{path}/{}", k.replace('~', "~0").replace('/', "~1"));
            match (props.and_then(|p| p.get(k)), s.get("additionalProperties")) {
                (Some(ps), _) => check(x, ps, root, &sub, out, depth + 1),
                (None, Some(Value::Bool(false))) => out.push(SchemaViolation {
                    path: sub,
                    message: format!("the property {k:?} is not allowed"),
                }),
                (None, Some(extra @ Value::Object(_))) => {
                    check(x, extra, root, &sub, out, depth + 1)
                }
                _ => {}
            }
        }
    }
    for (kw, need) in [("allOf", usize::MAX), ("anyOf", 1), ("oneOf", 0)] {
        let Some(subs) = s.get(kw).and_then(Value::as_array) else {
            continue;
        };
        let passing = subs
            .iter()
            .filter(|sub| {
                let mut o = Vec::new();
                check(v, sub, root, path, &mut o, depth + 1);
                o.is_empty()
            })
            .count();
        let ok = match kw {
            "allOf" => passing == subs.len(),
            "anyOf" => passing >= need,
            _ => passing == 1,
        };
        if !ok {
            out.push(SchemaViolation {
                path: path.to_string(),
                message: format!("{passing} of the {} {kw} schemas match", subs.len()),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "age": {"type": "integer", "minimum": 0, "maximum": 150},
                "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}, "maxItems": 3},
                "kind": {"enum": ["cat", "dog"]}
            },
            "required": ["name", "age"],
            "additionalProperties": false,
            "$defs": {"tag": {"type": "string", "pattern": "^[a-z]+$"}}
        })
    }

    #[test]
    fn a_matching_answer_passes() {
        let ok = r#" {"name": "Rex", "age": 3, "tags": ["good", "old"], "kind": "dog"} "#;
        assert_eq!(validate_json(ok, &schema()), vec![]);
    }

    #[test]
    fn each_rule_names_the_place() {
        let v = validate_json(
            r#"{"name": "", "age": 3.5, "tags": ["ok", "NO", "a", "b"], "kind": "cow", "x": 1}"#,
            &schema(),
        );
        let text: Vec<String> = v.iter().map(|e| e.to_string()).collect();
        let has = |s: &str| text.iter().any(|t| t.contains(s));
        assert!(has("at /name: 0 characters, fewer than 1"), "{text:?}");
        assert!(has("at /age: expected integer, found number"), "{text:?}");
        assert!(has("at /tags: 4 items, more than 3"), "{text:?}");
        assert!(has("at /tags/1:"), "{text:?}");
        assert!(has("at /kind:"), "{text:?}");
        assert!(has("the property \"x\" is not allowed"), "{text:?}");
        let v = validate_json(r#"{"age": 3}"#, &schema());
        assert_eq!(v[0].message, "the required property \"name\" is missing");
    }

    #[test]
    fn not_json_and_combinators() {
        assert!(validate_json("Sure! {\"a\": 1}", &json!({}))[0]
            .message
            .contains("not JSON"));
        let s = json!({"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 10}]});
        assert!(validate_json("3", &s).is_empty());
        assert!(!validate_json("12", &s).is_empty(), "both match: not oneOf");
        let s = json!({"anyOf": [{"type": "string"}, {"type": "null"}]});
        assert!(validate_json("null", &s).is_empty());
        assert!(!validate_json("1", &s).is_empty());
        // A schema that refers to itself does not recurse forever.
        let s = json!({"$ref": "#"});
        assert!(!validate_json("1", &s).is_empty());
    }
}
