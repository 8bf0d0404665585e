//! The training forward of DeepSeek-V3 (`seek_models::autograd::deepseek`: MLA + DeepSeekMoE):
//! equal to the inference forward on the same weights (safetensors with and without
//! `q_lora_rank`, GGUF `deepseek2` in both kv_b layouts, a Q8_0 base kept quantized),
//! gradients equal to finite differences for every kind of parameter and for LoRA A/B, and
//! the router's correction bias used for selection only. Fixtures:
//! `tools/make_deepseek_golden.py`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use seek_models::autograd::{Batch, Ctx, Finetune, LoraConfig, Trainable, TrainableOptions};
use seek_models::{load, load_trainable, LoadOptions};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/deepseek")
}

fn trainable(path: &Path, finetune: Finetune, quantized_base: bool) -> Trainable {
    let opts = TrainableOptions {
        finetune,
        seed: 3,
        quantized_base,
    };
    load_trainable(path, &LoadOptions::default(), &opts)
        .unwrap()
        .0
}

fn lora(targets: &[&str]) -> Finetune {
    Finetune::Lora(LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: targets.iter().map(|s| s.to_string()).collect(),
        use_rslora: false,
    })
}

/// Two rows of 10 tokens (vocabulary 300).
const ROWS: [[u32; 10]; 2] = [
    [0, 17, 200, 45, 3, 99, 128, 7, 255, 296],
    [0, 5, 61, 299, 12, 140, 33, 87, 250, 9],
];

