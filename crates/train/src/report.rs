//! `report.html` for a training run: one self-contained page (inline CSS, hand-written SVG
//! line charts, no script, no external asset) drawn from the run's `metrics.jsonl`.
//!
//! The charts share `seek-eval`'s report style (CSS, palette, figure layout) so the two pages
//! read alike. A non-finite value (the NaN loss of a diverged step) is a gap in its line, never
//! an error: the report is most needed when a run went wrong. Every text on the page is escaped.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use seek_eval::report::escape;
use serde::{Deserialize, Deserializer, Serialize};

/// One line of a training run's `metrics.jsonl` (one JSON object per optimizer step).
///
/// `serde_json` writes a non-finite float as `null`; the float fields read `null` back as NaN,
/// so the record of a diverged step round-trips instead of making the file unreadable.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepRecord {
    /// Optimizer step, 1-based.
    pub step: u64,
    /// Fractional epoch.
    #[serde(deserialize_with = "nan_if_null")]
    pub epoch: f64,
    /// Mean token loss of the step.
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    /// Learning rate used for the step.
    #[serde(deserialize_with = "nan_if_null")]
    pub learning_rate: f64,
    /// Global L2 norm of the gradients before clipping.
    #[serde(deserialize_with = "nan_if_null")]
    pub grad_norm: f64,
    /// Throughput of the step.
    #[serde(deserialize_with = "nan_if_null")]
    pub tokens_per_second: f64,
    /// Tokens seen so far (cumulative).
    pub num_tokens: u64,
    /// Seconds since the run started.
    #[serde(deserialize_with = "nan_if_null")]
    pub elapsed_s: f64,
    /// Loss on the evaluation set, on the steps that ran an evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
}

fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Reading metrics or writing the report failed.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line of `metrics.jsonl` is not a step record.
    #[error(
        "{}, line {line}: not a step record ({message}); each line must be one JSON object \
         as the trainer writes it",
        path.display()
    )]
    Parse {
        /// The file.
        path: PathBuf,
        /// The line, 1-based.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads `metrics.jsonl`, skipping blank lines; a malformed line is an error naming the file and
/// the line number. An empty file gives an empty `Vec`.
pub fn read_metrics(path: &Path) -> Result<Vec<StepRecord>, ReportError> {
    let file = File::open(path).map_err(io(path))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line).map_err(|e| {
            // serde_json ends its message with "at line 1 column N"; within one line only the
            // column says anything.
            let full = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            let what = full.strip_suffix(&suffix).unwrap_or(&full);
            ReportError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                message: format!("{what} at column {}", e.column()),
            }
        })?;
        out.push(record);
    }
    Ok(out)
}

/// A two-column table (key, value); both escaped.
fn table(rows: &[(String, String)]) -> String {
    let mut s = String::from("<table><tbody>");
    for (k, v) in rows {
        let _ = write!(s, "<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(v));
    }
    s.push_str("</tbody></table>\n");
    s
}

fn note(text: &str) -> String {
    format!("<p class=\"note\">{}</p>\n", escape(text))
}

/// A loss as the summary shows it; a non-finite one as Rust prints it (`NaN`, `inf`).
fn loss(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.4}")
    } else {
        x.to_string()
    }
}

fn duration(s: f64) -> String {
    if !s.is_finite() || s < 60.0 {
        return format!("{s:.1} s");
    }
    let t = s.round() as u64;
    let (h, m, sec) = (t / 3600, t / 60 % 60, t % 60);
    if h > 0 {
        format!("{h} h {m:02} min {sec:02} s")
    } else {
        format!("{m} min {sec:02} s")
    }
}

