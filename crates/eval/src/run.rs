//! Running a suite's items: several at once, each result appended to `samples.jsonl` as soon
//! as it is done (so a killed run loses at most the items in flight), items already in the
//! file skipped when the run is started again, a budget in requests or tokens, and a progress
//! line with an ETA on stderr.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::EvalError;

/// How a suite runs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Where `samples.jsonl`, `summary.json` and `report.html` go.
    pub out: PathBuf,
    /// Items evaluated at once.
    pub concurrency: usize,
    /// Stop after this many target requests (this run).
    pub max_requests: Option<usize>,
    /// Stop after this many generated tokens (this run).
    pub max_tokens_total: Option<usize>,
    /// Stop after spending this many US dollars (this run), at `prices_per_million`.
    pub max_cost_usd: Option<f64>,
    /// USD per million prompt and generated tokens, for `max_cost_usd`.
    pub prices_per_million: (f64, f64),
    /// Print progress on stderr.
    pub progress: bool,
}

/// A suite's item: a key that names it in the samples file (for resuming), and the work.
pub trait Item: Send + Sync {
    /// Unique within the suite run.
    fn key(&self) -> String;
}

/// A finished sample: what `samples.jsonl` holds, one per line.
pub trait Sample: Serialize + DeserializeOwned + Send {
    /// The item's key.
    fn key(&self) -> &str;
    /// Target requests it took and tokens it generated (for the budget).
    fn cost(&self) -> (usize, usize);
    /// Prompt tokens it sent, for a budget in money (0 when the suite does not record them:
    /// then only generated tokens are priced).
    fn prompt_tokens(&self) -> usize {
        0
    }
}

/// The samples already in `dir/samples.jsonl` (a previous, possibly killed, run). A torn last
/// line (the process died while writing it) is dropped.
pub fn load_samples<S: Sample>(dir: &Path) -> Result<Vec<S>, EvalError> {
    let path = dir.join("samples.jsonl");
    let Ok(f) = File::open(&path) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for line in BufReader::new(f).lines() {
        let line = line.map_err(|e| EvalError::io(&path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<S>(&line) {
            Ok(s) => out.push(s),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "skipping a torn or foreign line")
            }
        }
    }
    Ok(out)
}

/// Runs `work` on every item not already done, `cfg.concurrency` at a time, appending each
/// sample to `samples.jsonl`. Returns every sample (old and new), in item order.
pub fn run_items<I: Item, S: Sample>(
    cfg: &RunConfig,
    items: &[I],
    work: impl Fn(&I) -> Result<S, EvalError> + Sync,
) -> Result<Vec<S>, EvalError> {
    std::fs::create_dir_all(&cfg.out).map_err(|e| EvalError::io(&cfg.out, e))?;
    let done: Vec<S> = load_samples(&cfg.out)?;
    let done_keys: HashSet<String> = done.iter().map(|s| s.key().to_string()).collect();
    let todo: Vec<&I> = items
        .iter()
        .filter(|i| !done_keys.contains(&i.key()))
        .collect();
    if !done.is_empty() && cfg.progress {
        eprintln!(
            "resuming: {} of {} items already done in {}",
            items.len() - todo.len(),
            items.len(),
            cfg.out.display()
        );
    }
    let path = cfg.out.join("samples.jsonl");
    drop_torn_tail(&path)?;
    let file = Mutex::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| EvalError::io(&path, e))?,
    );
    let next = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let requests = AtomicUsize::new(0);
    let tokens = AtomicUsize::new(0);
    // Spent money in nano-dollars (atomic integer arithmetic).
    let spent = std::sync::atomic::AtomicU64::new(0);
    let fresh: Mutex<Vec<S>> = Mutex::new(Vec::new());
    let error: Mutex<Option<EvalError>> = Mutex::new(None);
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let over_budget = || {
        cfg.max_requests
            .is_some_and(|m| requests.load(Ordering::SeqCst) >= m)
            || cfg
                .max_tokens_total
                .is_some_and(|m| tokens.load(Ordering::SeqCst) >= m)
            || cfg
                .max_cost_usd
                .is_some_and(|m| spent.load(Ordering::SeqCst) as f64 / 1e9 >= m)
    };
    std::thread::scope(|s| {
        for _ in 0..cfg.concurrency.max(1) {
            s.spawn(|| loop {
                if over_budget() || error.lock().map(|e| e.is_some()).unwrap_or(true) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = todo.get(i) else { return };
                match work(item) {
                    Ok(sample) => {
                        let (r, t) = sample.cost();
                        requests.fetch_add(r, Ordering::SeqCst);
                        tokens.fetch_add(t, Ordering::SeqCst);
                        let (pin, pout) = cfg.prices_per_million;
                        let usd = (sample.prompt_tokens() as f64 * pin + t as f64 * pout) / 1e6;
                        spent.fetch_add((usd * 1e9).round() as u64, Ordering::SeqCst);
                        let line = serde_json::to_string(&sample).expect("samples serialize");
                        if let Ok(mut f) = file.lock() {
                            // One write per line, flushed: a kill loses at most this line.
                            let _ = f.write_all(format!("{line}\n").as_bytes());
                            let _ = f.flush();
                        }
                        if let Ok(mut v) = fresh.lock() {
                            v.push(sample);
                        }
                        let n = finished.fetch_add(1, Ordering::SeqCst) + 1;
                        if cfg.progress {
                            let el = start.elapsed().as_secs_f64();
                            let eta = el / n as f64 * (todo.len() - n) as f64;
                            let msg = format!(
                                "{n}/{} items · {:.0} s elapsed · ETA {:.0} s",
                                todo.len(),
                                el,
                                eta
                            );
                            if tty {
                                eprint!("\r{msg}   ");
                            } else if n.is_multiple_of(10) || n == todo.len() {
                                eprintln!("{msg}");
                            }
                        }
                    }
                    Err(e) => {
                        if let Ok(mut slot) = error.lock() {
                            slot.get_or_insert(e);
                        }
                        return;
                    }
                }
            });
        }
    });
    if cfg.progress && tty {
        eprintln!();
    }
    if let Some(e) = error.into_inner().ok().flatten() {
        return Err(e);
    }
    let mut all: Vec<S> = done;
    all.extend(fresh.into_inner().unwrap_or_default());
    let order: std::collections::HashMap<String, usize> = items
        .iter()
        .enumerate()
        .map(|(i, it)| (it.key(), i))
        .collect();
    all.retain(|s| order.contains_key(s.key()));
    all.sort_by_key(|s| order[s.key()]);
    Ok(all)
}

