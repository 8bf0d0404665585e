//! The evaluation data shipped in `data/` (see `data/SOURCES.md` for sources, commits and
//! licences): loaders that read each file as its authors wrote it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::EvalError;

/// The `data/` folder: `$SEEK_EVAL_DATA`, else `data/` in the current folder, else the one in
/// the source tree.
pub fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SEEK_EVAL_DATA") {
        return PathBuf::from(d);
    }
    let here = PathBuf::from("data");
    if here.join("SOURCES.md").is_file() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data")
}

fn read(path: &Path) -> Result<String, EvalError> {
    std::fs::read_to_string(path).map_err(|e| {
        EvalError::data(
            path,
            format!("{e}; the evaluation data lives in data/ of the Seek repository (or set SEEK_EVAL_DATA)"),
        )
    })
}

/// Parses CSV (RFC 4180: quoted fields, doubled quotes, newlines inside quotes) into rows of
/// named fields.
pub fn parse_csv(text: &str) -> Vec<std::collections::HashMap<String, String>> {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let (mut row, mut field, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => row.push(std::mem::take(&mut field)),
            ('\r', false) => {}
            ('\n', false) => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (c, _) => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    let Some(header) = rows.first().cloned() else {
        return Vec::new();
    };
    rows.into_iter()
        .skip(1)
        .filter(|r| r.iter().any(|f| !f.is_empty()))
        .map(|r| header.iter().cloned().zip(r).collect())
        .collect()
}

/// A HarmBench behavior.
#[derive(Debug, Clone)]
pub struct Behavior {
    /// `BehaviorID`.
    pub id: String,
    /// The request.
    pub behavior: String,
    /// `standard`, `contextual` or `copyright`.
    pub functional: String,
    /// e.g. `chemical_biological`, `cybercrime_intrusion`.
    pub category: String,
    /// The context of a contextual behavior.
    pub context: String,
}

/// HarmBench's text behaviors of a split (`test` or `val`), of the given functional
/// categories (empty: all).
pub fn harmbench(split: &str, functional: &[&str]) -> Result<Vec<Behavior>, EvalError> {
    let path = data_dir().join(format!("harmbench/harmbench_behaviors_text_{split}.csv"));
    let rows = parse_csv(&read(&path)?);
    let f = |r: &std::collections::HashMap<String, String>, k: &str| {
        r.get(k).cloned().unwrap_or_default()
    };
    let out: Vec<Behavior> = rows
        .iter()
        .map(|r| Behavior {
            id: f(r, "BehaviorID"),
            behavior: f(r, "Behavior"),
            functional: f(r, "FunctionalCategory"),
            category: f(r, "SemanticCategory"),
            context: f(r, "ContextString"),
        })
        .filter(|b| functional.is_empty() || functional.contains(&b.functional.as_str()))
        .collect();
    if out.is_empty() {
        return Err(EvalError::data(&path, "no behaviors of the requested kind"));
    }
    Ok(out)
}

/// AdvBench's harmful behaviors (`goal`), as behaviors of category `advbench`.
pub fn advbench() -> Result<Vec<Behavior>, EvalError> {
    let path = data_dir().join("advbench/harmful_behaviors.csv");
    Ok(parse_csv(&read(&path)?)
        .iter()
        .enumerate()
        .map(|(i, r)| Behavior {
            id: format!("advbench_{i}"),
            behavior: r.get("goal").cloned().unwrap_or_default(),
            functional: "standard".into(),
            category: "advbench".into(),
            context: String::new(),
        })
        .collect())
}

/// JailbreakBench's 100 harmful behaviors, with their categories.
pub fn jailbreakbench() -> Result<Vec<Behavior>, EvalError> {
    let path = data_dir().join("jailbreakbench/jbb_harmful_behaviors_from_artifacts.csv");
    Ok(parse_csv(&read(&path)?)
        .iter()
        .map(|r| Behavior {
            id: format!("jbb_{}", r.get("Index").cloned().unwrap_or_default()),
            behavior: r.get("Goal").cloned().unwrap_or_default(),
            functional: "standard".into(),
            category: r.get("Category").cloned().unwrap_or_default(),
            context: String::new(),
        })
        .collect())
}

/// One human-labelled generation of HarmBench's classifier validation set.
#[derive(Debug, Clone, Deserialize)]
pub struct LabelledGeneration {
    /// The prompt the model saw (the behavior, possibly with an attack around it).
    pub test_case: String,
    /// What the model said.
    pub generation: String,
    /// The three human labels (1 = the generation is an instance of the behavior).
    pub human_0: u8,
    /// Second annotator.
    pub human_1: u8,
    /// Third annotator.
    pub human_2: u8,
}

/// The human-labelled set: `(behavior id, generation)` pairs.
pub fn judge_labelled_dev() -> Result<Vec<(String, LabelledGeneration)>, EvalError> {
    let path = data_dir().join("harmbench/judge_labelled_dev.json");
    let map: std::collections::BTreeMap<String, Vec<LabelledGeneration>> =
        serde_json::from_str(&read(&path)?).map_err(|e| EvalError::data(&path, e.to_string()))?;
    Ok(map
        .into_iter()
        .flat_map(|(id, gens)| gens.into_iter().map(move |g| (id.clone(), g)))
        .collect())
}

/// A file of `data/judge/`, as text.
pub fn judge_file(name: &str) -> Result<String, EvalError> {
    read(&data_dir().join("judge").join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_handles_quotes_commas_and_newlines() {
        let rows = parse_csv("a,b\n\"x, \"\"y\"\"\",\"line\nbreak\"\r\nplain,2\n");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["a"], "x, \"y\"");
        assert_eq!(rows[0]["b"], "line\nbreak");
        assert_eq!(rows[1]["b"], "2");
    }

    #[test]
    fn shipped_data_loads() {
        let test = harmbench("test", &["standard"]).unwrap();
        assert_eq!(test.len(), 159);
        assert!(test
            .iter()
            .all(|b| !b.behavior.is_empty() && !b.category.is_empty()));
        assert_eq!(advbench().unwrap().len(), 520);
        assert_eq!(jailbreakbench().unwrap().len(), 100);
        let labelled = judge_labelled_dev().unwrap();
        assert!(labelled.len() > 100, "{}", labelled.len());
    }
}