/// A round step (1, 2 or 5 times a power of ten) that cuts `span` into about `n` parts.
fn nice_step(span: f64, n: f64) -> f64 {
    let raw = span / n;
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

/// The multiples of `step` in `[lo, hi]`; none when the range is not drawable.
fn ticks(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    let (a, b) = ((lo / step - 1e-9).ceil(), (hi / step + 1e-9).floor());
    if !(a.is_finite() && b.is_finite() && step > 0.0) || b - a > 50.0 {
        return Vec::new();
    }
    (0..=(b - a) as i64)
        .map(|k| (a + k as f64) * step)
        .collect()
}

/// Tick labels for an axis over `[lo, hi]` with ticks every `step`: plain decimals, or
/// scientific notation for tiny or huge values (learning rates).
fn tick_labeller(lo: f64, hi: f64, step: f64) -> impl Fn(f64) -> String {
    let mag = lo.abs().max(hi.abs());
    let sci = mag >= 1e6 || (mag > 0.0 && mag < 1e-2);
    let digits = if sci {
        mag.log10().floor() - step.log10().floor()
    } else {
        -step.log10().floor()
    };
    let p = digits.clamp(0.0, 10.0) as usize;
    move |v| match () {
        _ if v.abs() < step * 1e-6 => "0".to_string(),
        _ if sci => format!("{v:.p$e}"),
        _ => format!("{v:.p$}"),
    }
}

/// The lowest and highest of `xs`, widened when they are equal so that a flat line sits in the
/// middle of the chart.
fn bounds(xs: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    if hi > lo {
        return (lo, hi);
    }
    let d = if lo == 0.0 { 1.0 } else { 0.1 * lo.abs() };
    (lo - d, hi + d)
}

const COLOURS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
];

/// A line chart of `(step, value)` series as an inline `<svg>` inside a `<figure class="chart">`,
/// or a note when fewer than two finite points exist. A non-finite point breaks its line; a
/// point alone between two gaps is drawn as a dot.
fn line_chart(title: &str, series: &[(&str, Vec<(f64, f64)>)]) -> String {
    const WIDTH: f64 = 760.0;
    const HEIGHT: f64 = 260.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 20.0;
    const TOP: f64 = 30.0;
    const BOTTOM: f64 = 26.0;
    let finite: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(_, p)| p.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if finite.len() < 2 {
        return note(&format!(
            "{title}: not enough finite values to draw a chart ({} of the 2 needed).",
            finite.len()
        ));
    }
    let (x_lo, x_hi) = bounds(finite.iter().map(|p| p.0));
    let (y_lo, y_hi) = bounds(finite.iter().map(|p| p.1));
    // The value axis ends on round numbers; the step axis ends on the first and last step.
    let y_step = nice_step(y_hi - y_lo, 4.0);
    let (y_lo, y_hi) = (
        (y_lo / y_step).floor() * y_step,
        (y_hi / y_step).ceil() * y_step,
    );
    let x_step = nice_step(x_hi - x_lo, 6.0).max(1.0);
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let x_of = |x: f64| LEFT + (x - x_lo) / (x_hi - x_lo) * plot_w;
    let y_of = |y: f64| TOP + (y_hi - y) / (y_hi - y_lo) * plot_h;
    let mut s = String::new();
    let _ = write!(
        s,
        "<figure class=\"chart\"><figcaption>{t}</figcaption>\
         <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{t}\">",
        t = escape(title)
    );
    if series.len() > 1 {
        let mut lx = LEFT;
        for (i, (name, _)) in series.iter().enumerate() {
            let _ = write!(
                s,
                "<rect x=\"{lx:.1}\" y=\"8\" width=\"12\" height=\"12\" fill=\"{}\"/>\
                 <text x=\"{:.1}\" y=\"18\" class=\"legend\">{}</text>",
                COLOURS[i % COLOURS.len()],
                lx + 16.0,
                escape(name)
            );
            lx += 24.0 + 7.5 * name.chars().count() as f64;
        }
    }
    let label = tick_labeller(y_lo, y_hi, y_step);
    for v in ticks(y_lo, y_hi, y_step) {
        let y = y_of(v);
        let _ = write!(
            s,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" class=\"grid\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" class=\"ytick\">{}</text>",
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            escape(&label(v))
        );
    }
    for v in ticks(x_lo, x_hi, x_step) {
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" class=\"tick\">{v:.0}</text>",
            x_of(v),
            HEIGHT - 8.0
        );
    }
    let _ = write!(
        s,
        "<line x1=\"{LEFT}\" y1=\"{b:.1}\" x2=\"{:.1}\" y2=\"{b:.1}\" class=\"zero\"/>\
         <line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{b:.1}\" class=\"zero\"/>",
        WIDTH - RIGHT,
        b = TOP + plot_h
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let (mut d, mut dots) = (String::new(), Vec::new());
        let (mut run, mut last) = (0usize, (0.0, 0.0));
        for &(x, y) in points {
            let p = (x_of(x), y_of(y));
            if !(x.is_finite() && y.is_finite() && p.0.is_finite() && p.1.is_finite()) {
                if run == 1 {
                    dots.push(last);
                }
                run = 0;
                continue;
            }
            let cmd = match (run, d.is_empty()) {
                (0, true) => "M",
                (0, false) => " M",
                _ => " L",
            };
            let _ = write!(d, "{cmd}{:.1} {:.1}", p.0, p.1);
            (run, last) = (run + 1, p);
        }
        if run == 1 {
            dots.push(last);
        }
        let _ = write!(
            s,
            "<path d=\"{d}\" class=\"line\" stroke=\"{colour}\"><title>{}</title></path>",
            escape(name)
        );
        for (x, y) in dots {
            let _ = write!(
                s,
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2\" fill=\"{colour}\"/>"
            );
        }
    }
    s.push_str("</svg></figure>\n");
    s
}

