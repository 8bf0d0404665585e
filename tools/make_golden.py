#!/usr/bin/env python3
"""Golden fixtures for Seek: tiny random Llama / Qwen2 checkpoints and their f32 logits.

Writes (all under tests/fixtures/golden/, see tools/README.md for the file-by-file list):

  tiny-llama/            LlamaForCausalLM, 2 layers, GQA 4/2, untied lm_head
  tiny-llama-sharded/    the same weights as tiny-llama in >= 2 safetensors shards
                         (config.json written in transformers-5 style: rope_parameters, dtype)
  tiny-qwen2/            Qwen2ForCausalLM, 2 layers, random q/k/v biases, tied embeddings
  tiny-qwen2-bf16/       tiny-qwen2 with its weights cast to bf16
  tiny-llama3-rope/      Llama with rope_scaling llama3 (factor 8, original ctx 64, theta 5e5)
  gguf/                  GGUF files of the tiny models as llama.cpp's convert_hf_to_gguf.py
                         would write them (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1; and
                         two mixed files of the 256-wide tiny-llama-256 covering Q2_K..Q6_K),
                         each with a <file>.golden.json + <file>.logits.bin reference, and
                         quant-blocks.gguf (one tensor per type + its exact dequantization).

Every reference is computed by transformers in float32 (eager attention, 1 CPU thread):
  * safetensors dirs: the checkpoint is saved, then RE-LOADED from disk with
    from_pretrained and run, so the numbers are what the files on disk mean;
  * bf16 dir: weights loaded as bf16, then .float(), then run in f32;
  * GGUF files: every tensor of the file is dequantized back with gguf.quants.dequantize
    (q/k rows of llama files un-permuted), loaded into the HF model and run in f32, so the
    reference is exactly what an exact engine computes from that file.

Deterministic: fixed seeds, fixed token ids, no hub access. Re-run with
    python3 tools/make_golden.py
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

import gguf
import transformers
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader, GGUFWriter, LlamaFileType
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "golden"

# Fixed token ids (vocab 256). Includes 0 and 255 to hit both ends of the embedding table.
INPUT_IDS = [1, 17, 42, 99, 200, 3, 255, 128, 64, 7, 0, 180]
# The KV-cache check: feed INPUT_IDS[:SPLIT] then INPUT_IDS[SPLIT:] through the cache; the
# rows of each chunk must equal the matching rows of the full-sequence logits.
SPLIT = 7
GREEDY_PROMPT = [1, 5, 77, 140, 222]
MAX_NEW_TOKENS = 16

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------
# Model definitions
# --------------------------------------------------------------------------------------------

COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=96,  # not a power of two on purpose (3 blocks of 32)
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    hidden_act="silu",
    bos_token_id=1,
    eos_token_id=2,
)

MODELS = {
    "tiny-llama": dict(
        arch="llama", seed=69,
        config=dict(COMMON, num_hidden_layers=2, rms_norm_eps=1e-5, rope_theta=10000.0,
                    tie_word_embeddings=False),
    ),
    "tiny-qwen2": dict(
        arch="qwen2", seed=17,
        config=dict(COMMON, num_hidden_layers=2, rms_norm_eps=1e-6, rope_theta=1000000.0,
                    tie_word_embeddings=True, use_sliding_window=False, sliding_window=4096,
                    max_window_layers=2),
    ),
    "tiny-llama3-rope": dict(
        arch="llama", seed=49,
        config=dict(COMMON, num_hidden_layers=2, rms_norm_eps=1e-5, rope_theta=500000.0,
                    tie_word_embeddings=True,
                    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 64}),
    ),
    # Only for the K-quant GGUF files (row length must be a multiple of 256); never saved
    # as safetensors.
    "tiny-llama-256": dict(
        arch="llama", seed=30,
        config=dict(COMMON, hidden_size=256, intermediate_size=256, num_hidden_layers=1,
                    head_dim=64, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True),
    ),
}


def versions() -> dict:
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "gguf": getattr(gguf, "__version__", None) or _pkg_version("gguf"),
        "safetensors": _pkg_version("safetensors"),
    }


def _pkg_version(name: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:  # pragma: no cover
        return None


def hf_config(arch: str, cfg: dict):
    cfg = dict(cfg)
    rope = {"rope_type": "default", "rope_theta": cfg.pop("rope_theta")}
    if "rope_scaling" in cfg:
        rope.update(cfg.pop("rope_scaling"))
    cls = LlamaConfig if arch == "llama" else Qwen2Config
    # transformers 5 takes rope_parameters; `rope_theta`/`rope_scaling` are the v4 names.
    c = cls(**cfg, rope_parameters=rope)
    c._attn_implementation = "eager"
    return c


def hf_class(arch: str):
    return LlamaForCausalLM if arch == "llama" else Qwen2ForCausalLM


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Random weights with a healthy spread, so that a wrong op cannot hide in noise.

    HF inits biases to zero and RMSNorm weights to one; both are made random here:
      embeddings N(0, 0.3^2); Linear weights N(0, 1/in_features); biases N(0, 0.5^2);
      per-layer RMSNorm weights U(0.5, 1.5); the final norm +-U(2, 4) with random signs.
    The signed, larger final norm spreads the logits (top-2 margins >= 0.1 for the fixed
    ids) and stops tied-embedding models from just repeating the last token.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied weights appear once
            if name == "model.norm.weight":
                p.copy_(torch.empty(p.shape).uniform_(2.0, 4.0, generator=g))
            elif name.endswith("norm.weight"):
                p.copy_(torch.empty(p.shape).uniform_(0.5, 1.5, generator=g))
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            else:  # Linear weight [out, in]
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
        g2 = torch.Generator().manual_seed(seed + 999)
        w = model.model.norm.weight
        w.mul_(torch.where(torch.rand(w.shape, generator=g2) < 0.5, -1.0, 1.0))


def build(name: str):
    spec = MODELS[name]
    torch.manual_seed(spec["seed"])
    config = hf_config(spec["arch"], spec["config"])
    model = hf_class(spec["arch"])(config).float().eval()
    randomize(model, spec["seed"])
    return model


# --------------------------------------------------------------------------------------------
# Reference computations
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def full_logits(model, ids) -> np.ndarray:
    out = model(torch.tensor([ids]), use_cache=False)
    return out.logits[0].float().numpy().astype(np.float32)


@torch.no_grad()
def chunked_max_diff(model, ids, split, full: np.ndarray) -> float:
    """Feed ids in two chunks through HF's KV cache; max |diff| against full logits."""
    a = model(torch.tensor([ids[:split]]), use_cache=True)
    b = model(torch.tensor([ids[split:]]), past_key_values=a.past_key_values, use_cache=True)
    got = torch.cat([a.logits[0], b.logits[0]]).float().numpy()
    return float(np.abs(got - full).max())


