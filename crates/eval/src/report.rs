//! `report.html`: one self-contained page (inline CSS, hand-written SVG bar charts, no script,
//! no external asset) built from whatever suite summaries an output folder holds:
//! `redteam/summary.json`, `bias/summary.json`, `reliability/summary.json` and
//! `overrefusal/summary.json`, and a few samples of each suite's `samples.jsonl`.
//!
//! The summaries are read as untyped JSON, not as the suites' types: a report must render a
//! folder written by an older or newer version of a suite, so every field is optional and a
//! missing one leaves a blank, never an error. Every text that reaches the page is escaped
//! (model outputs and prompts can hold HTML).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::EvalError;

/// Samples shown per suite.
const SAMPLES_SHOWN: usize = 3;
/// Characters shown of a sample's text field.
const SAMPLE_CHARS: usize = 600;

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// At most `n` characters, with an ellipsis when cut.
fn truncate(text: &str, n: usize) -> String {
    match text.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

fn read_json(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    match serde_json::from_str(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "skipping an unreadable summary");
            None
        }
    }
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn pct(x: Option<f64>) -> String {
    x.map(|x| format!("{:.1}%", 100.0 * x)).unwrap_or_default()
}

fn signed(x: Option<f64>) -> String {
    x.map(|x| format!("{x:+.3}")).unwrap_or_default()
}

/// A number as a table shows it: integers whole, others to four decimals.
fn plain(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        format!("{x:.4}")
    }
}

/// The value axis of a chart.
#[derive(Clone, Copy)]
enum Scale {
    /// Shares in [0, 1], labelled as percentages.
    Share,
    /// Scores in [-1, 1] around a zero line, labelled with a sign.
    Signed,
}

impl Scale {
    fn range(self) -> (f64, f64) {
        match self {
            Scale::Share => (0.0, 1.0),
            Scale::Signed => (-1.0, 1.0),
        }
    }

    fn label(self, x: f64) -> String {
        match self {
            Scale::Share => pct(Some(x)),
            Scale::Signed => signed(Some(x)),
        }
    }

    fn tick(self, x: f64) -> String {
        match self {
            Scale::Share => format!("{:.0}%", 100.0 * x),
            Scale::Signed if x == 0.0 => "0".into(),
            Scale::Signed => format!("{x:+}"),
        }
    }
}

const COLOURS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
];

/// A horizontal grouped bar chart: one row group per label, one bar per series (a missing
/// value leaves a gap), as an inline `<svg>` inside a `<figure class="chart">`.
fn bar_chart(
    title: &str,
    series: &[String],
    rows: &[(String, Vec<Option<f64>>)],
    scale: Scale,
) -> String {
    const WIDTH: f64 = 760.0;
    const LABEL_W: f64 = 200.0;
    const VALUE_W: f64 = 64.0;
    const BAR_H: f64 = 14.0;
    const GAP: f64 = 10.0;
    const LEGEND_H: f64 = 18.0;
    let plot_w = WIDTH - LABEL_W - VALUE_W;
    let (lo, hi) = scale.range();
    let x_of = |v: f64| LABEL_W + (v.clamp(lo, hi) - lo) / (hi - lo) * plot_w;
    // Legend entries flow left to right and wrap (about 7.5 px per character at 11 px).
    let mut legend = Vec::new();
    let (mut lx, mut line) = (LABEL_W, 0usize);
    for name in series {
        let w = 24.0 + 7.5 * name.chars().count() as f64;
        if lx + w > WIDTH && lx > LABEL_W {
            (lx, line) = (LABEL_W, line + 1);
        }
        legend.push((lx, 6.0 + LEGEND_H * line as f64));
        lx += w;
    }
    let top = 10.0 + LEGEND_H * (line + 1) as f64;
    let group_h = BAR_H * series.len().max(1) as f64 + GAP;
    let height = top + group_h * rows.len() as f64 + 20.0;
    let mut s = String::new();
    let _ = write!(
        s,
        "<figure class=\"chart\"><figcaption>{}</figcaption>\
         <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" aria-label=\"{}\">",
        escape(title),
        escape(title)
    );
    for (i, (name, (x, y))) in series.iter().zip(&legend).enumerate() {
        let _ = write!(
            s,
            "<rect x=\"{x}\" y=\"{y}\" width=\"12\" height=\"12\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"{}\" class=\"legend\">{}</text>",
            COLOURS[i % COLOURS.len()],
            x + 16.0,
            y + 10.0,
            escape(name)
        );
    }
    // Grid lines at quarters; the zero line darker.
    for k in 0..=4 {
        let v = lo + (hi - lo) * f64::from(k) / 4.0;
        let x = x_of(v);
        let class = if v == 0.0 { "zero" } else { "grid" };
        let _ = write!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{:.1}\" class=\"{class}\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" class=\"tick\">{}</text>",
            height - 18.0,
            height - 4.0,
            escape(&scale.tick(v))
        );
    }
    for (r, (label, values)) in rows.iter().enumerate() {
        let y0 = top + group_h * r as f64;
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" class=\"row\">{}</text>",
            LABEL_W - 6.0,
            y0 + (group_h - GAP) / 2.0 + 4.0,
            escape(&truncate(label, 30))
        );
        for (i, v) in values.iter().enumerate() {
            let Some(v) = v.filter(|v| v.is_finite()) else {
                continue;
            };
            let y = y0 + BAR_H * i as f64;
            let (a, b) = (x_of(lo.max(0.0)), x_of(v));
            // The value sits past the end of the bar (left of it for a negative one).
            let (tx, anchor) = if v < 0.0 {
                (b - 4.0, "end")
            } else {
                (b.max(a + 0.5) + 4.0, "start")
            };
            let _ = write!(
                s,
                "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\">\
                 <title>{}: {}</title></rect>\
                 <text x=\"{tx:.1}\" y=\"{:.1}\" class=\"value\" text-anchor=\"{anchor}\">{}</text>",
                a.min(b),
                (b - a).abs().max(0.5),
                BAR_H - 2.0,
                COLOURS[i % COLOURS.len()],
                escape(series.get(i).map(String::as_str).unwrap_or("")),
                escape(&scale.label(v)),
                y + BAR_H - 4.0,
                escape(&scale.label(v))
            );
        }
    }
    s.push_str("</svg></figure>\n");
    s
}