/// The summary rows: steps, first, last and lowest loss, tokens, wall time, mean throughput.
fn summary(records: &[StepRecord]) -> Vec<(String, String)> {
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Vec::new();
    };
    let min = records
        .iter()
        .filter(|r| r.loss.is_finite())
        .min_by(|a, b| a.loss.total_cmp(&b.loss));
    let tps: Vec<f64> = records
        .iter()
        .map(|r| r.tokens_per_second)
        .filter(|x| x.is_finite())
        .collect();
    let mut rows = vec![
        (
            "steps".to_string(),
            format!("{} (steps {} to {})", records.len(), first.step, last.step),
        ),
        ("first loss".into(), loss(first.loss)),
        ("last loss".into(), loss(last.loss)),
        (
            "lowest loss".into(),
            min.map(|r| format!("{} at step {}", loss(r.loss), r.step))
                .unwrap_or_else(|| "none finite".into()),
        ),
        (
            "tokens".into(),
            records
                .iter()
                .map(|r| r.num_tokens)
                .max()
                .unwrap_or(0)
                .to_string(),
        ),
        ("wall time".into(), duration(last.elapsed_s)),
        (
            "mean tokens/s (per step)".into(),
            if tps.is_empty() {
                "none finite".into()
            } else {
                format!("{:.1}", tps.iter().sum::<f64>() / tps.len() as f64)
            },
        ),
    ];
    if let Some(r) = records.iter().rev().find(|r| r.eval_loss.is_some()) {
        let e = r.eval_loss.unwrap_or(f64::NAN);
        rows.push((
            "last eval loss".into(),
            format!("{} at step {}", loss(e), r.step),
        ));
    }
    rows
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
svg text.tick { text-anchor: middle; fill: #777; } svg text.ytick { text-anchor: end; fill: #777; }
svg line.grid { stroke: #e5e5e5; } svg line.zero { stroke: #888; }
svg path.line { fill: none; stroke-width: 1.5; stroke-linejoin: round; }
.note { color: #555; }
";

/// A self-contained HTML page for a run: its title, a table of `settings` (key, value), a summary
/// (steps, first, last and lowest loss, tokens, wall time, mean tokens/s) and line charts of the
/// loss (with `eval_loss` as a second series when any record has it), the learning rate and the
/// gradient norm against the step. Non-finite values are gaps; fewer than two records give a
/// note in place of each chart.
pub fn render(title: &str, settings: &[(String, String)], records: &[StepRecord]) -> String {
    let mut body = String::from("<h2>Settings</h2>\n");
    body.push_str(&if settings.is_empty() {
        note("No settings recorded.")
    } else {
        table(settings)
    });
    body.push_str("<h2>Summary</h2>\n");
    body.push_str(&if records.is_empty() {
        note("No steps recorded yet.")
    } else {
        table(&summary(records))
    });
    body.push_str("<h2>Charts</h2>\n");
    let along = |f: fn(&StepRecord) -> f64| -> Vec<(f64, f64)> {
        records.iter().map(|r| (r.step as f64, f(r))).collect()
    };
    let mut losses = vec![("loss", along(|r| r.loss))];
    if records.iter().any(|r| r.eval_loss.is_some()) {
        // Only the steps that ran an evaluation: a step without one is not a gap.
        let eval = records
            .iter()
            .filter_map(|r| r.eval_loss.map(|e| (r.step as f64, e)))
            .collect();
        losses.push(("eval_loss", eval));
    }
    body.push_str(&line_chart("Loss vs step", &losses));
    body.push_str(&line_chart(
        "Learning rate vs step",
        &[("learning_rate", along(|r| r.learning_rate))],
    ));
    body.push_str(&line_chart(
        "Gradient norm (before clipping) vs step",
        &[("grad_norm", along(|r| r.grad_norm))],
    ));
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{t}</title><style>{STYLE}</style></head><body>\n<h1>{t}</h1>\n{body}</body></html>\n",
        t = escape(title)
    )
}

/// Reads `dir/metrics.jsonl` and writes `dir/report.html` (through `report.html.tmp` and a
/// rename, so a reader never sees half a page); returns the path written.
pub fn write_report(
    dir: &Path,
    title: &str,
    settings: &[(String, String)],
) -> Result<PathBuf, ReportError> {
    let records = read_metrics(&dir.join("metrics.jsonl"))?;
    let html = render(title, settings, &records);
    let (path, tmp) = (dir.join("report.html"), dir.join("report.html.tmp"));
    std::fs::write(&tmp, html).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(path)
}

/// The series of `key` over the lines that have it as a number (`null`: a gap).
fn series(lines: &[serde_json::Value], key: &str) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter(|l| l.get(key).is_some())
        .filter_map(|l| {
            let step = l["step"].as_f64()?;
            Some((step, l[key].as_f64().unwrap_or(f64::NAN)))
        })
        .collect()
}

/// Keys of the lines that start with `prefix` and end with `/mean`, in order of first sight.
fn keys_like(lines: &[serde_json::Value], prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in lines {
        if let Some(o) = l.as_object() {
            for k in o.keys() {
                if k.starts_with(prefix) && k.ends_with("/mean") && !out.contains(k) {
                    out.push(k.clone());
                }
            }
        }
    }
    out
}

fn chart_of(lines: &[serde_json::Value], title: &str, keys: &[String]) -> String {
    let data: Vec<(String, Vec<(f64, f64)>)> = keys
        .iter()
        .map(|k| (k.clone(), series(lines, k)))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    if data.is_empty() {
        return String::new();
    }
    let refs: Vec<(&str, Vec<(f64, f64)>)> =
        data.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    line_chart(title, &refs)
}

/// A GRPO run's page, drawn from its `metrics.jsonl` lines (optimizer steps and held-out
/// evaluations, TRL's names): settings, a summary (held-out figures first and last, the step
/// time split), charts of the rewards, the held-out rewards, lengths and clipping, KL and the
/// time per step, and sample completions along the run.
pub fn render_grpo(
    title: &str,
    settings: &[(String, String)],
    lines: &[serde_json::Value],
) -> String {
    let steps: Vec<&serde_json::Value> = lines.iter().filter(|l| l.get("loss").is_some()).collect();
    let evals: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l.get("eval_reward").is_some())
        .collect();
    let mut body = String::from("<h2>Settings</h2>\n");
    body.push_str(&if settings.is_empty() {
        note("No settings recorded.")
    } else {
        table(settings)
    });
    body.push_str("<h2>Summary</h2>\n");
    let mut rows: Vec<(String, String)> = vec![("optimizer steps".into(), steps.len().to_string())];
    if let (Some(first), Some(last)) = (evals.first(), evals.last()) {
        for k in keys_like(lines, "eval_rewards/") {
            let f =
                |e: &serde_json::Value| e[&k].as_f64().map_or("-".into(), |v| format!("{v:.3}"));
            rows.push((
                format!(
                    "held-out {} (step {} → {})",
                    k.trim_start_matches("eval_rewards/")
                        .trim_end_matches("/mean"),
                    first["step"],
                    last["step"]
                ),
                format!("{} → {}", f(first), f(last)),
            ));
        }
    }
    let mean = |k: &str| {
        let v: Vec<f64> = steps
            .iter()
            .filter_map(|l| l[k].as_f64())
            .filter(|x| x.is_finite())
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    if !steps.is_empty() {
        rows.push((
            "time per step: generation / scoring / training".into(),
            format!(
                "{} / {} / {}",
                duration(mean("time_generation_s")),
                duration(mean("time_scoring_s")),
                duration(mean("time_training_s"))
            ),
        ));
        if let Some(e) = steps.last().and_then(|l| l["elapsed_s"].as_f64()) {
            rows.push((
                "wall time (training, evaluations included)".into(),
                duration(e),
            ));
        }
        let errors: u64 = steps
            .iter()
            .filter_map(|l| l["reward_errors"].as_u64())
            .sum();
        rows.push(("failed external reward calls".into(), errors.to_string()));
    }
    body.push_str(&if steps.is_empty() && evals.is_empty() {
        note("No steps recorded yet.")
    } else {
        table(&rows)
    });
    body.push_str("<h2>Charts</h2>\n");
    let mut reward_keys = vec!["reward".to_string()];
    reward_keys.extend(keys_like(lines, "rewards/"));
    body.push_str(&chart_of(
        lines,
        "Reward of the sampled completions vs step",
        &reward_keys,
    ));
    let mut eval_keys = vec!["eval_reward".to_string()];
    eval_keys.extend(keys_like(lines, "eval_rewards/"));
    body.push_str(&chart_of(
        lines,
        "Held-out problems, greedy: reward vs step",
        &eval_keys,
    ));
    body.push_str(&chart_of(
        lines,
        "Completion length (tokens) vs step",
        &[
            "completions/mean_length".into(),
            "eval_completions/mean_length".into(),
        ],
    ));
    body.push_str(&chart_of(
        lines,
        "Shares vs step",
        &[
            "completions/clipped_ratio".into(),
            "frac_reward_zero_std".into(),
            "clip_ratio/region_mean".into(),
            "reward_std".into(),
        ],
    ));
    body.push_str(&chart_of(
        lines,
        "KL to the reference vs step",
        &["kl".into()],
    ));
    body.push_str(&chart_of(
        lines,
        "Seconds per step vs step",
        &[
            "time_generation_s".into(),
            "time_scoring_s".into(),
            "time_training_s".into(),
        ],
    ));
    body.push_str("<h2>Sample completions</h2>\n");
    let sampled: Vec<&&serde_json::Value> = steps
        .iter()
        .filter(|l| l["sample"].as_str().is_some_and(|s| !s.is_empty()))
        .collect();
    let every = sampled.len().div_ceil(12).max(1);
    let mut samples: Vec<(String, String)> = sampled
        .iter()
        .step_by(every)
        .map(|l| {
            (
                format!("step {}", l["step"]),
                l["sample"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for e in &evals {
        samples.push((
            format!("held-out, after step {}", e["step"]),
            e["eval_sample"].as_str().unwrap_or("").to_string(),
        ));
    }
    body.push_str(&if samples.is_empty() {
        note("No samples recorded yet.")
    } else {
        table(&samples)
    });
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{t}</title><style>{STYLE}</style></head><body>\n<h1>{t}</h1>\n{body}</body></html>\n",
        t = escape(title)
    )
}

/// Reads a GRPO run's `dir/metrics.jsonl` and writes `dir/report.html` (atomically).
pub fn write_grpo_report(
    dir: &Path,
    title: &str,
    settings: &[(String, String)],
) -> Result<PathBuf, ReportError> {
    let path = dir.join("metrics.jsonl");
    let file = File::open(&path).map_err(io(&path))?;
    let mut lines = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io(&path))?;
        if line.trim().is_empty() {
            continue;
        }
        lines.push(serde_json::from_str(&line).map_err(|e| ReportError::Parse {
            path: path.clone(),
            line: i + 1,
            message: e.to_string(),
        })?);
    }
    let html = render_grpo(title, settings, &lines);
    let (out, tmp) = (dir.join("report.html"), dir.join("report.html.tmp"));
    std::fs::write(&tmp, html).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &out).map_err(io(&out))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(step: u64, loss: f64) -> StepRecord {
        StepRecord {
            step,
            epoch: step as f64 / 10.0,
            loss,
            learning_rate: 2e-5 * step as f64,
            grad_norm: 1.0 / step as f64,
            tokens_per_second: 1000.0,
            num_tokens: 512 * step,
            elapsed_s: 0.5 * step as f64,
            eval_loss: None,
        }
    }

    fn records(n: u64) -> Vec<StepRecord> {
        (1..=n).map(|s| rec(s, 3.0 - 0.1 * s as f64)).collect()
    }

    /// The `d` attribute of every `<path>`.
    fn path_data(html: &str) -> Vec<&str> {
        html.split("<path d=\"")
            .skip(1)
            .map(|s| &s[..s.find('"').unwrap()])
            .collect()
    }

    #[test]
    fn three_records_give_three_escaped_charts() {
        let settings = vec![
            ("model".to_string(), "SmolLM2-135M".to_string()),
            ("note".to_string(), "<script>alert(1)</script>".to_string()),
        ];
        let html = render("run <1>", &settings, &records(3));
        assert_eq!(html.matches("<svg").count(), 3);
        assert_eq!(html.matches("</svg>").count(), 3);
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("<script"));
        assert!(html.contains("<h1>run &lt;1&gt;</h1>"));
        assert!(!html.contains("src=") && !html.contains("href="));
        // Summary: first and last loss, lowest with its step, cumulative tokens.
        for want in [
            "2.9000",
            "2.7000 at step 3",
            "<td>1536</td>",
            "1.5 s",
            "1000.0",
        ] {
            assert!(html.contains(want), "missing {want:?}");
        }
        // Learning-rate ticks in scientific notation.
        assert!(html.contains("e-5</text>"), "{html}");
        // No eval loss in the records: one line per chart, no legend.
        assert_eq!(path_data(&html).len(), 3);
        assert!(!html.contains("eval_loss"));
    }

    #[test]
    fn eval_loss_is_a_second_series_only_when_present() {
        let mut rs = records(5);
        rs[1].eval_loss = Some(2.5);
        rs[4].eval_loss = Some(2.4);
        let html = render("t", &[], &rs);
        assert_eq!(path_data(&html).len(), 4);
        assert!(html.contains("class=\"legend\">eval_loss</text>"));
        assert!(html.contains("last eval loss"));
        // The eval line joins the two evaluated steps without a gap.
        let eval = path_data(&html)[1];
        assert_eq!(
            (eval.matches('M').count(), eval.matches('L').count()),
            (1, 1)
        );
    }

    #[test]
    fn non_finite_values_are_gaps_not_text() {
        let mut rs = records(6);
        rs[2].loss = f64::NAN;
        rs[4].loss = f64::INFINITY;
        rs[3].grad_norm = f64::NAN;
        let html = render("t", &[], &rs);
        assert_eq!(html.matches("<svg").count(), 3);
        let data = path_data(&html);
        for d in &data {
            assert!(!d.contains("NaN") && !d.contains("inf"), "{d}");
        }
        // Loss: steps 1-2, then step 4 alone (a dot), then step 6 alone (a dot).
        assert_eq!(data[0].matches('M').count(), 3);
        assert_eq!(html.matches("<circle").count(), 2);
        // The lowest loss ignores the non-finite ones.
        assert!(html.contains("2.4000 at step 6"));
    }

    #[test]
    fn zero_or_one_record_renders_notes() {
        for n in [0, 1] {
            let html = render("t", &[], &records(n));
            assert_eq!(html.matches("<svg").count(), 0);
            assert_eq!(html.matches("not enough finite values").count(), 3);
        }
        let mut flat = records(2);
        flat[1].learning_rate = flat[0].learning_rate;
        assert_eq!(render("t", &[], &flat).matches("<svg").count(), 3);
    }

    #[test]
    fn read_metrics_names_the_file_and_line_of_a_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let good = serde_json::to_string(&rec(1, 2.0)).unwrap();
        std::fs::write(&path, format!("{good}\n{{\"step\": 2, \"loss\":\n{good}\n")).unwrap();
        let e = read_metrics(&path).unwrap_err();
        assert!(matches!(e, ReportError::Parse { line: 2, .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("metrics.jsonl") && msg.contains("line 2"),
            "{msg}"
        );
        std::fs::write(&path, "").unwrap();
        assert!(read_metrics(&path).unwrap().is_empty());
        let missing = read_metrics(&dir.path().join("nope.jsonl")).unwrap_err();
        assert!(missing.to_string().contains("nope.jsonl"), "{missing}");
    }

    #[test]
    fn write_report_round_trips_through_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        let mut rs = records(4);
        rs[3].eval_loss = Some(2.6);
        rs[2].loss = f64::NAN; // written as null, read back as NaN
        let lines: String = rs
            .iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect();
        std::fs::write(dir.path().join("metrics.jsonl"), lines).unwrap();
        let back = read_metrics(&dir.path().join("metrics.jsonl")).unwrap();
        assert_eq!(back.len(), 4);
        assert!(back[2].loss.is_nan());
        assert_eq!((&back[..2], &back[3]), (&rs[..2], &rs[3]));
        let settings = [("lr".to_string(), "2e-5".to_string())];
        let path = write_report(dir.path(), "sft", &settings).unwrap();
        assert_eq!(path, dir.path().join("report.html"));
        assert!(!dir.path().join("report.html.tmp").exists());
        let html = std::fs::read_to_string(&path).unwrap();
        assert_eq!(html.matches("<svg").count(), 3);
        assert!(html.contains("<th>lr</th><td>2e-5</td>"));
    }

    #[test]
    fn ticks_and_durations() {
        assert_eq!(nice_step(10.0, 4.0), 5.0);
        assert_eq!(ticks(0.0, 10.0, 5.0), vec![0.0, 5.0, 10.0]);
        let lr = tick_labeller(0.0, 2e-5, 5e-6);
        assert_eq!(
            (lr(0.0), lr(1.5e-5)),
            ("0".to_string(), "1.5e-5".to_string())
        );
        assert_eq!(tick_labeller(2.0, 3.0, 0.2)(2.4), "2.4");
        assert_eq!(duration(3725.0), "1 h 02 min 05 s");
        assert_eq!(duration(12.34), "12.3 s");
    }
}
