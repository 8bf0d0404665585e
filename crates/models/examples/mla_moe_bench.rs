//! DeepSeek-V3 architecture benchmarks on random weights (the shapes are what matters):
//!
//! 1. decode time per token with 64 routed experts (top 2) against 8 experts (top 2) of the
//!    same size: the cost of a step must follow the active parameters, not the total;
//! 2. KV-cache bytes per token of the latent cache against per-head keys and values;
//! 3. decode with the absorbed MLA form against the expanded form at 1k and 4k context.
//!
//!   cargo run --release -p seek-models --example mla_moe_bench [-- --contexts 1024,4096]
//!
//! The models are written as safetensors into a temporary folder and loaded through the
//! same code as a real checkpoint (f32, CPU).

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use seek_models::deepseek_v3::{Config, DeepseekV3};
use seek_models::weights::Weights;
use seek_models::CausalLm;

const HIDDEN: usize = 512;
const HEADS: usize = 16;
const KV_LORA: usize = 256;
const Q_LORA: usize = 384;
const NOPE: usize = 64;
const ROPE: usize = 32;
const V_DIM: usize = 64;
const MOE_F: usize = 256;
const DENSE_F: usize = 1024;
const LAYERS: usize = 4;
const VOCAB: usize = 1024;

fn config(experts: usize) -> serde_json::Value {
    serde_json::json!({
        "model_type": "deepseek_v3", "vocab_size": VOCAB, "hidden_size": HIDDEN,
        "intermediate_size": DENSE_F, "moe_intermediate_size": MOE_F,
        "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "n_shared_experts": 1,
        "n_routed_experts": experts, "routed_scaling_factor": 2.5, "kv_lora_rank": KV_LORA,
        "q_lora_rank": Q_LORA, "qk_rope_head_dim": ROPE, "v_head_dim": V_DIM,
        "qk_nope_head_dim": NOPE, "topk_method": "noaux_tc", "n_group": 1, "topk_group": 1,
        "num_experts_per_tok": 2, "first_k_dense_replace": 1, "norm_topk_prob": true,
        "scoring_func": "sigmoid", "max_position_embeddings": 8192, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0
    })
}

fn weights(experts: usize) -> anyhow::Result<HashMap<String, Tensor>> {
    let dev = Device::Cpu;
    let mut t = HashMap::new();
    let mut put = |name: String, shape: &[usize]| -> anyhow::Result<()> {
        let fan_in = *shape.last().unwrap_or(&1) as f64;
        let w = if name.contains("norm") {
            Tensor::ones(shape, DType::F32, &dev)?
        } else if name.contains("correction_bias") {
            Tensor::zeros(shape, DType::F32, &dev)?
        } else {
            Tensor::randn(0f32, (1.0 / fan_in.sqrt()) as f32, shape, &dev)?
        };
        t.insert(name, w);
        Ok(())
    };
    put("model.embed_tokens.weight".into(), &[VOCAB, HIDDEN])?;
    put("lm_head.weight".into(), &[VOCAB, HIDDEN])?;
    put("model.norm.weight".into(), &[HIDDEN])?;
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        put(format!("{p}.input_layernorm.weight"), &[HIDDEN])?;
        put(format!("{p}.post_attention_layernorm.weight"), &[HIDDEN])?;
        let a = format!("{p}.self_attn");
        put(format!("{a}.q_a_proj.weight"), &[Q_LORA, HIDDEN])?;
        put(format!("{a}.q_a_layernorm.weight"), &[Q_LORA])?;
        put(
            format!("{a}.q_b_proj.weight"),
            &[HEADS * (NOPE + ROPE), Q_LORA],
        )?;
        put(
            format!("{a}.kv_a_proj_with_mqa.weight"),
            &[KV_LORA + ROPE, HIDDEN],
        )?;
        put(format!("{a}.kv_a_layernorm.weight"), &[KV_LORA])?;
        put(
            format!("{a}.kv_b_proj.weight"),
            &[HEADS * (NOPE + V_DIM), KV_LORA],
        )?;
        put(format!("{a}.o_proj.weight"), &[HIDDEN, HEADS * V_DIM])?;
        let m = format!("{p}.mlp");
        let mlp = |put: &mut dyn FnMut(String, &[usize]) -> anyhow::Result<()>,
                   prefix: String,
                   f: usize|
         -> anyhow::Result<()> {
            put(format!("{prefix}.gate_proj.weight"), &[f, HIDDEN])?;
            put(format!("{prefix}.up_proj.weight"), &[f, HIDDEN])?;
            put(format!("{prefix}.down_proj.weight"), &[HIDDEN, f])
        };
        if l == 0 {
            mlp(&mut put, m, DENSE_F)?;
        } else {
            put(format!("{m}.gate.weight"), &[experts, HIDDEN])?;
            put(format!("{m}.gate.e_score_correction_bias"), &[experts])?;
            for e in 0..experts {
                mlp(&mut put, format!("{m}.experts.{e}"), MOE_F)?;
            }
            mlp(&mut put, format!("{m}.shared_experts"), MOE_F)?;
        }
    }
    Ok(t)
}