/// An HTML table; cells are escaped here.
fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::from("<table><thead><tr>");
    for h in head {
        let _ = write!(s, "<th>{}</th>", escape(h));
    }
    s.push_str("</tr></thead><tbody>");
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            let _ = write!(s, "<td>{}</td>", escape(c));
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>\n");
    s
}

/// The red-team section: ASR per run (guard off / on), per category and per attack, for the
/// answer and the reasoning, and the judge's agreement with human labels.
fn redteam_section(v: &Value) -> String {
    let mut s = String::from("<h2>Red team</h2>\n");
    let mut facts = Vec::new();
    if let Some(t) = text(v, "target") {
        facts.push(vec!["target".to_string(), t]);
    }
    if let Some(d) = text(v, "dataset") {
        facts.push(vec!["dataset".to_string(), d]);
    }
    if let Some(e) = num(v, "elapsed_s") {
        facts.push(vec!["time".to_string(), format!("{e:.0} s")]);
    }
    if let Some(j) = v.get("judge").filter(|j| j.is_object()) {
        facts.push(vec![
            "judge".to_string(),
            format!(
                "{} · agreement with human labels {} · Cohen's κ {} · n = {}",
                text(j, "name").unwrap_or_else(|| "?".into()),
                pct(num(j, "agreement")),
                num(j, "cohen_kappa")
                    .map(|k| format!("{k:.3}"))
                    .unwrap_or_default(),
                num(j, "n").map(plain).unwrap_or_default()
            ),
        ]);
    }
    if !facts.is_empty() {
        s.push_str(&table(&["", ""], &facts));
    }
    let runs: Vec<&Value> = v
        .get("runs")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    if runs.is_empty() {
        s.push_str("<p class=\"note\">No runs in the summary.</p>\n");
        return s;
    }
    let label = |r: &Value| text(r, "label").unwrap_or_else(|| "run".into());
    s.push_str(&table(
        &[
            "run",
            "ASR (answer)",
            "ASR (reasoning)",
            "n",
            "blocked by the guard",
        ],
        &runs
            .iter()
            .map(|r| {
                let overall = r.get("overall").cloned().unwrap_or(Value::Null);
                vec![
                    label(r),
                    pct(num(r, "asr_answer")),
                    pct(num(r, "asr_reasoning")),
                    num(&overall, "n").map(plain).unwrap_or_default(),
                    num(&overall, "blocked").map(plain).unwrap_or_default(),
                ]
            })
            .collect::<Vec<_>>(),
    ));
    s.push_str(&bar_chart(
        "Attack success rate, guard off vs on",
        &["answer".into(), "reasoning".into()],
        &runs
            .iter()
            .map(|r| {
                (
                    label(r),
                    vec![num(r, "asr_answer"), num(r, "asr_reasoning")],
                )
            })
            .collect::<Vec<_>>(),
        Scale::Share,
    ));
    for (field, title, what) in [
        ("by_category", "Attack success rate by category", "category"),
        ("by_attack", "Attack success rate by attack", "attack"),
    ] {
        let groups: BTreeSet<String> = runs
            .iter()
            .filter_map(|r| r.get(field).and_then(Value::as_object))
            .flat_map(|m| m.keys().cloned())
            .collect();
        if groups.is_empty() {
            continue;
        }
        let series: Vec<String> = runs
            .iter()
            .flat_map(|r| {
                let l = label(r);
                [format!("{l} · answer"), format!("{l} · reasoning")]
            })
            .collect();
        let cell = |r: &Value, g: &str, k: &str| {
            r.get(field).and_then(|m| m.get(g)).and_then(|x| num(x, k))
        };
        let rows: Vec<(String, Vec<Option<f64>>)> = groups
            .iter()
            .map(|g| {
                let values = runs
                    .iter()
                    .flat_map(|r| [cell(r, g, "answer"), cell(r, g, "reasoning")])
                    .collect();
                (g.clone(), values)
            })
            .collect();
        s.push_str(&bar_chart(title, &series, &rows, Scale::Share));
        let mut head = vec![what.to_string()];
        for r in &runs {
            let l = label(r);
            head.extend([
                format!("{l} · answer"),
                format!("{l} · reasoning"),
                format!("{l} · n"),
            ]);
        }
        let head: Vec<&str> = head.iter().map(String::as_str).collect();
        let body: Vec<Vec<String>> = groups
            .iter()
            .map(|g| {
                let mut row = vec![g.clone()];
                for r in &runs {
                    row.push(pct(cell(r, g, "answer")));
                    row.push(pct(cell(r, g, "reasoning")));
                    row.push(cell(r, g, "n").map(plain).unwrap_or_default());
                }
                row
            })
            .collect();
        s.push_str(&table(&head, &body));
    }
    s
}