@torch.no_grad()
def greedy(model, prompt, n) -> dict:
    """Pure argmax continuation (EOS never stops it), by full forwards without a cache,
    cross-checked against model.generate(do_sample=False) which uses the KV cache."""
    ids = list(prompt)
    margins = []
    for _ in range(n):
        row = full_logits(model, ids)[-1]
        top2 = np.sort(row)[-2:]
        margins.append(float(top2[1] - top2[0]))
        ids.append(int(np.argmax(row)))
    tokens = ids[len(prompt):]

    gen_cfg = transformers.GenerationConfig(
        do_sample=False, max_new_tokens=n, eos_token_id=None, pad_token_id=0, bos_token_id=None)
    model.generation_config.eos_token_id = None
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                         dtype=torch.long), generation_config=gen_cfg)
    gen = out[0, len(prompt):].tolist()
    if gen != tokens:
        raise SystemExit(f"generate() {gen} != argmax loop {tokens}")
    return {"prompt": list(prompt), "max_new_tokens": n, "tokens": tokens,
            "eos_disabled": True, "top2_margins": margins, "min_top2_margin": min(margins)}


def write_reference(dirpath: Path, stem: str, model, extra: dict) -> dict:
    """Full-sequence logits + greedy + KV-cache check; writes <stem>logits.bin, returns JSON."""
    logits = full_logits(model, INPUT_IDS)
    logits_file = f"{stem}logits.bin"
    logits.astype("<f4").tofile(dirpath / logits_file)
    chunk_diff = chunked_max_diff(model, INPUT_IDS, SPLIT, logits)
    if chunk_diff > 1e-4:
        raise SystemExit(f"HF chunked vs full mismatch {chunk_diff}")
    sorted_rows = np.sort(logits, axis=-1)
    g = {
        "input_ids": INPUT_IDS,
        "logits_shape": list(logits.shape),
        "logits_file": logits_file,
        "logits_dtype": "f32 little-endian, row-major [T, V]",
        "first_logits": [float(x) for x in logits[0, :8]],
        "argmax": [int(i) for i in logits.argmax(-1)],
        "top2_margins": [float(x) for x in sorted_rows[:, -1] - sorted_rows[:, -2]],
        "min_top2_margin": float((sorted_rows[:, -1] - sorted_rows[:, -2]).min()),
        "incremental": {
            "chunks": [[0, SPLIT], [SPLIT, len(INPUT_IDS)]],
            "note": "feed input_ids[0:7] then input_ids[7:12] through the KV cache; the logits "
                    "of each chunk must equal the same rows of logits_file (transformers' own "
                    "cached run matched to max_abs_diff_hf)",
            "max_abs_diff_hf": chunk_diff,
        },
        "greedy": greedy(model, GREEDY_PROMPT, MAX_NEW_TOKENS),
        "rope_inv_freq": [float(x) for x in model.model.rotary_emb.inv_freq],
        "tolerance_hint": {"f32_max_abs": 1e-4},
    }
    g.update(extra)
    # the fixed ids must give clear argmaxes and a non-degenerate continuation, or tests of
    # top-1 agreement would be fragile
    what = extra.get("model") or extra.get("model_file")
    m = min(g["min_top2_margin"], g["greedy"]["min_top2_margin"])
    if m < 0.05:
        print(f"  note: {what}: smallest top-2 logit margin {m:.4g} (see top2_margins)")
    if len(set(g["greedy"]["tokens"])) < 6:
        print(f"  note: {what}: repetitive greedy continuation {g['greedy']['tokens']}")
    return g


def dump_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n")


# --------------------------------------------------------------------------------------------
# Safetensors checkpoints
# --------------------------------------------------------------------------------------------


