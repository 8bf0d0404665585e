//! `config.json` in every rope form transformers writes (`tools/make_config_forms.py`: 5.x files
//! saved by the installed transformers, and the 4.4x forms of the same settings): each form of an
//! architecture resolves to the same model settings; `type` and `rope_type` that disagree are an
//! error naming both; keys Seek does not use are ignored.

use std::path::Path;

fn resolve(text: &str) -> Result<String, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    match v["model_type"].as_str().unwrap_or_default() {
        "llama" => serde_json::from_str::<crate::llama::Config>(text)
            .map_err(|e| e.to_string())?
            .decoder()
            .map(|d| format!("{d:?}")),
        "qwen2" => serde_json::from_str::<crate::qwen2::Config>(text)
            .map_err(|e| e.to_string())?
            .decoder()
            .map(|d| format!("{d:?}")),
        "deepseek_v3" | "deepseek_v2" => serde_json::from_str::<crate::deepseek_v3::Config>(text)
            .map_err(|e| e.to_string())?
            .checked()
            .map(|d| format!("{d:?}")),
        other => Err(format!("model_type {other:?}")),
    }
}

#[test]
fn every_rope_form_resolves_alike_and_contradictions_are_named() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config_forms");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 20, "{} fixtures", files.len());
    let mut by_arch: std::collections::BTreeMap<String, Vec<(String, String)>> = Default::default();
    for f in &files {
        let name = f.file_stem().unwrap().to_string_lossy().to_string();
        let (arch, form) = name.split_once('.').unwrap();
        let text = std::fs::read_to_string(f).unwrap();
        let got = resolve(&text);
        if form == "contradictory" {
            let e = got.unwrap_err();
            assert!(
                e.contains("type = ") && e.contains("rope_type = "),
                "{name}: {e}"
            );
            continue;
        }
        let cfg = got.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(cfg.contains("500000"), "{name}: rope_theta lost: {cfg}");
        by_arch
            .entry(arch.to_string())
            .or_default()
            .push((form.to_string(), cfg));
    }
    assert_eq!(by_arch.len(), 4);
    for (arch, forms) in &by_arch {
        // `rope_scaling: null` is the plain rope: alike only where the scaled forms are plain too.
        let scaled: Vec<&(String, String)> = forms
            .iter()
            .filter(|(f, _)| f != "v4_null" || arch == "qwen2")
            .collect();
        for (form, cfg) in &scaled {
            assert_eq!(
                cfg, &scaled[0].1,
                "{arch}: {form} differs from {}",
                scaled[0].0
            );
        }
        if arch != "qwen2" {
            let plain = &forms.iter().find(|(f, _)| f == "v4_null").unwrap().1;
            assert_ne!(plain, &scaled[0].1, "{arch}: the scaling was ignored");
        }
    }
}