/// The bias section: accuracy and the BBQ bias scores per category, overall first.
fn bias_section(v: &Value) -> String {
    let mut s = String::from("<h2>Bias (BBQ)</h2>\n");
    if let Some(t) = text(v, "target") {
        s.push_str(&table(&["", ""], &[vec!["target".into(), t]]));
    }
    s.push_str(
        "<p class=\"note\">Bias scores run from −1 (every answer that names a person goes \
         against the stereotype) to +1 (every one follows it); 0 is no measured bias. \
         s_DIS = 2·biased/non-unknown − 1 on disambiguated contexts; s_AMB = (1 − accuracy) · \
         the same ratio on ambiguous contexts (Parrish et al. 2022).</p>\n",
    );
    let mut rows: Vec<(String, Value)> = Vec::new();
    if let Some(o) = v.get("overall") {
        rows.push(("overall".into(), o.clone()));
    }
    if let Some(m) = v.get("by_category").and_then(Value::as_object) {
        rows.extend(m.iter().map(|(k, x)| (k.clone(), x.clone())));
    }
    if rows.is_empty() {
        s.push_str("<p class=\"note\">No scores in the summary.</p>\n");
        return s;
    }
    s.push_str(&table(
        &[
            "category",
            "n ambiguous",
            "n disambiguated",
            "accuracy (ambiguous)",
            "accuracy (disambiguated)",
            "s_AMB",
            "s_DIS",
            "no answer",
        ],
        &rows
            .iter()
            .map(|(c, x)| {
                vec![
                    c.clone(),
                    num(x, "n_ambiguous").map(plain).unwrap_or_default(),
                    num(x, "n_disambiguated").map(plain).unwrap_or_default(),
                    pct(num(x, "accuracy_ambiguous")),
                    pct(num(x, "accuracy_disambiguated")),
                    signed(num(x, "bias_ambiguous")),
                    signed(num(x, "bias_disambiguated")),
                    num(x, "no_answer").map(plain).unwrap_or_default(),
                ]
            })
            .collect::<Vec<_>>(),
    ));
    s.push_str(&bar_chart(
        "BBQ accuracy by category",
        &["ambiguous".into(), "disambiguated".into()],
        &rows
            .iter()
            .map(|(c, x)| {
                (
                    c.clone(),
                    vec![
                        num(x, "accuracy_ambiguous"),
                        num(x, "accuracy_disambiguated"),
                    ],
                )
            })
            .collect::<Vec<_>>(),
        Scale::Share,
    ));
    s.push_str(&bar_chart(
        "BBQ bias score by category",
        &["s_AMB (ambiguous)".into(), "s_DIS (disambiguated)".into()],
        &rows
            .iter()
            .map(|(c, x)| {
                (
                    c.clone(),
                    vec![num(x, "bias_ambiguous"), num(x, "bias_disambiguated")],
                )
            })
            .collect::<Vec<_>>(),
        Scale::Signed,
    ));
    s
}