fn build(experts: usize, dir: &std::path::Path) -> anyhow::Result<DeepseekV3> {
    let d = dir.join(format!("x{experts}"));
    std::fs::create_dir_all(&d)?;
    candle_core::safetensors::save(&weights(experts)?, d.join("model.safetensors"))?;
    let cfg: Config = serde_json::from_value(config(experts))?;
    let w =
        Weights::from_safetensors(&d, &[d.join("model.safetensors")], DType::F32, &Device::Cpu)?;
    Ok(DeepseekV3::new(&cfg, &w)?)
}

/// Median milliseconds per decode step after `context` cached positions.
fn decode_ms(m: &DeepseekV3, context: usize, steps: usize) -> anyhow::Result<f64> {
    let mut cache = m.new_cache();
    let ids: Vec<u32> = (0..context.max(1) as u32)
        .map(|i| (i * 7919) % VOCAB as u32)
        .collect();
    for chunk in ids.chunks(256) {
        let t = Tensor::new(chunk, &Device::Cpu)?.unsqueeze(0)?;
        m.forward_last(&t, &mut cache)?;
    }
    let mut times = Vec::new();
    let mut tok = 1u32;
    for _ in 0..steps {
        let t = Tensor::new(&[tok], &Device::Cpu)?.unsqueeze(0)?;
        let start = Instant::now();
        let logits = m.forward_last(&t, &mut cache)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        tok = logits.argmax(1)?.to_vec1::<u32>()?[0];
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let contexts: Vec<usize> = args
        .iter()
        .position(|a| a == "--contexts")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![1024, 4096]);
    let tmp = tempfile::tempdir()?;
    println!(
        "random DeepSeek-V3-shaped model: hidden {HIDDEN}, {HEADS} heads, kv_lora_rank {KV_LORA}, rope {ROPE}, {LAYERS} layers (1 dense), experts of {MOE_F}, top 2, 1 shared; f32, {} rayon threads",
        rayon::current_num_threads()
    );

    let m8 = build(8, tmp.path())?;
    let m64 = build(64, tmp.path())?;
    let (a8, a64) = (decode_ms(&m8, 16, 30)?, decode_ms(&m64, 16, 30)?);
    println!("\n1. experts          decode ms/token (context 16)");
    println!("   8 routed, top 2   {a8:.2}");
    println!(
        "   64 routed, top 2  {a64:.2}   ({:.2}x the 8-expert model; total parameters {:.1}x)",
        a64 / a8,
        params(64) / params(8)
    );

    let latent = (KV_LORA + ROPE) * LAYERS * 4;
    let naive = (NOPE + ROPE + V_DIM) * HEADS * LAYERS * 4;
    println!(
        "\n2. KV cache per token (f32): latent {latent} B, per-head K/V {naive} B ({:.1}x smaller)",
        naive as f64 / latent as f64
    );
    println!("   DeepSeek-V3 (61 layers, bf16): latent (512 + 64) x 61 x 2 = 70272 B; per-head (192 + 128) x 128 x 61 x 2 = 4997120 B (71x)");

    println!("\n3. context   absorbed ms/token   expanded ms/token   expanded / absorbed");
    let mut m = m8;
    for c in contexts {
        m.set_absorbed_decode(true);
        let a = decode_ms(&m, c, 10)?;
        m.set_absorbed_decode(false);
        let e = decode_ms(&m, c, 10)?;
        println!("   {c:>7}   {a:>17.2}   {e:>17.2}   {:>19.2}x", e / a);
    }
    drop(m64);
    Ok(())
}

fn params(experts: usize) -> f64 {
    let attn = HIDDEN * Q_LORA
        + Q_LORA * HEADS * (NOPE + ROPE)
        + HIDDEN * (KV_LORA + ROPE)
        + KV_LORA * HEADS * (NOPE + V_DIM)
        + HEADS * V_DIM * HIDDEN;
    let moe = (experts + 1) * 3 * HIDDEN * MOE_F + experts * HIDDEN;
    (2 * VOCAB * HIDDEN + LAYERS * attn + 3 * HIDDEN * DENSE_F + (LAYERS - 1) * moe) as f64
}
