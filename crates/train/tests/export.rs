//! What Seek trains runs elsewhere: a LoRA adapter applied at inference (unmerged, over a
//! quantized or dense base) gives the logits of the merged model, and the merged model
//! exported to GGUF loads back with the same logits (llama's q/k rows permuted back as
//! llama.cpp's converter writes them).

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use seek_models::autograd::{Batch, Ctx, Finetune, LoraConfig, Trainable, TrainableOptions};
use seek_models::{load, load_trainable, LoadOptions, LoraAdapter, ModelFormat};
use seek_train::export::{write_gguf, ExportType};

fn golden(f: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden")
        .join(f)
}

/// Fixed pseudo-random values, uniform in `±scale·√3` (standard deviation `scale`): the tests
/// must not depend on an unseeded generator.
fn seeded(scale: f32, shape: &candle_core::Shape, device: &candle_core::Device) -> Tensor {
    let mut state = 0x2545_F491_4F6C_DD1Du64 ^ shape.elem_count() as u64;
    let v: Vec<f32> = (0..shape.elem_count())
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0) * scale * 3f32.sqrt()
        })
        .collect();
    Tensor::from_vec(v, shape, device).unwrap()
}

const IDS: [u32; 7] = [1, 40, 7, 250, 3, 99, 18];

fn lora_model(path: &Path) -> (Trainable, LoraConfig) {
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: vec![
            "q_proj".into(),
            "k_proj".into(),
            "v_proj".into(),
            "down_proj".into(),
        ],
        use_rslora: false,
    };
    let opts = TrainableOptions {
        finetune: Finetune::Lora(cfg.clone()),
        seed: 9,
        quantized_base: false,
    };
    let (m, _, _) = load_trainable(path, &LoadOptions::default(), &opts).unwrap();
    for (name, v) in m.vars() {
        if name.ends_with("lora_B.weight") {
            v.set(&seeded(0.1, v.shape(), v.device())).unwrap();
        }
    }
    (m, cfg)
}

fn train_logits(m: &Trainable) -> Tensor {
    let b = Batch::from_rows(&[(IDS.to_vec(), vec![None; IDS.len()])]).unwrap();
    m.logits(&b, &mut Ctx::eval()).unwrap().squeeze(0).unwrap()
}

fn inference_logits(path: &Path, lora: Option<LoraAdapter>) -> Tensor {
    let opts = LoadOptions {
        lora,
        ..LoadOptions::default()
    };
    let m = load(path, &opts).unwrap().model;
    let ids = Tensor::new(&IDS, m.device()).unwrap().unsqueeze(0).unwrap();
    m.forward(&ids, &mut m.new_cache())
        .unwrap()
        .squeeze(0)
        .unwrap()
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
        .to_scalar()
        .unwrap()
}

#[test]
fn an_adapter_at_inference_equals_the_trained_model() {
    // GGUF llama (permuted q/k rows), HF llama, and Qwen2 with biases.
    for file in ["gguf/tiny-llama.f32.gguf", "tiny-llama", "tiny-qwen2"] {
        let path = golden(file);
        let (m, cfg) = lora_model(&path);
        let adapter = LoraAdapter {
            scaling: cfg.scaling(),
            tensors: m.adapter_state().unwrap(),
        };
        let d = max_diff(&train_logits(&m), &inference_logits(&path, Some(adapter)));
        assert!(d < 1e-4, "{file}: max diff {d}");
    }
}

#[test]
fn an_adapter_for_another_model_is_refused_by_name() {
    let (m, cfg) = lora_model(&golden("tiny-llama"));
    let mut tensors = m.adapter_state().unwrap();
    let extra = tensors.values().next().unwrap().clone();
    tensors.insert(
        "base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight".into(),
        extra,
    );
    let opts = LoadOptions {
        lora: Some(LoraAdapter {
            scaling: cfg.scaling(),
            tensors,
        }),
        ..LoadOptions::default()
    };
    let err = load(&golden("tiny-llama"), &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("layers.7.self_attn.q_proj") && err.contains("another model"),
        "{err}"
    );
}

#[test]
fn the_merged_model_exports_to_gguf_with_the_same_logits() {
    for (file, ty, tol) in [
        ("gguf/tiny-llama.f32.gguf", ExportType::F32, 1e-4),
        ("gguf/tiny-qwen2.f32.gguf", ExportType::F32, 1e-4),
        // F16 matrices: the logits move by the rounding of the weights.
        ("gguf/tiny-llama.f32.gguf", ExportType::F16, 2e-2),
    ] {
        let path = golden(file);
        let (m, _) = lora_model(&path);
        let state = m.state_dict(true).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("merged.gguf");
        let (_, format) = seek_models::inspect(&path).unwrap();
        let ModelFormat::Gguf(base) = format else {
            unreachable!()
        };
        write_gguf(&base, &state, ty, &out).unwrap();
        let d = max_diff(&train_logits(&m), &inference_logits(&out, None));
        assert!(d < tol, "{file} {ty:?}: max diff {d}");
        // The file keeps the base's tokenizer and metadata.
        let g = seek_gguf::GgufFile::open(&out).unwrap();
        assert_eq!(g.metadata.len(), base.metadata.len());
        assert_eq!(g.tensors.len(), base.tensors.len());
    }
}