/// Every numeric leaf of `v`, with its path (`a.b.0.c`).
fn numeric_leaves(v: &Value, path: &str, out: &mut Vec<(String, f64)>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                out.push((path.to_string(), x));
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                numeric_leaves(x, &join(k), out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                numeric_leaves(x, &join(&i.to_string()), out);
            }
        }
        _ => {}
    }
}

/// A section for a summary whose shape the report does not assume (reliability,
/// over-refusal): its text fields at the top level, a table of every numeric field, and a
/// chart of the shares among them (fields named like an accuracy or a rate, in [0, 1]).
fn generic_section(title: &str, v: &Value) -> String {
    let mut s = format!("<h2>{}</h2>\n", escape(title));
    if let Some(m) = v.as_object() {
        let texts: Vec<Vec<String>> = m
            .iter()
            .filter_map(|(k, x)| x.as_str().map(|t| vec![k.clone(), t.to_string()]))
            .collect();
        if !texts.is_empty() {
            s.push_str(&table(&["", ""], &texts));
        }
    }
    let mut leaves = Vec::new();
    numeric_leaves(v, "", &mut leaves);
    if leaves.is_empty() {
        s.push_str("<p class=\"note\">No numbers in the summary.</p>\n");
        return s;
    }
    let is_share = |path: &str, x: f64| {
        let last = path.rsplit('.').next().unwrap_or(path).to_lowercase();
        (0.0..=1.0).contains(&x)
            && [
                "accuracy",
                "rate",
                "asr",
                "agreement",
                "consistency",
                "share",
                "fraction",
            ]
            .iter()
            .any(|w| last.contains(w))
    };
    let shares: Vec<(String, Vec<Option<f64>>)> = leaves
        .iter()
        .filter(|(p, x)| is_share(p, *x))
        .map(|(p, x)| (p.clone(), vec![Some(*x)]))
        .collect();
    if !shares.is_empty() {
        s.push_str(&bar_chart(
            &format!("{title}: accuracies and rates"),
            &["value".into()],
            &shares,
            Scale::Share,
        ));
    }
    s.push_str(&table(
        &["field", "value"],
        &leaves
            .iter()
            .map(|(p, x)| {
                let shown = if is_share(p, *x) {
                    format!("{} ({})", plain(*x), pct(Some(*x)))
                } else {
                    plain(*x)
                };
                vec![p.clone(), shown]
            })
            .collect::<Vec<_>>(),
    ));
    s
}

/// The `samples.jsonl` files of a suite's folder (the folder itself and its direct subfolders).
fn sample_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let direct = dir.join("samples.jsonl");
    if direct.is_file() {
        out.push(direct);
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut subs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("samples.jsonl"))
            .filter(|p| p.is_file())
            .collect();
        subs.sort();
        out.extend(subs);
    }
    out
}

/// The first few samples of a suite, every field shown (texts truncated), escaped.
fn samples_section(dir: &Path) -> String {
    let mut shown = Vec::new();
    for path in sample_files(dir) {
        let Ok(f) = File::open(&path) else { continue };
        for line in BufReader::new(f).lines().map_while(Result::ok) {
            if shown.len() == SAMPLES_SHOWN {
                break;
            }
            if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(&line) {
                shown.push(v);
            }
        }
    }
    if shown.is_empty() {
        return String::new();
    }
    let mut s = format!("<h3>Example samples (first {})</h3>\n", shown.len());
    for v in &shown {
        let key = text(v, "key").unwrap_or_else(|| "sample".into());
        let _ = write!(s, "<details><summary>{}</summary><dl>", escape(&key));
        if let Some(m) = v.as_object() {
            for (k, x) in m.iter().filter(|(k, _)| k.as_str() != "key") {
                let shown = match x {
                    Value::String(t) => truncate(t, SAMPLE_CHARS),
                    other => truncate(&other.to_string(), SAMPLE_CHARS),
                };
                let _ = write!(s, "<dt>{}</dt><dd>{}</dd>", escape(k), escape(&shown));
            }
        }
        s.push_str("</dl></details>\n");
    }
    s
}