/// Cuts a last line that a killed run left without its newline, so that new samples start on
/// a line of their own (appending after it would glue the first new sample to the torn one).
fn drop_torn_tail(path: &Path) -> Result<(), EvalError> {
    let Ok(bytes) = std::fs::read(path) else {
        return Ok(());
    };
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        return Ok(());
    }
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| EvalError::io(path, e))?;
    f.set_len(keep as u64).map_err(|e| EvalError::io(path, e))
}

/// Writes `value` as pretty JSON to `dir/name`.
pub fn write_json(dir: &Path, name: &str, value: &impl Serialize) -> Result<(), EvalError> {
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(value).expect("summaries serialize");
    std::fs::write(&path, text + "\n").map_err(|e| EvalError::io(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    struct N(usize);
    impl Item for N {
        fn key(&self) -> String {
            self.0.to_string()
        }
    }

    #[derive(Serialize, Deserialize)]
    struct Done {
        key: String,
        prompt: usize,
        generated: usize,
    }
    impl Sample for Done {
        fn key(&self) -> &str {
            &self.key
        }
        fn cost(&self) -> (usize, usize) {
            (1, self.generated)
        }
        fn prompt_tokens(&self) -> usize {
            self.prompt
        }
    }

    /// Budgets in requests, tokens and money stop a run (one item at a time, so exactly).
    #[test]
    fn budgets_stop_the_run() {
        let items: Vec<N> = (0..10).map(N).collect();
        let work = |n: &N| -> Result<Done, EvalError> {
            Ok(Done {
                key: n.key(),
                prompt: 1_000_000,
                generated: 500_000,
            })
        };
        let dir = tempfile::tempdir().unwrap();
        let base = RunConfig {
            out: dir.path().join("a"),
            concurrency: 1,
            max_requests: Some(3),
            max_tokens_total: None,
            max_cost_usd: None,
            prices_per_million: (0.0, 0.0),
            progress: false,
        };
        assert_eq!(run_items(&base, &items, work).unwrap().len(), 3);
        let by_tokens = RunConfig {
            out: dir.path().join("b"),
            max_requests: None,
            max_tokens_total: Some(1_200_000),
            ..base.clone()
        };
        assert_eq!(run_items(&by_tokens, &items, work).unwrap().len(), 3);
        // $0.55 in + $1.095 out = $1.645 per item: $4 buys three (the third crosses the limit).
        let by_money = RunConfig {
            out: dir.path().join("c"),
            max_requests: None,
            max_cost_usd: Some(4.0),
            prices_per_million: (0.55, 2.19),
            ..base
        };
        assert_eq!(run_items(&by_money, &items, work).unwrap().len(), 3);
    }
}
