//! Policy errors name the file, line and column, the field, and the fix.

use seek_guard::{Policy, PolicyError};

/// The error for a policy text, as (line, col, field, full message).
fn error(text: &str) -> (usize, usize, String, String) {
    let e = Policy::from_toml(text, "p.toml").expect_err("policy should be refused");
    let shown = e.to_string();
    match e {
        PolicyError::Invalid {
            line,
            col,
            field,
            fix,
            ..
        } => {
            assert!(
                shown.starts_with(&format!("p.toml:{line}:{col}: ")),
                "{shown}"
            );
            assert!(!fix.is_empty() && shown.contains("---> fix: "), "{shown}");
            (line, col, field, shown)
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn unknown_fields_are_refused_with_their_position() {
    let (line, col, field, msg) = error("name = \"x\"\nnmae = \"y\"\n");
    assert_eq!((line, col, field.as_str()), (2, 1, "nmae"));
    assert!(
        msg.contains("unknown field `nmae`") && msg.contains("did you mean `name`?"),
        "{msg}"
    );

    let text = "name = \"x\"\n\n[[input.rails]]\ntype = \"pii\"\naction = \"redact\"\nkind = [\"email\"]\n";
    let (line, _, field, msg) = error(text);
    assert_eq!((line, field.as_str()), (6, "kind"), "{msg}");
    assert!(msg.contains("did you mean `kinds`?"), "{msg}");
    let (_, _, _, msg) = error("name = \"x\"\ncolour = 1\n");
    assert!(msg.contains("correct its spelling"), "no near field: {msg}");
}

#[test]
fn fields_of_another_rail_type_name_their_owner() {
    let text =
        "name = \"x\"\n[[input.rails]]\ntype = \"pii\"\naction = \"flag\"\ncase_sensitive = true\n";
    let (line, col, field, msg) = error(text);
    assert_eq!((line, col), (5, 18));
    assert_eq!(field, "[[input.rails]] case_sensitive");
    assert!(
        msg.contains("does not apply to a pii rail (it belongs to: words, regex)"),
        "{msg}"
    );
}

#[test]
fn bad_values_point_at_the_value() {
    // Unknown action.
    let (line, col, field, msg) = error(
        "name = \"x\"\n[[input.rails]]\ntype = \"words\"\naction = \"deny\"\nwords = [\"a\"]\n",
    );
    assert_eq!((line, col, field.as_str()), (4, 10, "action"), "{msg}");
    assert!(msg.contains("`block`, `redact`"), "{msg}");
    // Unknown PII kind, inside the list.
    let (line, col, _, msg) = error(
        "name = \"x\"\n[[input.rails]]\ntype = \"pii\"\naction = \"flag\"\nkinds = [\"email\", \"passport\"]\n",
    );
    assert_eq!((line, col), (5, 19), "{msg}");
    assert!(
        msg.contains("unknown kind \"passport\"") && msg.contains("credit_card"),
        "{msg}"
    );
    // A regex that does not compile.
    let (line, _, field, msg) = error(
        "name = \"x\"\n[[input.rails]]\ntype = \"regex\"\naction = \"flag\"\npatterns = [\n  { name = \"ok\", pattern = 'a+' },\n  { name = \"bad\", pattern = '(unclosed' },\n]\n",
    );
    assert_eq!(
        (line, field.as_str()),
        (7, "[[input.rails]] patterns.pattern"),
        "{msg}"
    );
    assert!(msg.contains("pattern \"bad\" does not compile"), "{msg}");
    // A regex that matches everything.
    let (_, _, _, msg) = error(
        "name = \"x\"\n[[input.rails]]\ntype = \"regex\"\naction = \"flag\"\npatterns = [{ name = \"e\", pattern = 'x*' }]\n",
    );
    assert!(msg.contains("matches the empty string"), "{msg}");
    // A missing required field.
    let (line, _, field, msg) =
        error("name = \"x\"\n[[input.rails]]\ntype = \"words\"\nwords = [\"a\"]\n");
    assert_eq!((line, field.as_str()), (2, "action"), "{msg}");
    assert!(
        msg.contains("missing field `action`") && msg.contains("add it"),
        "{msg}"
    );
    // TOML syntax.
    let (line, _, field, _) = error("name = \"x\"\n[[input.rails]\n");
    assert_eq!((line, field.as_str()), (2, "syntax"));
}

#[test]
fn combinations_that_cannot_work_are_refused() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[[output.rails]]\ntype = \"pii\"\naction = \"redact\"\nmode = \"pseudonymise\"\n",
            "[[output.rails]] mode",
            "nobody would restore the tags",
        ),
        (
            "[[input.rails]]\ntype = \"judge\"\naction = \"block\"\nprompt = \"Is this safe?\"\n",
            "[[input.rails]] prompt",
            "no {text} placeholder",
        ),
        (
            "[[input.rails]]\ntype = \"judge\"\naction = \"redact\"\ntaxonomy = \"llama-guard-s1-s14\"\n",
            "[[input.rails]] action",
            "cannot redact",
        ),
        (
            "[[input.rails]]\ntype = \"judge\"\naction = \"block\"\ntaxonomy = \"llama-guard-s1-s14\"\ncategories = [\"S1\", \"S15\"]\n",
            "[[input.rails]] categories",
            "\"S15\" is not a hazard category",
        ),
        (
            "[[input.rails]]\ntype = \"judge\"\naction = \"block\"\ntaxonomy = \"llama-guard-s1-s14\"\napi_key_env = \"KEY\"\n",
            "[[input.rails]] api_key_env",
            "only used with `url`",
        ),
        (
            "[[input.rails]]\ntype = \"judge\"\naction = \"block\"\ntaxonomy = \"llama-guard-s1-s14\"\nurl = \"localhost:8000\"\n",
            "[[input.rails]] url",
            "not an http(s) URL",
        ),
        (
            "[[input.rails]]\ntype = \"perplexity\"\naction = \"flag\"\n",
            "[[input.rails]] max_perplexity",
            "needs a threshold",
        ),
        (
            "[[input.rails]]\ntype = \"words\"\naction = \"flag\"\nwords = [\"a\"]\napply_to = [\"content\"]\n",
            "[[input.rails]] apply_to",
            "input rails check user messages",
        ),
        (
            "[[input.rails]]\ntype = \"words\"\nname = \"w\"\naction = \"flag\"\nwords = [\"a\"]\n[[input.rails]]\ntype = \"words\"\nname = \"w\"\naction = \"flag\"\nwords = [\"b\"]\n",
            "[[input.rails]] name",
            "used twice",
        ),
        (
            "[output]\noverlap = 8\n",
            "[output] overlap",
            "out of range",
        ),
        (
            "[output]\nmax_content_chars = 0\n",
            "[output] max_content_chars",
            "not a length",
        ),
    ];
    for (body, want_field, want_msg) in cases {
        let text = format!("name = \"x\"\n{body}");
        let (_, _, field, msg) = error(&text);
        assert_eq!(field, *want_field, "{msg}");
        assert!(msg.contains(want_msg), "{msg}");
    }
}

#[test]
fn unreadable_file_names_the_path() {
    let e = Policy::load(std::path::Path::new("/nonexistent/policy.toml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/policy.toml: cannot read"),
        "{e}"
    );
}

#[test]
fn rails_get_unique_default_names() {
    let p = Policy::from_toml(
        "name = \"x\"\n[[input.rails]]\ntype = \"pii\"\naction = \"flag\"\n[[input.rails]]\ntype = \"pii\"\naction = \"redact\"\n",
        "p.toml",
    )
    .unwrap();
    let names: Vec<&str> = p
        .rule_rails(seek_guard::Stage::Input)
        .iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(names, ["pii", "pii_2"]);
}