def to_v4_config(path: Path, integer_theta: bool = False) -> None:
    """Rewrite a transformers-5 config.json in the style of hub checkpoints made with
    transformers 4.x (the DeepSeek-R1-Distill configs): rope_theta + rope_scaling at the top
    level, torch_dtype, no rope_parameters / layer_types."""
    c = json.loads(path.read_text())
    rp = c.pop("rope_parameters")
    theta = rp.pop("rope_theta")
    c["rope_theta"] = int(theta) if integer_theta and float(theta).is_integer() else theta
    c["rope_scaling"] = None if rp.get("rope_type", "default") == "default" else rp
    c["torch_dtype"] = c.pop("dtype")
    c.pop("layer_types", None)
    if c.get("model_type") == "qwen2" and c.get("sliding_window") is None:
        c["sliding_window"] = 4096  # as in the DeepSeek-R1-Distill-Qwen configs (unused:
        # use_sliding_window is false)
    c["transformers_version"] = c.get("transformers_version")  # keep as written
    path.write_text(json.dumps(dict(sorted(c.items())), indent=2) + "\n")


def reload(dirpath: Path, arch: str, dtype=torch.float32):
    m = hf_class(arch).from_pretrained(dirpath, dtype=dtype, attn_implementation="eager")
    return m.eval()


def gen_info(name: str, **kw) -> dict:
    spec = MODELS[name]
    d = {"script": "tools/make_golden.py", "seed": spec["seed"], "versions": versions()}
    d.update(kw)
    return d


def make_safetensors(name: str, v4_style=True, integer_theta=False):
    spec = MODELS[name]
    model = build(name)
    d = OUT / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    model.save_pretrained(d, safe_serialization=True)
    if v4_style:
        to_v4_config(d / "config.json", integer_theta=integer_theta)
    (d / "generation_config.json").unlink(missing_ok=True)
    re = reload(d, spec["arch"])
    # the file must mean exactly the in-memory model
    ref_mem = full_logits(model, INPUT_IDS)
    ref_disk = full_logits(re, INPUT_IDS)
    assert np.array_equal(ref_mem, ref_disk), f"{name}: reloaded model differs"
    assert torch.equal(re.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq)
    g = write_reference(d, "", re, {
        "model": name, "arch": spec["arch"], "weights_dtype": "float32",
        "reference": "transformers f32 forward of the checkpoint re-loaded from this dir",
        "generator": gen_info(name),
    })
    dump_json(d / "golden.json", g)
    print(f"[{name}] saved {sorted(p.name for p in d.iterdir())}; logits[0,:4]="
          f"{g['first_logits'][:4]} greedy={g['greedy']['tokens']}")
    return model, g


def make_sharded(src_model, src_golden: dict):
    name = "tiny-llama-sharded"
    d = OUT / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    src_model.save_pretrained(d, safe_serialization=True, max_shard_size="160KB")
    (d / "generation_config.json").unlink(missing_ok=True)
    shards = sorted(p.name for p in d.glob("*.safetensors"))
    assert len(shards) >= 2 and (d / "model.safetensors.index.json").exists(), shards
    re = reload(d, "llama")
    logits = full_logits(re, INPUT_IDS)
    ref = np.fromfile(OUT / "tiny-llama" / "logits.bin", dtype="<f4").reshape(logits.shape)
    assert np.array_equal(logits, ref), "sharded copy differs from tiny-llama"
    g = write_reference(d, "", re, {
        "model": name, "arch": "llama", "weights_dtype": "float32",
        "same_weights_as": "tiny-llama",
        "config_style": "transformers-5 (rope_parameters, dtype), unlike tiny-llama/config.json",
        "reference": "transformers f32 forward of the checkpoint re-loaded from this dir",
        "generator": gen_info("tiny-llama"),
    })
    assert g["greedy"]["tokens"] == src_golden["greedy"]["tokens"]
    dump_json(d / "golden.json", g)
    print(f"[{name}] shards={shards}")


def make_bf16(src_model):
    name = "tiny-qwen2-bf16"
    d = OUT / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    m16 = build("tiny-qwen2")
    m16.load_state_dict(src_model.state_dict())
    m16 = m16.to(torch.bfloat16)
    m16.save_pretrained(d, safe_serialization=True)
    to_v4_config(d / "config.json", integer_theta=True)
    (d / "generation_config.json").unlink(missing_ok=True)
    re = reload(d, "qwen2", dtype=torch.bfloat16)
    assert re.model.embed_tokens.weight.dtype == torch.bfloat16
    re = re.float()
    f32 = np.fromfile(OUT / "tiny-qwen2" / "logits.bin", dtype="<f4")
    g = write_reference(d, "", re, {
        "model": name, "arch": "qwen2", "weights_dtype": "bfloat16",
        "same_weights_as": "tiny-qwen2 (cast to bf16, round-to-nearest-even)",
        "reference": "weights loaded as bf16 from this dir, upcast with .float(), forward in f32",
        "generator": gen_info("tiny-qwen2"),
    })
    lg = np.fromfile(d / g["logits_file"], dtype="<f4")
    g["max_abs_diff_vs_f32_model"] = float(np.abs(lg - f32).max())
    dump_json(d / "golden.json", g)
    print(f"[{name}] max|bf16 - f32 logits| = {g['max_abs_diff_vs_f32_model']:.4g}")


# --------------------------------------------------------------------------------------------
# K-quant quantizers (gguf.quants can only dequantize K types). Simple min/max quantizers
# that write valid blocks in ggml's layouts; the reference is computed from
# gguf.quants.dequantize of the bytes, so their rounding choices do not matter for exactness.
# --------------------------------------------------------------------------------------------


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16)


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    return x.astype("<f2").reshape(-1, 1).view(np.uint8)


def _safe_div(a, b):
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape, np.float32), where=b != 0)