/// The rows, each supervised on its next token; the second row cut to 7 tokens and padded.
fn batch() -> Batch {
    let rows: Vec<_> = ROWS
        .iter()
        .zip([10, 7])
        .map(|(r, len)| {
            let ids = r[..len].to_vec();
            let labels = ids[1..].iter().map(|&t| Some(t)).chain([None]).collect();
            (ids, labels)
        })
        .collect();
    Batch::from_rows(&rows).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Training logits (eval mode) against `seek_models::load` + `forward` on a fresh cache.
fn check_against_inference(path: &Path, m: &Trainable, tol: f32) {
    let rows: Vec<_> = ROWS.iter().map(|r| (r.to_vec(), vec![None; 10])).collect();
    let got = m
        .logits(&Batch::from_rows(&rows).unwrap(), &mut Ctx::eval())
        .unwrap();
    let inf = load(path, &LoadOptions::default()).unwrap().model;
    let ids = Tensor::new(&ROWS, inf.device()).unwrap();
    let want = inf.forward(&ids, &mut inf.new_cache()).unwrap();
    assert_eq!(got.dims(), want.dims());
    let d = max_diff(&got, &want);
    println!("{}: max diff {d:e}", path.display());
    assert!(
        d < tol,
        "{}: max diff {d} between training and inference logits",
        path.display()
    );
}

#[test]
fn training_forward_equals_the_inference_forward() {
    for file in [
        "dsv3-qlora-yarn",
        "dsv3-noqlora",
        // The same weights as GGUF: stacked experts, exp_probs_b, attn_kv_b or attn_k_b/v_b.
        "gguf/dsv3-qlora-yarn.kv_b.gguf",
        "gguf/dsv3-qlora-yarn.split.gguf",
    ] {
        let path = dir().join(file);
        check_against_inference(&path, &trainable(&path, Finetune::Full, false), 1e-4);
    }
}

/// LoRA on a Q8_0 base kept in its encoding (expert slices of the stacked tensors included)
/// computes the base with the inference code's kernels: the same logits while B is zero.
#[test]
fn quantized_base_equals_the_inference_forward() {
    let path = dir().join("gguf/dsv3-qlora-yarn.q8_0.gguf");
    let m = trainable(&path, lora(&["kv_b_proj", "gate_proj", "down_proj"]), true);
    check_against_inference(&path, &m, 1e-4);
}

/// A GGUF model (split k_b/v_b, stacked experts) saves under the Hugging Face names and
/// values of the safetensors checkpoint of the same weights, `kv_b_proj` joined back, the
/// correction bias included.
#[test]
fn gguf_state_dict_is_the_hugging_face_checkpoint() {
    let hf = trainable(&dir().join("dsv3-qlora-yarn"), Finetune::Full, false);
    let want = hf.state_dict(false).unwrap();
    let on_disk = candle_core::safetensors::load(
        dir().join("dsv3-qlora-yarn/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let mut on_disk: Vec<&String> = on_disk.keys().collect();
    on_disk.sort();
    assert_eq!(want.keys().collect::<Vec<_>>(), on_disk);
    for file in ["kv_b", "split"] {
        let g = trainable(
            &dir().join(format!("gguf/dsv3-qlora-yarn.{file}.gguf")),
            Finetune::Full,
            false,
        );
        let got = g.state_dict(false).unwrap();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (k, t) in &got {
            let d = max_diff(t, &want[k]);
            assert!(d < 1e-6, "{file} {k}: {d}");
        }
    }
}

/// A checkpoint written from a GGUF model (state dict + `hf_config`) loads as a Hugging Face
/// folder with the same logits.
#[test]
fn gguf_checkpoint_round_trips_through_a_hugging_face_folder() {
    let gguf = dir().join("gguf/dsv3-qlora-yarn.split.gguf");
    let m = trainable(&gguf, Finetune::Full, false);
    let out = tempfile::tempdir().unwrap();
    let state: HashMap<String, Tensor> = m.state_dict(false).unwrap().into_iter().collect();
    candle_core::safetensors::save(&state, out.path().join("model.safetensors")).unwrap();
    let cfg = m.hf_config("deepseek2");
    std::fs::write(
        out.path().join("config.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
    check_against_inference(out.path(), &m, 1e-4);
}

fn loss(m: &Trainable) -> f32 {
    let (sum, n) = m.loss_sum(&batch(), &mut Ctx::eval()).unwrap();
    (sum / n as f64).unwrap().to_scalar::<f32>().unwrap()
}

fn var<'a>(m: &'a Trainable, name: &str) -> &'a Var {
    &m.vars()
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no trainable {name}"))
        .1
}

/// Central differences (f32, eps 1e-2, smaller where a step of 1e-2 changes the routing) on
/// the element with the largest gradient of each named variable, against autograd.
fn check_finite_differences(m: &Trainable, names: &[String]) {
    let (sum, n) = m.loss_sum(&batch(), &mut Ctx::eval()).unwrap();
    let grads = (sum / n as f64).unwrap().backward().unwrap();
    for name in names {
        let var = var(m, name);
        let g: Vec<f32> = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let (i, &gi) = g
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap();
        let orig = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let at = |delta: f32| {
            let mut w = orig.clone();
            w[i] += delta;
            var.set(&Tensor::from_vec(w, var.shape(), var.device()).unwrap())
                .unwrap();
            loss(m)
        };
        let fd_at = |eps: f32| (at(eps) - at(-eps)) / (2.0 * eps);
        // The loss is smooth only while every token keeps its experts: a step that changes a
        // selection makes it jump (this random router is within 1e-2 of a tie for some
        // tokens: the largest-gradient embedding value at eps 1e-2 gives -14.9 for -1.26).
        // Such a step shows as central differences at eps and eps/2 that disagree; then the
        // step shrinks.
        let mut eps = 1e-2f32;
        let mut fd = fd_at(eps);
        while eps > 1e-3 {
            let half = fd_at(eps / 2.0);
            if (fd - half).abs() <= 0.05 * half.abs() + 1e-3 {
                break;
            }
            println!("{name}[{i}]: a step of {eps} changes the routing; {fd} vs {half}");
            eps /= 3.0;
            fd = fd_at(eps);
        }
        at(0.0);
        let err = (fd - gi).abs();
        println!("{name}[{i}]: autograd {gi} finite difference {fd}");
        assert!(
            err <= 0.03 * gi.abs() + 2e-4,
            "{name}[{i}]: autograd {gi} finite difference {fd}"
        );
    }
}

/// The routed expert of `layer` whose `proj` has the largest gradient: one that tokens use.
fn busiest_expert(m: &Trainable, layer: usize, proj: &str) -> String {
    let (sum, n) = m.loss_sum(&batch(), &mut Ctx::eval()).unwrap();
    let grads = (sum / n as f64).unwrap().backward().unwrap();
    let prefix = format!("model.layers.{layer}.mlp.experts.");
    m.vars()
        .iter()
        .filter(|(n, _)| n.contains(&prefix) && n.contains(&format!(".{proj}.")))
        .filter_map(|(n, v)| {
            let g = grads.get(v.as_tensor())?;
            let s = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            Some((n.clone(), s))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("some expert is routed to")
        .0
}

#[test]
fn full_gradients_match_finite_differences() {
    let m = trainable(&dir().join("dsv3-qlora-yarn"), Finetune::Full, false);
    let mut names: Vec<String> = [
        "model.embed_tokens.weight",
        "model.layers.1.input_layernorm.weight",
        "model.layers.1.self_attn.q_a_proj.weight",
        "model.layers.1.self_attn.q_a_layernorm.weight",
        "model.layers.1.self_attn.q_b_proj.weight",
        "model.layers.1.self_attn.kv_a_proj_with_mqa.weight",
        "model.layers.2.self_attn.kv_a_layernorm.weight",
        "model.layers.1.self_attn.kv_b_proj.weight",
        "model.layers.2.self_attn.o_proj.weight",
        "model.layers.0.mlp.gate_proj.weight",
        "model.layers.1.mlp.gate.weight",
        "model.layers.2.mlp.gate.weight",
        "model.layers.1.mlp.shared_experts.up_proj.weight",
        "model.layers.2.mlp.shared_experts.down_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
    ]
    .map(String::from)
    .to_vec();
    names.push(busiest_expert(&m, 1, "gate_proj"));
    names.push(busiest_expert(&m, 2, "down_proj"));
    check_finite_differences(&m, &names);

    // Without q_lora_rank: the direct query projection.
    let m = trainable(&dir().join("dsv3-noqlora"), Finetune::Full, false);
    let mut names = vec![
        "model.layers.1.self_attn.q_proj.weight".to_string(),
        "model.layers.2.mlp.gate.weight".to_string(),
    ];
    names.push(busiest_expert(&m, 2, "up_proj"));
    check_finite_differences(&m, &names);
}

#[test]
fn lora_gradients_match_finite_differences() {
    let m = trainable(
        &dir().join("dsv3-qlora-yarn"),
        lora(&["kv_b_proj", "gate_proj", "up_proj", "down_proj"]),
        false,
    );
    // B starts at zero: give it (fixed, pseudo-random) values so that A has a gradient too.
    for (k, (name, v)) in m.vars().iter().enumerate() {
        if name.ends_with("lora_B.weight") {
            let b: Vec<f32> = (0..v.elem_count())
                .map(|i| 0.05 * ((i * 7 + k * 13) as f32 * 0.61).sin())
                .collect();
            v.set(&Tensor::from_vec(b, v.shape(), v.device()).unwrap())
                .unwrap();
        }
    }
    // kv_b in 3 layers; gate/up/down of the dense MLP, 2 x 8 routed and 2 shared experts.
    assert_eq!(m.vars().len(), 2 * (3 + 3 * (1 + 2 * 8 + 2)));
    let key = |p: &str, ab: &str| format!("base_model.model.model.layers.{p}.lora_{ab}.weight");
    let mut names = vec![
        key("1.self_attn.kv_b_proj", "A"),
        key("1.self_attn.kv_b_proj", "B"),
        key("2.mlp.shared_experts.gate_proj", "A"),
    ];
    // A routed expert that tokens use (its base weight is frozen: find it through B).
    let (sum, n) = m.loss_sum(&batch(), &mut Ctx::eval()).unwrap();
    let grads = (sum / n as f64).unwrap().backward().unwrap();
    let routed = m
        .vars()
        .iter()
        .find(|(n, v)| {
            n.contains("layers.1.mlp.experts.")
                && n.ends_with("down_proj.lora_B.weight")
                && grads.get(v.as_tensor()).is_some()
        })
        .unwrap()
        .0
        .clone();
    names.push(routed.replace("lora_B", "lora_A"));
    names.push(routed);
    check_finite_differences(&m, &names);
}

/// Rewrites `dsv3-qlora-yarn` with `f` applied to its tensors, into a temporary folder.
fn edited_checkpoint(f: impl Fn(&mut HashMap<String, Tensor>)) -> tempfile::TempDir {
    let src = dir().join("dsv3-qlora-yarn");
    let mut t: HashMap<String, Tensor> =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    f(&mut t);
    let out = tempfile::tempdir().unwrap();
    candle_core::safetensors::save(&t, out.path().join("model.safetensors")).unwrap();
    std::fs::copy(src.join("config.json"), out.path().join("config.json")).unwrap();
    out
}

/// `e_score_correction_bias` ranks experts and nothing else: it is no trainable variable (its
/// gradient is zero), a tiny change of it leaves the loss exactly as it was, and a large one
/// changes which experts run, and so the loss.
#[test]
fn correction_bias_selects_experts_and_has_no_gradient() {
    let bias = "model.layers.1.mlp.gate.e_score_correction_bias";
    let m = trainable(&dir().join("dsv3-qlora-yarn"), Finetune::Full, false);
    assert!(m
        .vars()
        .iter()
        .all(|(n, _)| !n.contains("e_score_correction")));
    assert!(m.state_dict(false).unwrap().contains_key(bias));
    let base = loss(&m);
    let shifted = |delta: f32, expert: usize| {
        edited_checkpoint(|t| {
            let mut b = t[bias].to_vec1::<f32>().unwrap();
            b[expert] += delta;
            t.insert(bias.to_string(), Tensor::new(b, &Device::Cpu).unwrap());
        })
    };
    for expert in 0..8 {
        for delta in [1e-4f32, -1e-4] {
            let d = shifted(delta, expert);
            let l = loss(&trainable(d.path(), Finetune::Full, false));
            assert_eq!(l, base, "bias[{expert}] {delta:+}: loss {l} vs {base}");
        }
    }
    let d = shifted(10.0, 0);
    let l = loss(&trainable(d.path(), Finetune::Full, false));
    assert!(
        (l - base).abs() > 1e-3,
        "expert 0 picked for every token: loss {l} vs {base}"
    );
}

/// `dsv3-*` with its config edited, the weights copied.
fn edited_config(name: &str, edits: serde_json::Value) -> tempfile::TempDir {
    let src = dir().join(name);
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    for (k, v) in edits.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    let out = tempfile::tempdir().unwrap();
    std::fs::write(out.path().join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(
        src.join("model.safetensors"),
        out.path().join("model.safetensors"),
    )
    .unwrap();
    out
}

/// V2's softmax routing (greedy without normalization, so the weights are scaled; and
/// group-limited with normalization, so they are not), on the same tiny weights: the
/// training forward equals the inference forward and the router's gradient its finite
/// differences.
#[test]
fn v2_softmax_routing_matches_inference_and_finite_differences() {
    let cases = [
        (
            "dsv3-noqlora",
            serde_json::json!({"model_type": "deepseek_v2", "scoring_func": "softmax",
                "topk_method": "greedy", "norm_topk_prob": false}),
        ),
        (
            "dsv3-qlora-yarn",
            serde_json::json!({"model_type": "deepseek_v2", "scoring_func": "softmax",
                "topk_method": "group_limited_greedy", "norm_topk_prob": true}),
        ),
    ];
    for (name, edits) in cases {
        let d = edited_config(name, edits);
        let m = trainable(d.path(), Finetune::Full, false);
        check_against_inference(d.path(), &m, 1e-4);
        let mut names = vec![
            "model.layers.1.mlp.gate.weight".to_string(),
            "model.layers.2.mlp.gate.weight".to_string(),
        ];
        names.push(busiest_expert(&m, 1, "down_proj"));
        check_finite_differences(&m, &names);
    }
}