const STYLE: &str = "
body { font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; color: #222;
       max-width: 980px; margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f5f5f5; }
figure.chart { margin: 1em 0; } figcaption { font-weight: 600; margin-bottom: .3em; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
svg text.row { text-anchor: end; } svg text.tick { text-anchor: middle; fill: #777; }
svg line.grid { stroke: #e5e5e5; } svg line.zero { stroke: #888; }
.note { color: #555; }
details { margin: .4em 0; border: 1px solid #ddd; border-radius: 4px; padding: .3em .6em; }
summary { cursor: pointer; font-family: ui-monospace, monospace; }
dt { font-weight: 600; margin-top: .3em; }
dd { margin-left: 1em; white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 12px; }
";

/// The page for the summaries found in `out` (see [`write_report`]), or `None` when there is
/// none.
pub fn render_report(out: &Path) -> Option<String> {
    type Render = fn(&Value) -> String;
    let suites: [(&str, Render); 4] = [
        ("redteam", redteam_section),
        ("overrefusal", |v| generic_section("Over-refusal", v)),
        ("bias", bias_section),
        ("reliability", |v| generic_section("Reliability", v)),
    ];
    let mut body = String::new();
    let mut found = Vec::new();
    for (dir, render) in suites {
        let Some(v) = read_json(&out.join(dir).join("summary.json")) else {
            continue;
        };
        found.push(dir);
        body.push_str("<section>\n");
        body.push_str(&render(&v));
        body.push_str(&samples_section(&out.join(dir)));
        body.push_str("</section>\n");
    }
    if found.is_empty() {
        return None;
    }
    Some(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>seek eval report</title><style>{STYLE}</style></head><body>\n\
         <h1>seek eval report</h1>\n<p class=\"note\">From {} · suites: {}</p>\n{body}</body></html>\n",
        escape(&out.display().to_string()),
        escape(&found.join(", "))
    ))
}

/// Writes `out/report.html` from the summaries that exist under `out` (`redteam/`, `bias/`,
/// `reliability/`, `overrefusal/`) and returns its path; an error when there is none.
pub fn write_report(out: &Path) -> Result<PathBuf, EvalError> {
    let html = render_report(out).ok_or_else(|| {
        EvalError::data(
            out,
            "no summary.json in redteam/, bias/, reliability/ or overrefusal/; run a suite with this --out first",
        )
    })?;
    let path = out.join("report.html");
    std::fs::write(&path, html).map_err(|e| EvalError::io(&path, e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bias::{summarize, BiasSample, BiasSummary};
    use serde_json::json;

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn fake_output(dir: &Path) {
        let redteam = json!({
            "target": "tiny-r1",
            "runs": [
                {"label": "guard off", "asr_answer": 0.438, "asr_reasoning": 0.625,
                 "by_category": {"cybercrime_intrusion": {"answer": 0.5, "reasoning": 0.75, "n": 8}},
                 "by_attack": {"direct": {"answer": 0.25, "reasoning": 0.5, "n": 8},
                               "rot13": {"answer": 0.625, "reasoning": 0.75, "n": 8}}},
                {"label": "guard on", "asr_answer": 0.063, "asr_reasoning": 0.125,
                 "by_category": {"cybercrime_intrusion": {"answer": 0.0, "reasoning": 0.25, "n": 8}},
                 "by_attack": {"direct": {"answer": 0.0, "reasoning": 0.125, "n": 8}}}
            ],
            "judge": {"name": "local judge", "agreement": 0.8812, "cohen_kappa": 0.7341, "n": 101},
            "elapsed_s": 321.0
        });
        write(dir, "redteam/summary.json", &redteam.to_string());
        write(
            dir,
            "redteam/samples.jsonl",
            &[
                json!({"key": "guard off|b1|direct", "prompt": "hi", "answer": "<script>alert(1)</script>",
                       "judge_answer": true}),
                json!({"key": "guard off|b2|direct", "answer": "x".repeat(5000)}),
                json!({"key": "guard off|b3|direct", "answer": "third"}),
                json!({"key": "guard off|b4|direct", "answer": "FOURTH-NOT-SHOWN"}),
            ]
            .iter()
            .map(|v| v.to_string() + "\n")
            .collect::<String>(),
        );
        let samples: Vec<BiasSample> = (0..4)
            .map(|i| BiasSample {
                key: format!("Age/{i}"),
                category: "Age".into(),
                ambiguous: i % 2 == 0,
                negative: true,
                label: if i % 2 == 0 { 2 } else { 0 },
                unknown: 2,
                target: Some(0),
                choice: Some(0),
                ..Default::default()
            })
            .collect();
        let (overall, by_category) = summarize(&samples);
        let bias = BiasSummary {
            target: "tiny-r1".into(),
            overall,
            by_category,
            ..Default::default()
        };
        write(
            dir,
            "bias/summary.json",
            &serde_json::to_string(&bias).unwrap(),
        );
        write(
            dir,
            "reliability/summary.json",
            &json!({"target": "tiny-r1", "gsm8k": {"accuracy": 0.8125, "n": 16, "mean_reasoning_tokens": 412.5},
                    "math500": {"accuracy": 0.3333, "n": 9}})
            .to_string(),
        );
        write(
            dir,
            "overrefusal/summary.json",
            &json!({"safe": {"refusal_rate": 0.12, "n": 25}, "unsafe": {"refusal_rate": 0.9, "n": 20}})
                .to_string(),
        );
    }

    #[test]
    fn renders_every_suite_escaped_with_one_svg_per_chart() {
        let dir = tempfile::tempdir().unwrap();
        fake_output(dir.path());
        let path = write_report(dir.path()).unwrap();
        assert_eq!(path, dir.path().join("report.html"));
        let html = std::fs::read_to_string(&path).unwrap();
        // Red team: runs, numbers, categories, attacks, judge.
        for want in [
            "guard off",
            "guard on",
            "43.8%",
            "62.5%",
            "6.3%",
            "cybercrime_intrusion",
            "rot13",
            "88.1%",
            "0.734",
            "321 s",
        ] {
            assert!(html.contains(want), "missing {want:?}");
        }
        // Bias: 2 ambiguous items both answered "target" (wrong, biased): accuracy 0,
        // s_AMB = (1 - 0) * (2 * 2/2 - 1) = +1; 2 disambiguated, both right and biased: +1.
        assert!(html.contains("Bias (BBQ)"));
        assert!(html.contains("+1.000"));
        assert!(html.contains("<td>Age</td>"));
        // Generic sections: any numeric field.
        assert!(html.contains("gsm8k.accuracy"));
        assert!(html.contains("81.2%"));
        assert!(html.contains("412.5000"));
        assert!(html.contains("overrefusal") || html.contains("Over-refusal"));
        assert!(html.contains("safe.refusal_rate"));
        // Escaping and truncation of samples.
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("<script"));
        assert!(!html.contains("FOURTH-NOT-SHOWN"));
        assert!(!html.contains(&"x".repeat(SAMPLE_CHARS + 1)));
        // Self-contained: no external asset, no script.
        assert!(!html.contains("src=") && !html.contains("href="));
        // One <svg> per chart: red team 3 (overall, category, attack), bias 2, reliability 1,
        // over-refusal 1.
        let charts = html.matches("<figure class=\"chart\">").count();
        assert_eq!(charts, 7);
        assert_eq!(html.matches("<svg").count(), charts);
        assert_eq!(html.matches("</svg>").count(), charts);
    }

    #[test]
    fn tolerates_missing_fields_and_suites() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "redteam/summary.json",
            r#"{"target": "t", "runs": [{"label": "guard off"}]}"#,
        );
        write(dir.path(), "bias/summary.json", "{}");
        write(dir.path(), "reliability/summary.json", "not json");
        let html = std::fs::read_to_string(write_report(dir.path()).unwrap()).unwrap();
        assert!(html.contains("guard off"));
        assert!(html.contains("No scores in the summary."));
        assert!(!html.contains("Reliability"));
        assert_eq!(html.matches("<svg").count(), 1); // the (empty) guard off/on chart
    }

    #[test]
    fn an_empty_folder_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let e = write_report(dir.path()).unwrap_err().to_string();
        assert!(e.contains("run a suite"), "{e}");
    }

    #[test]
    fn escapes_and_truncates() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(truncate("héllo", 2), "hé…");
        assert_eq!(truncate("hé", 2), "hé");
    }
}