def _pack_scale_min_k4(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """8 six-bit scales + 8 six-bit mins -> 12 bytes (ggml get_scale_min_k4 layout)."""
    sc = sc.astype(np.uint8)
    mn = mn.astype(np.uint8)
    out = np.zeros((sc.shape[0], 12), np.uint8)
    out[:, 0:4] = (sc[:, 0:4] & 0x3F) | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = (mn[:, 0:4] & 0x3F) | ((mn[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((mn[:, 4:8] & 0x0F) << 4)
    return out


def _affine_k(x: np.ndarray, nmax: int, scale_bits: int):
    """x: (n, nsub, sub). Returns d, dmin (f16), sc, mn (ints), q (0..nmax)."""
    smax = (1 << scale_bits) - 1
    lo = np.minimum(x.min(-1), 0.0)
    hi = x.max(-1)
    scale = (hi - lo) / nmax
    m = -lo
    d = _f16(scale.max(-1) / smax).astype(np.float32)
    dmin = _f16(m.max(-1) / smax).astype(np.float32)
    sc = np.clip(np.rint(_safe_div(scale, d[:, None])), 0, smax)
    mn = np.clip(np.rint(_safe_div(m, dmin[:, None])), 0, smax)
    eff_s = (d[:, None] * sc)[..., None]
    eff_m = (dmin[:, None] * mn)[..., None]
    q = np.clip(np.rint(_safe_div(x + eff_m, eff_s)), 0, nmax).astype(np.uint8)
    return d, dmin, sc, mn, q


def quant_q4_k(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    d, dmin, sc, mn, q = _affine_k(blocks.reshape(n, 8, 32), 15, 6)
    qs = (q[:, 0::2, :] | (q[:, 1::2, :] << 4)).reshape(n, 128)
    return np.concatenate([_f16_bytes(d).reshape(n, 2), _f16_bytes(dmin).reshape(n, 2),
                           _pack_scale_min_k4(sc, mn), qs], axis=1)


def quant_q5_k(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    d, dmin, sc, mn, q = _affine_k(blocks.reshape(n, 8, 32), 31, 6)
    lo = q & 0x0F
    qs = (lo[:, 0::2, :] | (lo[:, 1::2, :] << 4)).reshape(n, 128)
    hb = (q >> 4) & 1  # (n, 8, 32): bit j of qh[l] is the 5th bit of sub-block j, element l
    qh = np.zeros((n, 32), np.uint8)
    for j in range(8):
        qh |= (hb[:, j, :] << j).astype(np.uint8)
    return np.concatenate([_f16_bytes(d).reshape(n, 2), _f16_bytes(dmin).reshape(n, 2),
                           _pack_scale_min_k4(sc, mn), qh, qs], axis=1)


def quant_q2_k(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    d, dmin, sc, mn, q = _affine_k(blocks.reshape(n, 16, 16), 3, 4)
    qf = q.reshape(n, 2, 4, 32)  # element h*128 + s*32 + l -> byte h*32 + l, shift 2s
    qs = np.zeros((n, 2, 32), np.uint8)
    for s in range(4):
        qs |= (qf[:, :, s, :] << (2 * s)).astype(np.uint8)
    scales = (sc.astype(np.uint8) | (mn.astype(np.uint8) << 4))
    return np.concatenate([scales, qs.reshape(n, 64), _f16_bytes(d).reshape(n, 2),
                           _f16_bytes(dmin).reshape(n, 2)], axis=1)


def quant_q3_k(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    x = blocks.reshape(n, 16, 16)
    idx = np.abs(x).argmax(-1)
    ext = np.take_along_axis(x, idx[..., None], -1)[..., 0]  # signed extreme
    scale = -ext / 4.0  # q = -4 reaches the extreme whatever its sign
    d = _f16(np.abs(scale).max(-1) / 31).astype(np.float32)
    sc = np.clip(np.rint(_safe_div(scale, d[:, None])), -32, 31)
    eff = (d[:, None] * sc)[..., None]
    q = np.clip(np.rint(_safe_div(x, eff)), -4, 3).astype(np.int16)
    u = (q + 4).astype(np.uint8).reshape(n, 256)  # 0..7 = ql (2 bits) + 4*hbit
    ql = (u & 3).reshape(n, 2, 4, 32)
    qs = np.zeros((n, 2, 32), np.uint8)
    for s in range(4):
        qs |= (ql[:, :, s, :] << (2 * s)).astype(np.uint8)
    hb = (u >> 2).reshape(n, 8, 32)  # element j*32 + l -> bit j of hmask[l]
    hmask = np.zeros((n, 32), np.uint8)
    for j in range(8):
        hmask |= (hb[:, j, :] << j).astype(np.uint8)
    s6 = (sc + 32).astype(np.uint8)
    lo4, hi2 = s6 & 0x0F, s6 >> 4
    scales = np.zeros((n, 12), np.uint8)
    scales[:, 0:8] = lo4[:, 0:8] | (lo4[:, 8:16] << 4)
    for s in range(4):
        scales[:, 8:12] |= (hi2[:, 4 * s:4 * s + 4] << (2 * s)).astype(np.uint8)
    return np.concatenate([hmask, qs.reshape(n, 64), scales, _f16_bytes(d).reshape(n, 2)], axis=1)


def quant_q6_k(blocks: np.ndarray) -> np.ndarray:
    n = blocks.shape[0]
    x = blocks.reshape(n, 16, 16)
    scale = np.abs(x).max(-1) / 31.0
    d = _f16(scale.max(-1) / 127).astype(np.float32)
    sc = np.clip(np.rint(_safe_div(scale, d[:, None])), -128, 127)
    eff = (d[:, None] * sc)[..., None]
    q = (np.clip(np.rint(_safe_div(x, eff)), -32, 31) + 32).astype(np.uint8).reshape(n, 2, 128)
    low, high = q & 0x0F, q >> 4
    ql = (low[:, :, 0:64] | (low[:, :, 64:128] << 4)).reshape(n, 128)
    qh = (high[:, :, 0:32] | (high[:, :, 32:64] << 2) | (high[:, :, 64:96] << 4)
          | (high[:, :, 96:128] << 6)).reshape(n, 64)
    return np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8),
                           _f16_bytes(d).reshape(n, 2)], axis=1)


K_QUANTIZERS = {QT.Q2_K: quant_q2_k, QT.Q3_K: quant_q3_k, QT.Q4_K: quant_q4_k,
                QT.Q5_K: quant_q5_k, QT.Q6_K: quant_q6_k}


def quantize(arr: np.ndarray, qt: QT) -> np.ndarray:
    """-> array for GGUFWriter.add_tensor (float32/float16 or uint8 bytes [rows, row_bytes])."""
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if qt == QT.F32:
        return arr
    if qt == QT.F16:
        return arr.astype(np.float16)
    if qt in K_QUANTIZERS:
        block, tsize = gguf.GGML_QUANT_SIZES[qt]
        assert arr.shape[-1] % block == 0, (arr.shape, qt)
        out = K_QUANTIZERS[qt](arr.reshape(-1, block))
        assert out.shape[1] == tsize and out.dtype == np.uint8, (qt, out.shape, out.dtype)
        return out.reshape(*arr.shape[:-1], arr.shape[-1] // block * tsize)
    return gguf.quants.quantize(arr, qt)


def dequantize(data: np.ndarray, qt: QT, shape) -> np.ndarray:
    """GGUFReader tensor data (or our own quantize() output) -> float32 [rows, cols]."""
    if qt == QT.F32:
        return np.array(data, dtype=np.float32).reshape(shape)
    if qt == QT.F16:
        return np.array(data, dtype=np.float16).astype(np.float32).reshape(shape)
    return gguf.quants.dequantize(np.asarray(data), qt).astype(np.float32).reshape(shape)


# --------------------------------------------------------------------------------------------
# GGUF writing, as llama.cpp's convert_hf_to_gguf.py (LlamaModel / Qwen2Model) does it
# --------------------------------------------------------------------------------------------


def permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """convert_hf_to_gguf.LlamaModel.permute: HF rotate-half rows -> ggml interleaved rows."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def gguf_tensors(model, arch: str) -> list[tuple[str, np.ndarray]]:
    """HF state dict -> [(gguf name, f32 array in HF [out, in] layout, permuted for llama)]."""
    cfg = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    out = [("token_embd.weight", sd["model.embed_tokens.weight"])]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        for hf, gg in HF_TO_GGUF.items():
            for kind in ("weight", "bias"):
                key = f"{p}{hf}.{kind}"
                if key not in sd:
                    continue
                w = sd[key]
                if arch == "llama" and hf == "self_attn.q_proj":
                    w = permute(w, cfg.num_attention_heads, cfg.num_attention_heads)
                if arch == "llama" and hf == "self_attn.k_proj":
                    w = permute(w, cfg.num_attention_heads, cfg.num_key_value_heads)
                out.append((f"blk.{i}.{gg}.{kind}", w))
    out.append(("output_norm.weight", sd["model.norm.weight"]))
    if not cfg.tie_word_embeddings:
        out.append(("output.weight", sd["lm_head.weight"]))
    return out


def llama3_rope_factors(cfg) -> np.ndarray | None:
    """rope_freqs.weight as convert_hf_to_gguf.LlamaModel.generate_extra_tensors writes it
    (a divisor per frequency), with original_max_position_embeddings taken from rope_scaling."""
    rp = cfg.rope_parameters
    if rp.get("rope_type") != "llama3":
        return None
    base, dim = rp["rope_theta"], cfg.head_dim
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor, lo, hi = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"]
    old = rp["original_max_position_embeddings"]
    lo_wl, hi_wl = old / lo, old / hi
    out = []
    for f in freqs.tolist():
        wl = 2 * math.pi / f
        if wl < hi_wl:
            out.append(1.0)
        elif wl > lo_wl:
            out.append(factor)
        else:
            smooth = (old / wl - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


FILE_TYPES = {
    "f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16,
    "bf16": LlamaFileType.MOSTLY_BF16, "q8_0": LlamaFileType.MOSTLY_Q8_0,
    "q4_0": LlamaFileType.MOSTLY_Q4_0, "q4_1": LlamaFileType.MOSTLY_Q4_1,
    "q5_0": LlamaFileType.MOSTLY_Q5_0, "q5_1": LlamaFileType.MOSTLY_Q5_1,
    "q2_k": LlamaFileType.MOSTLY_Q2_K, "q3_k": LlamaFileType.MOSTLY_Q3_K_S,
    "q4_k": LlamaFileType.MOSTLY_Q4_K_S, "q5_k": LlamaFileType.MOSTLY_Q5_K_S,
    "q6_k": LlamaFileType.MOSTLY_Q6_K,
}

# Per-tensor types of the mixed K-quant files of tiny-llama-256 (tied embeddings, so
# token_embd is also the output matrix).
#   kmix-a: like llama.cpp's Q4_K_M (Q4_K + Q6_K, some Q5_0 / Q8_0)
#   kmix-b: the other K types (Q2_K, Q3_K, Q5_K) and Q4_1 / Q5_1 at row length 256
MIXED = {
    "kmix-a": {"token_embd": QT.Q8_0, "attn_q": QT.Q4_K, "attn_k": QT.Q4_K, "attn_v": QT.Q6_K,
               "attn_output": QT.Q5_0, "ffn_gate": QT.Q4_K, "ffn_up": QT.Q4_K,
               "ffn_down": QT.Q6_K},
    "kmix-b": {"token_embd": QT.Q5_K, "attn_q": QT.Q3_K, "attn_k": QT.Q2_K, "attn_v": QT.Q5_K,
               "attn_output": QT.Q4_1, "ffn_gate": QT.Q2_K, "ffn_up": QT.Q3_K,
               "ffn_down": QT.Q5_1},
}
FILE_TYPES["kmix-a"] = LlamaFileType.MOSTLY_Q4_K_M
FILE_TYPES["kmix-b"] = LlamaFileType.MOSTLY_Q3_K_M


def tensor_type(gname: str, variant: str) -> QT:
    base = gname.split(".")[-2]
    if gname.endswith(".bias") or base.endswith("norm"):
        return QT.F32  # 1-D tensors stay F32, as llama.cpp does
    if variant in MIXED:
        return MIXED[variant][base]
    return QT[variant.upper()]


def write_gguf(path: Path, model, arch: str, variant: str) -> dict[str, QT]:
    cfg = model.config
    w = GGUFWriter(path, arch)
    w.add_type("model")
    w.add_name(path.name.split(".")[0])
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_file_type(int(FILE_TYPES[variant]))
    w.add_vocab_size(cfg.vocab_size)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    types = {}
    for gname, arr in gguf_tensors(model, arch):
        qt = tensor_type(gname, variant)
        data = quantize(arr, qt)
        w.add_tensor(gname, data, raw_dtype=None if qt in (QT.F32, QT.F16) else qt)
        types[gname] = qt
    factors = llama3_rope_factors(cfg)
    if factors is not None:
        w.add_tensor("rope_freqs.weight", factors)
        types["rope_freqs.weight"] = QT.F32
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return types


def model_from_gguf(path: Path, template, arch: str):
    """Dequantize every tensor of the GGUF file into a copy of the template HF model."""
    cfg = template.config
    r = GGUFReader(path)
    tens = {}
    for t in r.tensors:
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))  # ggml ne -> [rows, cols]
        tens[t.name] = dequantize(t.data, QT(t.tensor_type), shape)
    m = hf_class(arch)(cfg).float().eval()
    sd = {}
    rev = {v: k for k, v in HF_TO_GGUF.items()}
    for gname, arr in tens.items():
        if gname == "token_embd.weight":
            sd["model.embed_tokens.weight"] = arr
        elif gname == "output_norm.weight":
            sd["model.norm.weight"] = arr
        elif gname == "output.weight":
            sd["lm_head.weight"] = arr
        elif gname == "rope_freqs.weight":
            continue  # checked separately; HF computes the same scaling from its config
        else:
            _, i, base, kind = gname.split(".")
            if arch == "llama" and base == "attn_q":
                arr = unpermute(arr, cfg.num_attention_heads)
            if arch == "llama" and base == "attn_k":
                arr = unpermute(arr, cfg.num_key_value_heads)
            sd[f"model.layers.{i}.{rev[base]}.{kind}"] = arr
    if cfg.tie_word_embeddings:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    missing = set(m.state_dict()) - set(sd)
    assert not missing, missing
    m.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()})
    return m, r


def check_gguf(path: Path, model, arch: str, types: dict[str, QT], r: GGUFReader) -> None:
    cfg = model.config
    f = {k: r.fields[k].contents() for k in r.fields if not k.startswith("GGUF.")}
    assert f["general.architecture"] == arch
    assert f[f"{arch}.block_count"] == cfg.num_hidden_layers
    assert f[f"{arch}.embedding_length"] == cfg.hidden_size
    assert f[f"{arch}.feed_forward_length"] == cfg.intermediate_size
    assert f[f"{arch}.attention.head_count"] == cfg.num_attention_heads
    assert f[f"{arch}.attention.head_count_kv"] == cfg.num_key_value_heads
    assert f[f"{arch}.rope.dimension_count"] == cfg.head_dim
    assert f[f"{arch}.vocab_size"] == cfg.vocab_size
    assert f[f"{arch}.context_length"] == cfg.max_position_embeddings
    got = {t.name: QT(t.tensor_type) for t in r.tensors}
    assert got == types, (got, types)
    shapes = {t.name: [int(x) for x in t.shape] for t in r.tensors}
    # ggml ne order: [cols, rows]
    assert shapes["token_embd.weight"] == [cfg.hidden_size, cfg.vocab_size]
    assert shapes["blk.0.attn_k.weight"] == [cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim]
    assert shapes["blk.0.ffn_down.weight"] == [cfg.intermediate_size, cfg.hidden_size]
    assert ("output.weight" in shapes) == (not cfg.tie_word_embeddings)
    if "rope_freqs.weight" in shapes:
        rf = next(t for t in r.tensors if t.name == "rope_freqs.weight")
        dim, base = cfg.head_dim, cfg.rope_parameters["rope_theta"]
        unscaled = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        assert np.allclose(np.asarray(rf.data), (unscaled / model.model.rotary_emb.inv_freq)
                           .numpy(), rtol=1e-5), "rope_freqs disagrees with transformers' inv_freq"


def _q8_blocks(x: torch.Tensor, block: int, f16_scale: bool) -> torch.Tensor:
    """Round-trip x through ggml's activation quantization (Q8_0: blocks of 32 with an f16
    scale; Q8_K: blocks of 256 with an f32 scale), as ggml-style quantized matmuls do."""
    shp = x.shape
    b = x.reshape(-1, block)
    d = b.abs().amax(-1, keepdim=True) / 127.0
    if f16_scale:
        d = d.half().float()
    q = torch.where(d > 0, torch.round(b / torch.where(d > 0, d, 1.0)), 0.0).clamp(-127, 127)
    return (q * d).reshape(shp)


@torch.no_grad()
def act_quant_logits(model, arch: str, types: dict[str, QT]) -> np.ndarray:
    """Logits when every Linear whose weight is quantized sees ggml-style quantized
    activations (Q8_0 for the 32-block types, Q8_K for K types, f16/bf16 rounding for
    F16/BF16 weights). Only an estimate of what a ggml/candle kernel does."""
    rev = {v: k for k, v in HF_TO_GGUF.items()}
    hooks = []
    for gname, qt in types.items():
        if not gname.endswith(".weight") or qt == QT.F32 or gname.split(".")[-2].endswith("norm"):
            continue
        if gname == "token_embd.weight":
            if not model.config.tie_word_embeddings:
                continue
            mod = model.lm_head
        elif gname == "output.weight":
            mod = model.lm_head
        elif gname == "rope_freqs.weight":
            continue
        else:
            _, i, base, _ = gname.split(".")
            mod = model.get_submodule(f"model.layers.{i}.{rev[base]}")
        if qt == QT.F16:
            fn = lambda x: x.half().float()  # noqa: E731
        elif qt == QT.BF16:
            fn = lambda x: x.bfloat16().float()  # noqa: E731
        elif qt in K_QUANTIZERS:
            fn = lambda x: _q8_blocks(x, 256, False)  # noqa: E731
        else:
            fn = lambda x: _q8_blocks(x, 32, True)  # noqa: E731
        hooks.append(mod.register_forward_pre_hook(lambda m, a, fn=fn: (fn(a[0]),)))
    try:
        return full_logits(model, INPUT_IDS)
    finally:
        for h in hooks:
            h.remove()


def make_gguf(src_name: str, model, variant: str, f32_ref: np.ndarray | None):
    arch = MODELS[src_name]["arch"]
    d = OUT / "gguf"
    d.mkdir(parents=True, exist_ok=True)
    fname = f"{src_name}.{variant}.gguf"
    path = d / fname
    types = write_gguf(path, model, arch, variant)
    ref_model, reader = model_from_gguf(path, model, arch)
    check_gguf(path, model, arch, types, reader)
    if variant == "f32":  # lossless: the file must hold exactly the model's weights
        for k, v in model.state_dict().items():
            assert torch.equal(v, ref_model.state_dict()[k]), k
    stem = fname[:-len(".gguf")] + "."
    g = write_reference(d, stem, ref_model, {
        "model_file": fname, "source_model": src_name, "arch": arch, "variant": variant,
        "file_type": int(FILE_TYPES[variant]),
        "tensor_types": {k: v.name for k, v in types.items()},
        "q_k_permuted": arch == "llama",
        "reference": "every tensor dequantized with gguf.quants.dequantize (llama q/k rows "
                     "un-permuted), loaded into transformers, forward in f32",
        "generator": gen_info(src_name),
    })
    lg = np.fromfile(d / g["logits_file"], dtype="<f4").reshape(g["logits_shape"])
    if f32_ref is not None:
        g["max_abs_diff_vs_f32_model"] = float(np.abs(lg - f32_ref).max())
        g["argmax_agreement_vs_f32_model"] = float((lg.argmax(-1) == f32_ref.argmax(-1)).mean())
    if variant != "f32":
        aq = act_quant_logits(ref_model, arch, types)
        g["activation_quant_estimate"] = {
            "note": "same file, but each quantized matmul fed ggml-style quantized "
                    "activations (Q8_0 / Q8_K / f16 / bf16); a rough guide for tolerances of "
                    "engines whose kernels quantize activations",
            "max_abs_logit_diff": float(np.abs(aq - lg).max()),
            "top1_agreement": float((aq.argmax(-1) == lg.argmax(-1)).mean()),
        }
    dump_json(d / f"{stem}golden.json", g)
    print(f"[gguf] {fname:34s} {path.stat().st_size:8d} B  types="
          f"{sorted(set(v.name for v in types.values()))}  "
          f"max|d vs f32|={g.get('max_abs_diff_vs_f32_model', 0):.4g}  act-quant est. max|d|="
          f"{g.get('activation_quant_estimate', {}).get('max_abs_logit_diff', 0):.3g}")


def check_k_quantizers() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 512)).astype(np.float32)
    x[0] = 0.0  # an all-zero row must round-trip to zeros
    x[1] = np.abs(x[1])  # no negatives
    x[2] = -np.abs(x[2])  # no positives
    for qt, bits_err in ((QT.Q2_K, 0.45), (QT.Q3_K, 0.3), (QT.Q4_K, 0.12), (QT.Q5_K, 0.06),
                         (QT.Q6_K, 0.03)):
        y = dequantize(quantize(x, qt), qt, x.shape)
        assert np.all(y[0] == 0)
        rel = float(np.sqrt(((y - x) ** 2).mean() / (x ** 2).mean()))
        print(f"[kquant] {qt.name}: relative RMS round-trip error {rel:.4f}")
        assert rel < bits_err, (qt.name, rel)


QUANT_BLOCK_TYPES = [QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1,
                     QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K]


def make_quant_blocks() -> None:
    """gguf/quant-blocks.gguf: per type T a tensor "T" (2 rows x 512, type T) and
    "T.expected" (F32, gguf.quants.dequantize of it), plus "source" (the F32 input).
    Row 0: N(0,1). Row 1: first 256 values non-negative with zeros and one outlier,
    last 256 values of scale 1e-3 (small f16 block scales)."""
    rng = np.random.default_rng(7)
    src = rng.standard_normal((2, 512)).astype(np.float32)
    src[1, :256] = np.abs(src[1, :256])
    src[1, 0:20] = 0.0
    src[1, 100] = 25.0
    src[1, 256:] *= 1e-3
    path = OUT / "gguf" / "quant-blocks.gguf"
    w = GGUFWriter(path, "quant-test")
    w.add_name("quant-blocks")
    w.add_tensor("source", src)
    index = {}
    for qt in QUANT_BLOCK_TYPES:
        data = quantize(src, qt)
        w.add_tensor(qt.name, data, raw_dtype=None if qt in (QT.F32, QT.F16) else qt)
        exp = dequantize(data, qt, src.shape)
        w.add_tensor(f"{qt.name}.expected", exp)
        index[qt.name] = float(np.abs(exp - src).max())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = GGUFReader(path)
    got = {t.name: t for t in r.tensors}
    for qt in QUANT_BLOCK_TYPES:
        t = got[qt.name]
        assert QT(t.tensor_type) == qt and [int(x) for x in t.shape] == [512, 2], (qt, t.shape)
        deq = dequantize(t.data, qt, src.shape)
        assert np.array_equal(deq, np.asarray(got[f"{qt.name}.expected"].data).reshape(src.shape))
    dump_json(OUT / "gguf" / "quant-blocks.golden.json", {
        "model_file": "quant-blocks.gguf",
        "layout": "for each type T: tensor 'T' of type T and 'T.expected' (F32), ggml shape "
                  "[512, 2] (2 rows of 512); 'source' is the F32 data that was quantized",
        "types": [qt.name for qt in QUANT_BLOCK_TYPES],
        "max_abs_quantization_error": index,
        "expected_from": "gguf.quants.dequantize (gguf-py, llama.cpp's reference decoder)",
        "tolerance_hint": {"f32_max_abs": 0.0},
        "generator": {"script": "tools/make_golden.py", "seed": 7, "versions": versions()},
    })
    print(f"[gguf] quant-blocks.gguf {path.stat().st_size:8d} B  types="
          f"{[qt.name for qt in QUANT_BLOCK_TYPES]}")


# --------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip-gguf", action="store_true")
    args = ap.parse_args()
    print(f"versions: {versions()}")
    OUT.mkdir(parents=True, exist_ok=True)

    llama, llama_g = make_safetensors("tiny-llama")
    make_sharded(llama, llama_g)
    qwen, _ = make_safetensors("tiny-qwen2", integer_theta=True)
    make_bf16(qwen)
    l3, l3_g = make_safetensors("tiny-llama3-rope")
    # the scaling must matter: the same weights without llama3 scaling give other logits
    plain_cfg = dict(MODELS["tiny-llama3-rope"]["config"])
    plain_cfg.pop("rope_scaling")
    plain = hf_class("llama")(hf_config("llama", plain_cfg)).float().eval()
    plain.load_state_dict(l3.state_dict())
    l3_logits = np.fromfile(OUT / "tiny-llama3-rope" / "logits.bin", dtype="<f4")
    diff = float(np.abs(full_logits(plain, INPUT_IDS).reshape(-1) - l3_logits).max())
    print(f"[tiny-llama3-rope] max|logits without llama3 scaling - with| = {diff:.4g}")
    assert diff > 1e-2
    l3_g["max_abs_diff_if_llama3_scaling_ignored"] = diff
    dump_json(OUT / "tiny-llama3-rope" / "golden.json", l3_g)

    if args.skip_gguf:
        return
    shutil.rmtree(OUT / "gguf", ignore_errors=True)
    check_k_quantizers()
    for name, model in (("tiny-llama", llama), ("tiny-qwen2", qwen)):
        ref = np.fromfile(OUT / name / "logits.bin", dtype="<f4").reshape(len(INPUT_IDS), -1)
        variants = ["f32", "f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]
        if name == "tiny-qwen2":
            variants.insert(2, "bf16")
        for v in variants:
            make_gguf(name, model, v, ref)
    ref = np.fromfile(OUT / "tiny-llama3-rope" / "logits.bin", dtype="<f4").reshape(
        len(INPUT_IDS), -1)
    make_gguf("tiny-llama3-rope", l3, "f16", ref)
    big = build("tiny-llama-256")
    ref = full_logits(big, INPUT_IDS)
    for v in ["kmix-a", "kmix-b"]:
        make_gguf("tiny-llama-256", big, v, ref)
    make_quant_blocks()

    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"done: {sum(1 for p in OUT.rglob('*') if p.is_file())} files, {total} bytes "
          f"under {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
