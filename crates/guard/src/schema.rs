//! Output validation against a JSON Schema (a request's `response_format: json_schema`).
//!
//! Decoding is not constrained, so the answer is checked after the fact and the result goes
//! to the response's headers, the metrics and the audit log. The validator is the
//! `jsonschema` crate (draft 2020-12 unless the schema's `$schema` names another), built
//! without its remote resolvers: a `$ref` resolves inside the schema or not at all. Its
//! errors are reworded here into short sentences that name the place in the answer (a JSON
//! Pointer) and the keyword broken; a schema that does not compile is one violation at the
//! root, so a bad schema flags the answer instead of passing it.

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::ValidationError;
use serde_json::Value;

/// Why a value does not match its schema: a JSON Pointer into the value and the rule broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaViolation {
    /// Where, e.g. `/items/2/name` (empty for the whole value).
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// The JSON Schema keyword broken, e.g. `minLength`; `None` when the answer is not JSON
    /// or the schema does not compile.
    pub keyword: Option<String>,
}

impl std::fmt::Display for SchemaViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(f, "at {at}: {}", self.message)?;
        match &self.keyword {
            Some(k) => write!(f, " ({k})"),
            None => Ok(()),
        }
    }
}

/// Checks `text` (the model's answer) against `schema`: the first few violations, empty when
/// it matches. An answer that is not JSON at all is one violation at the root, and so is a
/// schema that does not compile (its error says which keyword and where).
pub fn validate_json(text: &str, schema: &Value) -> Vec<SchemaViolation> {
    let root = |message: String| {
        vec![SchemaViolation {
            path: String::new(),
            message,
            keyword: None,
        }]
    };
    let value: Value = match serde_json::from_str(text.trim()) {
        Ok(v) => v,
        Err(e) => return root(format!("the answer is not JSON: {e}")),
    };
    let validator = match jsonschema::validator_for(schema) {
        Ok(v) => v,
        Err(e) => {
            // Checked against the meta-schema, so the instance path is the place in `schema`.
            let at = e.instance_path().as_str();
            let at = if at.is_empty() {
                String::new()
            } else {
                format!(" at {at}")
            };
            return root(format!("the schema is not valid JSON Schema{at}: {e}"));
        }
    };
    let mut out = Vec::new();
    for e in validator.iter_errors(&value) {
        describe(&e, &mut out);
        if out.len() >= MAX_VIOLATIONS {
            break;
        }
    }
    out.truncate(MAX_VIOLATIONS);
    out
}

const MAX_VIOLATIONS: usize = 8;

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

/// One `jsonschema` error as violations (one per unexpected property, else one).
fn describe(e: &ValidationError<'_>, out: &mut Vec<SchemaViolation>) {
    let v: &Value = e.instance();
    let path = e.instance_path().as_str().to_string();
    let keyword = Some(e.kind().keyword().to_string());
    let chars = || v.as_str().map_or(0, |t| t.chars().count());
    let items = || v.as_array().map_or(0, Vec::len);
    let message = match e.kind() {
        ValidationErrorKind::Type { kind } => {
            let expected: Vec<String> = match kind {
                TypeKind::Single(t) => vec![t.to_string()],
                TypeKind::Multiple(ts) => ts.iter().map(|t| t.to_string()).collect(),
            };
            format!("expected {}, found {}", expected.join(" or "), type_name(v))
        }
        ValidationErrorKind::Enum { options } => format!("{v} is not one of {options}"),
        ValidationErrorKind::Constant { expected_value } => {
            format!("expected {expected_value}, found {v}")
        }
        ValidationErrorKind::Minimum { limit } => format!("{v} is below the minimum {limit}"),
        ValidationErrorKind::Maximum { limit } => format!("{v} is above the maximum {limit}"),
        ValidationErrorKind::ExclusiveMinimum { limit } => format!("{v} is not above {limit}"),
        ValidationErrorKind::ExclusiveMaximum { limit } => format!("{v} is not below {limit}"),
        ValidationErrorKind::MinLength { limit } => {
            format!("{} characters, fewer than {limit}", chars())
        }
        ValidationErrorKind::MaxLength { limit } => {
            format!("{} characters, more than {limit}", chars())
        }
        ValidationErrorKind::Pattern { pattern } => format!("{v} does not match {pattern:?}"),
        ValidationErrorKind::MinItems { limit } => {
            format!("{} items, fewer than {limit}", items())
        }
        ValidationErrorKind::MaxItems { limit } => format!("{} items, more than {limit}", items()),
        ValidationErrorKind::Required { property } => {
            format!("the required property {property} is missing")
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            // One per property, at the property, as a reader looks for it.
            for k in unexpected {
                out.push(SchemaViolation {
                    path: format!("{path}/{}", k.replace('~', "~0").replace('/', "~1")),
                    message: format!("the property {k:?} is not allowed"),
                    keyword: keyword.clone(),
                });
            }
            return;
        }
        ValidationErrorKind::FalseSchema => "no value is allowed here".into(),
        ValidationErrorKind::AnyOf { .. } => "none of the anyOf schemas match".into(),
        ValidationErrorKind::OneOfNotValid { .. } => "none of the oneOf schemas match".into(),
        ValidationErrorKind::OneOfMultipleValid { .. } => {
            "more than one of the oneOf schemas match".into()
        }
        // The rest (uniqueItems, multipleOf, contains, not, ...) in the crate's words, with
        // the value left out: at the root it is the whole answer.
        _ => e.masked().to_string(),
    };
    out.push(SchemaViolation {
        path,
        message,
        keyword,
    });
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
        // A schema that refers to itself does not recurse forever. Such a loop constrains
        // nothing (the specification leaves it undefined; `jsonschema` skips it, where the
        // hand-written validator flagged it at a depth limit), so its other keywords decide.
        let s = json!({"$ref": "#"});
        assert!(validate_json("1", &s).is_empty());
        let s = json!({"$ref": "#", "type": "string"});
        assert!(!validate_json("1", &s).is_empty());
        let s = json!({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
            "$ref": "#/$defs/a", "minimum": 2});
        assert!(!validate_json("1", &s).is_empty());
    }

    #[test]
    fn violations_name_the_keyword() {
        let v = validate_json(r#"{"name": "Rex", "age": -1}"#, &schema());
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].keyword.as_deref(), Some("minimum"));
        assert_eq!(
            v[0].to_string(),
            "at /age: -1 is below the minimum 0 (minimum)"
        );
        let v = validate_json(
            r#"{"name": "Rex", "age": 1, "tags": ["a", "a"]}"#,
            &json!({
                "properties": {"tags": {"uniqueItems": true}}
            }),
        );
        assert_eq!(v[0].path, "/tags");
        assert_eq!(v[0].keyword.as_deref(), Some("uniqueItems"), "{v:?}");
        assert_eq!(v[0].message, "value has non-unique elements");
    }

    #[test]
    fn a_schema_that_does_not_compile_is_one_violation_naming_it() {
        for (schema, what) in [
            (json!({"type": "strin"}), "strin"),
            (json!({"properties": {"a": {"pattern": "("}}}), "pattern"),
            (json!({"$ref": "#/$defs/missing"}), "missing"),
            // No remote resolving: the reference is not fetched.
            (
                json!({"$ref": "https://example.com/schema.json"}),
                "example.com",
            ),
        ] {
            let v = validate_json(r#"{"a": "x"}"#, &schema);
            assert_eq!(v.len(), 1, "{schema}: {v:?}");
            assert_eq!(v[0].path, "");
            assert!(
                v[0].message
                    .starts_with("the schema is not valid JSON Schema")
                    && v[0].message.contains(what),
                "{schema}: {}",
                v[0]
            );
        }
    }
}
