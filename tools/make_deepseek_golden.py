#!/usr/bin/env python3
"""Golden fixtures for Seek's DeepSeek-V3 path: tiny random MLA + MoE checkpoints and f32 logits.

Writes (all under tests/fixtures/deepseek/, see tools/README.md):

  dsv3-qlora-yarn/        DeepseekV3ForCausalLM: hidden 64, 4 heads, q_lora_rank 48, kv_lora_rank 32,
                          qk_nope 16, qk_rope 8, v 16, vocab 300, YaRN rope (factor 4 over 64 original
                          positions, mscale = mscale_all_dim = 1, so the softmax scale is multiplied
                          by mscale^2), 3 layers (1 dense MLP of 96 + 2 MoE, experts of 32),
                          8 routed experts in 4 groups (top-2 groups, top-2 experts), 1 shared expert,
                          sigmoid router with a random non-zero e_score_correction_bias
  dsv3-noqlora/           the same shape with q_lora_rank null (plain q_proj), default rope,
                          n_group 1 / topk_group 1, other seed
  dsv3-qlora-yarn-fp8/    DeepSeek's published FP8 checkpoint format: every Linear weight of the decoder
                          layers as float8_e4m3fn + `<name>.weight_scale_inv` (f32, one scale per 128x128
                          block); weights taken from dsv3-qlora-yarn except the dense MLP, which is 192 wide
                          here so that partial blocks exist
  gguf/dsv3-qlora-yarn.kv_b.gguf   dsv3-qlora-yarn as llama.cpp's converter wrote it before the MLA split
                                   (blk.N.attn_kv_b.weight), all F32
  gguf/dsv3-qlora-yarn.split.gguf  as the current converter writes it (attn_k_b + attn_v_b), all F32
  gguf/dsv3-qlora-yarn.q8_0.gguf   the split file as the converter writes it with --outtype q8_0
                                   (tensor_qtype(): Q8_0 via gguf.quants.quantize, F16 where a row is
                                   not a multiple of 32, F32 norms / router / bias / token_embd)

Each directory has config.json (DeepSeek-V3 hub style, transformers-4 keys) + model.safetensors +
golden.json + logits.bin; each GGUF has <file>.golden.json + <file>.logits.bin. The golden JSON has the
keys of tools/make_golden.py's write_reference (the helpers are imported from there) plus
architecture_notes, routing, sensitivity and notes.

Tokenizer (so that `seek run` works on dsv3-qlora-yarn/ and on the GGUF files): dsv3-qlora-yarn/ also
gets tokenizer.json (built with the tokenizers library: a byte-level BPE of exactly vocab_size 300 ids:
BOS <｜begin▁of▁sentence｜> 0, EOS <｜end▁of▁sentence｜> 1, byte b at 2 + b, 38 hand-picked merges at
258..295, <｜User｜> 296, <｜Assistant｜> 297, <think> 298, </think> 299; the pipeline of
DeepSeek-R1-Distill-Qwen's tokenizer.json), tokenizer_config.json (DeepSeek-R1's chat template, verbatim
from the R1 GGUF header) and generation_config.json (bos 0, eos 1). Every GGUF file embeds the same
tokenizer as llama.cpp's converter writes a gpt2-style BPE (see add_tokenizer), with
tokenizer.ggml.pre = "deepseek-r1-qwen" (see GGUF_PRE). The weights do not depend on it: the script
fails if any reference logits file that existed before changes (--allow-logit-changes to accept).

Safetensors names are those of DeepSeek's published checkpoints (per expert, not fused):
  model.embed_tokens.weight [V, C]            lm_head.weight [V, C]         model.norm.weight [C]
  model.layers.L.input_layernorm.weight [C]   model.layers.L.post_attention_layernorm.weight [C]
  model.layers.L.self_attn.q_a_proj.weight [q_lora, C]      (q_proj.weight [H*(nope+rope), C] when
  model.layers.L.self_attn.q_a_layernorm.weight [q_lora]     q_lora_rank is null)
  model.layers.L.self_attn.q_b_proj.weight [H*(nope+rope), q_lora]
  model.layers.L.self_attn.kv_a_proj_with_mqa.weight [kv_lora+rope, C]
  model.layers.L.self_attn.kv_a_layernorm.weight [kv_lora]
  model.layers.L.self_attn.kv_b_proj.weight [H*(nope+v), kv_lora]   rows of head h: h*(nope+v) + [0, nope)
                                                                     = k_nope, then + [nope, nope+v) = v
  model.layers.L.self_attn.o_proj.weight [C, H*v]
  dense layers (L < first_k_dense_replace): model.layers.L.mlp.{gate,up}_proj.weight [I, C], down_proj [C, I]
  MoE layers: model.layers.L.mlp.gate.weight [E, C] (router),
              model.layers.L.mlp.gate.e_score_correction_bias [E],
              model.layers.L.mlp.experts.X.{gate,up}_proj.weight [Im, C],
              model.layers.L.mlp.experts.X.down_proj.weight [C, Im],
              model.layers.L.mlp.shared_experts.{gate,up}_proj.weight [Im*n_shared, C],
              model.layers.L.mlp.shared_experts.down_proj.weight [C, Im*n_shared]
transformers 5 holds the experts fused in memory (mlp.experts.gate_up_proj [E, 2*Im, C] = cat(gate, up) per
expert, mlp.experts.down_proj [E, C, Im]); save_pretrained writes them back per expert and from_pretrained
merges them again (conversion_mapping "qwen2_moe"). The script checks both directions.

GGUF layout (ggml dims, innermost first = reversed numpy shape), as llama.cpp's DeepseekV2Model
(conversion/deepseek.py) writes architecture `deepseek2`:
  token_embd.weight [C, V], output_norm.weight [C], output.weight [C, V]
  blk.N.attn_norm.weight [C], blk.N.attn_q_a.weight [C, q_lora], blk.N.attn_q_a_norm.weight [q_lora],
  blk.N.attn_q_b.weight [q_lora, H*(nope+rope)] (or blk.N.attn_q.weight [C, H*(nope+rope)]),
  blk.N.attn_kv_a_mqa.weight [C, kv_lora+rope], blk.N.attn_kv_a_norm.weight [kv_lora],
  blk.N.attn_output.weight [H*v, C], blk.N.ffn_norm.weight [C],
  dense: blk.N.ffn_{gate,up}.weight [C, I], blk.N.ffn_down.weight [I, C]
  MoE:   blk.N.ffn_gate_inp.weight [C, E], blk.N.exp_probs_b.bias [E],
         blk.N.ffn_{gate,up}_exps.weight [C, Im, E], blk.N.ffn_down_exps.weight [Im, C, E]
         (torch.stack of the per-expert matrices, expert index outermost),
         blk.N.ffn_{gate,up}_shexp.weight [C, Im*n_shared], blk.N.ffn_down_shexp.weight [Im*n_shared, C]
  kv_b file:  blk.N.attn_kv_b.weight [kv_lora, H*(nope+v)]  (= kv_b_proj.weight unchanged)
  split file: blk.N.attn_k_b.weight  [nope, kv_lora, H]   numpy [H, kv_lora, nope]:
                  k_b[h, r, d] = kv_b_proj.weight[h*(nope+v) + d, r]        (per head: W_UK^T)
              blk.N.attn_v_b.weight  [kv_lora, v, H]      numpy [H, v, kv_lora]:
                  v_b[h, d, r] = kv_b_proj.weight[h*(nope+v) + nope + d, r]  (per head: W_UV)
  i.e. kv_b = kv_b_proj.weight.view(H, nope+v, kv_lora); k_b, v_b = split(kv_b, [nope, v], dim=1);
  k_b = k_b.transpose(1, 2) -- exactly the converter's code. No rope permutation: deepseek2 uses
  LLAMA_ROPE_TYPE_NORM (adjacent pairs), which is what transformers' rope_interleave=True computes.

Metadata: see write_gguf(); the kv_b file has the attention keys of the pre-split converter
(head_count_kv = n_head, key_length = nope+rope, value_length = v, no *_mla keys, so llama.cpp's
hparams.is_mla() is false and it takes the attn_kv_b path) and no rope.scaling.yarn_beta_* keys (old
files lack them; llama.cpp's defaults 32/1 apply); the split file has what conversion/deepseek.py writes
now (head_count_kv 1, key_length kv_lora+rope, value_length kv_lora, key_length_mla, value_length_mla).

References: transformers' DeepseekV3ForCausalLM in float32, eager attention, 1 thread:
  * safetensors dirs: re-loaded from disk with from_pretrained (asserted equal to the in-memory model and
    to this script's own per-expert -> fused conversion);
  * fp8 dir: the fp8 weights times their block scales (f32), written to a temporary unquantized copy that
    is loaded with from_pretrained (transformers' own fp8 integration needs a GPU);
  * GGUF files: every tensor read back with GGUFReader, experts unstacked, attn_k_b/attn_v_b re-assembled
    into kv_b_proj, loaded into a model whose config is rebuilt from the GGUF metadata; the logits must
    equal dsv3-qlora-yarn's bit for bit (f32 files). The q8_0 file is dequantized with
    gguf.quants.dequantize first: its reference is what an exact engine computes from that file.

Deterministic: fixed seeds, fixed token ids, no hub access. Re-run with
    python3 tools/make_deepseek_golden.py
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gguf  # noqa: E402
from gguf import GGMLQuantizationType as QT  # noqa: E402
from gguf import GGUFReader, GGUFWriter  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM  # noqa: E402

# make_golden sets torch to 1 thread on import and owns the shared reference format.
from make_golden import (  # noqa: E402
    INPUT_IDS, _q8_blocks, dump_json, full_logits, versions, write_reference,
)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "deepseek"
SCRIPT = "tools/make_deepseek_golden.py"
ARCH = "deepseek2"

# ---------------------------------------------------------------------------------------------
# Model definitions (transformers-4 / hub config keys)
# ---------------------------------------------------------------------------------------------

YARN = {  # key order and the lone "type" key as in deepseek-ai/DeepSeek-V3's config.json
    "beta_fast": 32,
    "beta_slow": 1,
    "factor": 4.0,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
    # 64 * factor 4 = max_position_embeddings 256, as in DeepSeek-V3 (4096 * 40 = 163840); with 64 the
    # ramp of the 4 rope frequencies is (1, 0.5, 0, 0): one kept, one blended, two interpolated.
    "original_max_position_embeddings": 64,
    "type": "yarn",
}

BASE = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=96,
    moe_intermediate_size=32,
    num_hidden_layers=3,
    first_k_dense_replace=1,
    num_attention_heads=4,
    num_key_value_heads=4,
    q_lora_rank=48,
    kv_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=16,
    n_routed_experts=8,
    n_shared_experts=1,
    num_experts_per_tok=2,
    n_group=4,
    topk_group=2,
    routed_scaling_factor=2.5,
    norm_topk_prob=True,
    topk_method="noaux_tc",
    scoring_func="sigmoid",
    hidden_act="silu",
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    rope_scaling=YARN,
    tie_word_embeddings=False,
    bos_token_id=0,
    eos_token_id=1,
)

MODELS = {
    "dsv3-qlora-yarn": dict(seed=69, config=dict(BASE)),
    "dsv3-noqlora": dict(seed=159, config=dict(BASE, q_lora_rank=None, rope_scaling=None, n_group=1,
                                              topk_group=1)),
    # weights from dsv3-qlora-yarn except the dense MLP (192 = 128 + 64: partial scale blocks), whose
    # random weights come from this seed
    "dsv3-qlora-yarn-fp8": dict(seed=1050, config=dict(BASE, intermediate_size=192)),
}
FP8_SOURCE = "dsv3-qlora-yarn"

FP8_QUANT_CONFIG = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                    "weight_block_size": [128, 128]}
FP8_MAX = 448.0  # largest finite float8_e4m3fn
BLOCK = 128
# Linear weights DeepSeek stores in fp8: everything in the decoder layers except norms and the router
FP8_RE = re.compile(
    r"model\.layers\.\d+\.(self_attn\.(q_proj|q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)"
    r"|mlp\.((gate|up|down)_proj|experts\.\d+\.(gate|up|down)_proj|shared_experts\.(gate|up|down)_proj))"
    r"\.weight")


def hub_config(cfg: dict, quantization_config: dict | None = None) -> dict:
    """config.json as DeepSeek publishes it (transformers 4 keys: rope_theta + rope_scaling at the top
    level, torch_dtype; no rope_parameters / head_dim / rope_interleave; no auto_map because no
    remote code is shipped). num_nextn_predict_layers is 0: the fixtures have no MTP layer."""
    c = {
        "architectures": ["DeepseekV3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "ep_size": 1,
        "initializer_range": 0.02,
        "model_type": "deepseek_v3",
        "moe_layer_freq": 1,
        "num_nextn_predict_layers": 0,
        "pretraining_tp": 1,
        "seq_aux": True,
        "torch_dtype": "float32",
        "transformers_version": __import__("transformers").__version__,
        "use_cache": True,
    }
    c.update(cfg)
    if quantization_config is not None:
        c["quantization_config"] = quantization_config
    return dict(sorted(c.items()))


def hf_config(cfg: dict) -> DeepseekV3Config:
    """The same config built in memory (transformers 5 keys)."""
    cfg = dict(cfg)
    for k in ("topk_method", "scoring_func"):
        cfg.pop(k)
    rope = {"rope_type": "default", "rope_theta": cfg.pop("rope_theta")}
    rs = cfg.pop("rope_scaling")
    if rs:
        rs = dict(rs)
        rope["rope_type"] = rs.pop("type")
        rope.update(rs)
    c = DeepseekV3Config(**cfg, rope_parameters=rope, num_nextn_predict_layers=0)
    c._attn_implementation = "eager"
    c._experts_implementation = "eager"  # the plain per-expert loop, not torch grouped_mm
    return c


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Random weights with a healthy spread (the recipe of make_golden.randomize):
      embeddings N(0, 0.3^2); Linear / router / expert weights N(0, 1/in_features); every RMSNorm weight
      (including q_a_layernorm and kv_a_layernorm) U(0.5, 1.5); the final norm +-U(2, 4) with random
      signs (spreads the logits, so the argmaxes are clear);
      e_score_correction_bias (a buffer, which HF inits to zero) U(0.1, 0.6): non-zero, and large enough
      next to the sigmoid scores to change which experts are picked for some tokens. All positive, so
      sigmoid + bias > 0 everywhere and masking non-selected groups with 0.0 (DeepSeek's remote code)
      or -inf (transformers 5) picks the same experts."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "model.norm.weight":
                p.copy_(torch.empty(p.shape).uniform_(2.0, 4.0, generator=g))
                sign = torch.where(torch.rand(p.shape, generator=g) < 0.5, -1.0, 1.0)
                p.mul_(sign)
            elif name.endswith("norm.weight"):
                p.copy_(torch.empty(p.shape).uniform_(0.5, 1.5, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            else:  # [out, in] or fused experts [E, out, in]
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(torch.empty(b.shape).uniform_(0.1, 0.6, generator=g))


def build(cfg: dict, seed: int) -> DeepseekV3ForCausalLM:
    torch.manual_seed(seed)
    model = DeepseekV3ForCausalLM(hf_config(cfg)).float().eval()
    randomize(model, seed)
    return model


# ---------------------------------------------------------------------------------------------
# Per-expert checkpoint names <-> transformers 5's fused experts
# ---------------------------------------------------------------------------------------------


def to_checkpoint(model) -> dict[str, torch.Tensor]:
    """The model's tensors under DeepSeek's checkpoint names (experts one by one)."""
    cfg = model.config
    out = {}
    for k, v in model.state_dict().items():
        m = re.fullmatch(r"(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)", k)
        if m is None:
            out[k] = v.detach().clone()
            continue
        for e in range(cfg.n_routed_experts):
            if m.group(2) == "down_proj":
                out[f"{m.group(1)}.{e}.down_proj.weight"] = v[e].clone()
            else:
                gate, up = v[e].split(cfg.moe_intermediate_size, dim=0)
                out[f"{m.group(1)}.{e}.gate_proj.weight"] = gate.clone()
                out[f"{m.group(1)}.{e}.up_proj.weight"] = up.clone()
    return out


def from_checkpoint(ck: dict[str, torch.Tensor], config) -> DeepseekV3ForCausalLM:
    """A model loaded from per-expert tensors with this script's own conversion (not transformers')."""
    n_exp = config.n_routed_experts
    sd = {}
    for k, v in ck.items():
        if ".mlp.experts." not in k:
            sd[k] = v
    for layer in range(config.first_k_dense_replace, config.num_hidden_layers):
        p = f"model.layers.{layer}.mlp.experts"
        sd[f"{p}.gate_up_proj"] = torch.stack([
            torch.cat([ck[f"{p}.{e}.gate_proj.weight"], ck[f"{p}.{e}.up_proj.weight"]], dim=0)
            for e in range(n_exp)])
        sd[f"{p}.down_proj"] = torch.stack([ck[f"{p}.{e}.down_proj.weight"] for e in range(n_exp)])
    m = DeepseekV3ForCausalLM(config).float().eval()
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return m


def expected_names(cfg: dict) -> set[str]:
    """DeepSeek-V3's checkpoint tensor names for this config, written out independently."""
    n = {"model.embed_tokens.weight", "model.norm.weight"}
    if not cfg["tie_word_embeddings"]:
        n.add("lm_head.weight")
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        n |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        a = p + "self_attn."
        if cfg["q_lora_rank"] is None:
            n.add(a + "q_proj.weight")
        else:
            n |= {a + "q_a_proj.weight", a + "q_a_layernorm.weight", a + "q_b_proj.weight"}
        n |= {a + x + ".weight" for x in ("kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj",
                                           "o_proj")}
        if i < cfg["first_k_dense_replace"]:
            n |= {p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")}
        else:
            n |= {p + "mlp.gate.weight", p + "mlp.gate.e_score_correction_bias"}
            n |= {p + f"mlp.shared_experts.{x}_proj.weight" for x in ("gate", "up", "down")}
            n |= {p + f"mlp.experts.{e}.{x}_proj.weight"
                  for e in range(cfg["n_routed_experts"]) for x in ("gate", "up", "down")}
    return n


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def reload(d: Path) -> DeepseekV3ForCausalLM:
    m = DeepseekV3ForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager",
                                              experts_implementation="eager")
    assert m.config._experts_implementation == "eager"
    return m.eval()


# ---------------------------------------------------------------------------------------------
# Checks and notes
# ---------------------------------------------------------------------------------------------


def _select(scores_for_choice, n_group, topk_group, top_k, fill):
    """transformers' DeepseekV3TopkRouter selection, with the masked-group fill value as a parameter."""
    t, e = scores_for_choice.shape
    group_scores = scores_for_choice.view(t, n_group, e // n_group).topk(2, dim=-1)[0].sum(-1)
    group_idx = torch.topk(group_scores, k=topk_group, dim=-1, sorted=False)[1]
    mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
    mask = mask.unsqueeze(-1).expand(-1, n_group, e // n_group).reshape(t, e).bool()
    masked = scores_for_choice.masked_fill(~mask, fill)
    return torch.topk(masked, k=top_k, dim=-1, sorted=False)[1].sort(-1)[0]


@torch.no_grad()
def routing_stats(model, seqs: list[list[int]]) -> dict:
    """Hook every router on a full forward of each sequence and count, over all (token, MoE layer)
    pairs, how often the chosen experts would change: without the correction bias, without the
    group limit, or with masked groups filled with 0.0 instead of -inf."""
    cfg = model.config
    seen = []

    def hook(mod, args, out):
        seen.append((args[0].reshape(-1, cfg.hidden_size).float(), out[2], mod))

    hooks = [layer.mlp.gate.register_forward_hook(hook) for layer in model.model.layers
             if hasattr(layer.mlp, "gate")]
    try:
        for ids in seqs:
            model(torch.tensor([ids]), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    n = n_bias = n_group = n_zero_fill = 0
    min_choice = min_expert_gap = min_group_gap = float("inf")
    for h, chosen, mod in seen:
        scores = torch.sigmoid(h @ mod.weight.float().T)
        biased = scores + mod.e_score_correction_bias
        min_choice = min(min_choice, float(biased.min()))
        k, ng, kg = cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group
        ref = _select(biased, ng, kg, k, float("-inf"))
        assert torch.equal(ref, chosen.sort(-1)[0]), "re-computed routing differs from transformers'"
        unb = _select(scores, ng, kg, k, float("-inf"))
        nog = _select(biased, 1, 1, k, float("-inf"))
        zero = _select(biased, ng, kg, k, 0.0)
        n += ref.shape[0]
        n_bias += int((unb != ref).any(-1).sum())
        n_group += int((nog != ref).any(-1).sum())
        n_zero_fill += int((zero != ref).any(-1).sum())
        # how close each decision is to flipping: k-th vs (k+1)-th choice value among the kept
        # groups, and topk_group-th vs next group score
        t, e = biased.shape
        gs = biased.view(t, ng, e // ng).topk(2, dim=-1)[0].sum(-1).sort(-1, descending=True)[0]
        if ng > kg:
            min_group_gap = min(min_group_gap, float((gs[:, kg - 1] - gs[:, kg]).min()))
        keep = _select(biased, ng, kg, e, float("-inf"))  # all experts, -inf for masked ones
        allowed = torch.full_like(biased, float("-inf")).scatter(
            1, keep, biased.gather(1, keep))
        srt = allowed.sort(-1, descending=True)[0]
        min_expert_gap = min(min_expert_gap, float((srt[:, k - 1] - srt[:, k]).min()))
    return {
        "note": "over full forwards of input_ids and of the greedy prompt + greedy tokens, every "
                "(token, MoE layer) pair: how many expert "
                "choices change if the router ignores e_score_correction_bias, ignores the group "
                "limit (n_group/topk_group), or fills non-selected groups with 0.0 instead of -inf",
        "decisions": n,
        "differ_without_correction_bias": n_bias,
        "differ_without_group_limit": n_group,
        "differ_with_zero_fill_for_masked_groups": n_zero_fill,
        "min_biased_score": min_choice,
        "min_gap_kth_expert": min_expert_gap,
        "min_gap_kth_group": None if min_group_gap == float("inf") else min_group_gap,
        "gap_note": "smallest margin, over all decisions, between the last chosen and the first "
                    "rejected expert (choice values within the kept groups) and between the last kept "
                    "and the first dropped group score; f32 rounding differences far below these "
                    "cannot change the routing",
    }


@torch.no_grad()
def routing_choices(model, ids: list[int]) -> list[torch.Tensor]:
    """The sorted expert indices each router picks, per MoE layer, on a full forward of ids."""
    seen = []
    hooks = [layer.mlp.gate.register_forward_hook(lambda m, a, out: seen.append(out[2].sort(-1)[0]))
             for layer in model.model.layers if hasattr(layer.mlp, "gate")]
    try:
        model(torch.tensor([ids]), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return seen


def with_config(model, **changes):
    cfg = copy.deepcopy(model.config)
    for k, v in changes.items():
        setattr(cfg, k, v)
    m = DeepseekV3ForCausalLM(cfg).float().eval()
    m.load_state_dict(model.state_dict())
    return m


@torch.no_grad()
def sensitivity(model, ref: np.ndarray) -> dict:
    """Max |logit diff| when one feature is dropped: each must matter, or the fixture would not test it."""
    cfg = model.config
    out = {}
    m = with_config(model, rope_interleave=False)
    out["rope_interleave_ignored"] = float(np.abs(full_logits(m, INPUT_IDS) - ref).max())
    m = copy.deepcopy(model)
    for layer in m.model.layers:
        if hasattr(layer.mlp, "gate"):
            layer.mlp.gate.e_score_correction_bias.zero_()
    out["router_bias_ignored"] = float(np.abs(full_logits(m, INPUT_IDS) - ref).max())
    if cfg.n_group > 1:
        m = copy.deepcopy(model)
        for layer in m.model.layers:
            if hasattr(layer.mlp, "gate"):
                layer.mlp.gate.num_group, layer.mlp.gate.topk_group = 1, 1
        out["group_limit_ignored"] = float(np.abs(full_logits(m, INPUT_IDS) - ref).max())
    m = copy.deepcopy(model)
    for layer in m.model.layers:
        if hasattr(layer.mlp, "gate"):
            layer.mlp.gate.routed_scaling_factor = 1.0
    out["routed_scaling_factor_ignored"] = float(np.abs(full_logits(m, INPUT_IDS) - ref).max())
    if cfg.rope_parameters.get("rope_type") == "yarn":
        m = copy.deepcopy(model)
        for layer in m.model.layers:
            layer.self_attn.scaling = cfg.qk_head_dim ** -0.5
        out["yarn_mscale_ignored"] = float(np.abs(full_logits(m, INPUT_IDS) - ref).max())
        m = with_config(model, rope_parameters={"rope_type": "default",
                                                "rope_theta": cfg.rope_parameters["rope_theta"]})
        out["yarn_ignored"] = float(np.abs(full_logits(m, INPUT_IDS) - ref).max())
    for k, v in out.items():
        assert v > 1e-3, f"{k}: logits do not depend on it ({v})"
    return out


def architecture_notes(cfg: dict) -> dict:
    """Sizes the Rust side prints in `seek inspect` (counts, not bytes, except the cache)."""
    C, V, L = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    H, R, qr = cfg["num_attention_heads"], cfg["kv_lora_rank"], cfg["q_lora_rank"]
    nope, rope, v = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    E, K, Im = cfg["n_routed_experts"], cfg["num_experts_per_tok"], cfg["moe_intermediate_size"]
    dense_l = cfg["first_k_dense_replace"]
    moe_l = L - dense_l
    qk = nope + rope
    q = C * H * qk if qr is None else C * qr + qr + qr * H * qk
    attn = q + C * (R + rope) + R + R * H * (nope + v) + H * v * C
    norms = 2 * C
    dense = 3 * C * cfg["intermediate_size"]
    expert = 3 * C * Im
    shared = 3 * C * Im * cfg["n_shared_experts"]
    router = E * C + E  # gate.weight + e_score_correction_bias
    emb = V * C
    head = C + (0 if cfg["tie_word_embeddings"] else V * C)  # final norm + lm_head
    total = emb + head + L * (attn + norms) + dense_l * dense + moe_l * (router + shared + E * expert)
    active = head + L * (attn + norms) + dense_l * dense + moe_l * (router + shared + K * expert)
    return {
        "kv_cache": "latent (MLA) cache per token and layer: kv_lora_rank normalized latent + "
                    "qk_rope_head_dim roped key, shared by all heads",
        "kv_bytes_per_token_f32": (R + rope) * L * 4,
        "kv_bytes_per_token_f32_formula": "(kv_lora_rank + qk_rope_head_dim) * num_hidden_layers * 4",
        "kv_bytes_per_token_f32_if_expanded_to_mha": L * H * (qk + v) * 4,
        "total_parameters": total,
        "total_parameters_note": "every tensor of the checkpoint, counted unquantized: embeddings, "
                                 "lm_head, norms, routers and their e_score_correction_bias included",
        "active_parameters_per_token": active,
        "active_parameters_per_token_note": "embedding table EXCLUDED (a token reads one row); "
                                            "included: all attention and norm weights, the dense "
                                            "MLPs, per MoE layer the router (+bias), the shared "
                                            "experts and num_experts_per_tok routed experts, the "
                                            "final norm and lm_head",
        "active_parameters_per_token_incl_embedding": active + emb,
        "embedding_parameters": emb,
        "parameters_per_routed_expert": expert,
        "routed_experts_total": moe_l * E,
    }


def check_quality(name: str, g: dict, cfg: dict) -> None:
    r = g["routing"]
    assert r["differ_without_correction_bias"] > 0 and r["differ_with_zero_fill_for_masked_groups"] == 0
    assert r["min_biased_score"] > 0
    gaps = [r["min_gap_kth_expert"]] + ([r["min_gap_kth_group"]] if cfg["n_group"] > 1 else [])
    if min(gaps) < 1e-3:
        raise SystemExit(f"{name}: a routing decision is within {min(gaps):.2g} of flipping; "
                         "pick another seed")
    if cfg["n_group"] > 1:
        assert r["differ_without_group_limit"] > 0, f"{name}: the group limit never matters"
    toks = g["greedy"]["tokens"]
    m = min(g["min_top2_margin"], g["greedy"]["min_top2_margin"])
    if len(set(toks[:10])) < 6 or m < 0.05:
        raise SystemExit(f"{name}: weak fixture (distinct of first 10 greedy tokens "
                         f"{len(set(toks[:10]))}, min top-2 margin {m:.4g}); pick another seed")


NOTES_COMMON = [
    "rope_interleave: config.json has no such key, as in DeepSeek's; transformers' default is true. "
    "Then apply_rotary_pos_emb_interleave rotates adjacent pairs (x[2i], x[2i+1]) by frequency i and "
    "writes the results de-interleaved (all rotated even elements, then all odd ones); q and k get the "
    "same order, so q.k equals plain adjacent-pair (GPT-J / ggml NORM) rope. The cached k_rot is in that "
    "de-interleaved order.",
    "YaRN (transformers _compute_yarn_parameters): inv_freq = inv_freq_interpolation * (1 - m) + "
    "inv_freq_extrapolation * m with m = 1 - clamp((i - low) / (high - low), 0, 1), low/high = "
    "floor/ceil of the correction dims of beta_fast/beta_slow over original_max_position_embeddings; "
    "cos/sin are multiplied by attention_factor = get_mscale(factor, mscale) / "
    "get_mscale(factor, mscale_all_dim) (= 1 here); the softmax scale is qk_head_dim**-0.5 * "
    "get_mscale(factor, mscale_all_dim)**2 with get_mscale(s, m) = 0.1 * m * ln(s) + 1 (s > 1).",
    "Router (noaux_tc): scores = sigmoid(x @ gate.weight^T) in f32; choice = scores + "
    "e_score_correction_bias; group score = sum of the top 2 choice values of each group; keep the "
    "topk_group best groups (others filled with -inf in transformers 5, 0.0 in DeepSeek's remote code: "
    "the same picks here because every choice value is > 0, see routing.min_biased_score); top "
    "num_experts_per_tok experts by choice value; weights = the UNBIASED scores of those experts, "
    "divided by their sum (norm_topk_prob), times routed_scaling_factor.",
]


# ---------------------------------------------------------------------------------------------
# Safetensors variants
# ---------------------------------------------------------------------------------------------


def gen_info(seed: int, **kw) -> dict:
    d = {"script": SCRIPT, "seed": seed, "versions": versions()}
    d.update(kw)
    return d


def finish_golden(d: Path, stem: str, model, cfg: dict, extra: dict, notes: list[str]) -> dict:
    g = write_reference(d, stem, model, extra)
    attn = model.model.layers[0].self_attn
    g["softmax_scale"] = float(attn.scaling)
    g["yarn"] = None if not cfg["rope_scaling"] else {
        "attention_scaling_cos_sin": float(model.model.rotary_emb.attention_scaling),
        "softmax_scale": float(attn.scaling),
        "softmax_scale_formula": "qk_head_dim**-0.5 * (0.1 * mscale_all_dim * ln(factor) + 1)**2",
        "inv_freq_unscaled": [float(x) for x in 1.0 / (cfg["rope_theta"] ** (
            torch.arange(0, cfg["qk_rope_head_dim"], 2, dtype=torch.float32)
            / cfg["qk_rope_head_dim"]))],
    }
    lg = np.fromfile(d / g["logits_file"], dtype="<f4").reshape(g["logits_shape"])
    g["architecture_notes"] = architecture_notes(cfg)
    g["routing"] = routing_stats(model, [INPUT_IDS, g["greedy"]["prompt"] + g["greedy"]["tokens"]])
    g["sensitivity"] = {"note": "max |logit diff| vs logits_file if one feature is dropped",
                        **sensitivity(model, lg)}
    m64 = copy.deepcopy(model).double()
    with torch.no_grad():
        lg64 = m64(torch.tensor([INPUT_IDS]), use_cache=False).logits[0].numpy()
    g["precision"] = {
        "max_abs_diff_vs_float64_forward": float(np.abs(lg64 - lg).max()),
        "note": "the same weights run in float64 (the router's matmul stays f32 in transformers): "
                "how far exact arithmetic is from this f32 reference, a floor for tolerances",
    }
    g["notes"] = NOTES_COMMON + notes
    return g


def make_safetensors(name: str):
    spec = MODELS[name]
    cfg = spec["config"]
    model = build(cfg, spec["seed"])
    d = OUT / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    model.save_pretrained(d, safe_serialization=True)
    (d / "generation_config.json").unlink(missing_ok=True)
    (d / "config.json").write_text(json.dumps(hub_config(cfg), indent=2) + "\n")

    # the file holds DeepSeek's per-expert names, and exactly the model's tensors
    ck = read_safetensors(d / "model.safetensors")
    assert set(ck) == expected_names(cfg), set(ck) ^ expected_names(cfg)
    mine = to_checkpoint(model)
    assert set(mine) == set(ck) and all(torch.equal(mine[k], ck[k]) for k in ck)
    # transformers reads the hub-style config as meant
    re_m = reload(d)
    rc = re_m.config
    assert rc.rope_interleave is True and rc.n_group == cfg["n_group"]
    assert rc.q_lora_rank == cfg["q_lora_rank"] and rc.num_nextn_predict_layers == 0
    assert rc.rope_parameters["rope_type"] == ("yarn" if cfg["rope_scaling"] else "default")
    assert torch.equal(re_m.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq)
    assert re_m.model.layers[0].self_attn.scaling == model.model.layers[0].self_attn.scaling
    ref_mem = full_logits(model, INPUT_IDS)
    ref_disk = full_logits(re_m, INPUT_IDS)
    assert np.array_equal(ref_mem, ref_disk), f"{name}: reloaded model differs"
    # and this script's own per-expert -> fused conversion gives the same model
    own = full_logits(from_checkpoint(ck, re_m.config), INPUT_IDS)
    assert np.array_equal(own, ref_disk), f"{name}: own conversion differs"

    g = finish_golden(d, "", re_m, cfg, {
        "model": name, "arch": "deepseek_v3", "weights_dtype": "float32",
        "reference": "transformers f32 forward of the checkpoint re-loaded from this dir "
                     "(from_pretrained merges the per-expert tensors); equal bit for bit to the "
                     "in-memory model and to this script's own per-expert -> fused conversion",
        "generator": gen_info(spec["seed"]),
    }, [
        "Safetensors written by save_pretrained (transformers 5.24 un-fuses the experts on save, so "
        "the names are DeepSeek's per-expert ones); re-loaded with from_pretrained, max abs diff 0.",
    ])
    check_quality(name, g, cfg)
    dump_json(d / "golden.json", g)
    print(f"[{name}] logits[0,:4]={g['first_logits'][:4]} greedy={g['greedy']['tokens']} "
          f"min margin={g['min_top2_margin']:.3f}/{g['greedy']['min_top2_margin']:.3f} "
          f"routing={g['routing']['differ_without_correction_bias']}/"
          f"{g['routing']['differ_without_group_limit']}/{g['routing']['decisions']}")
    return re_m, ck, g


# ---------------------------------------------------------------------------------------------
# FP8 (DeepSeek's block format)
# ---------------------------------------------------------------------------------------------


def quantize_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] f32 -> (float8_e4m3fn [out, in], scale_inv f32 [ceil(out/128), ceil(in/128)]) with
    scale_inv = amax(block) / 448, as DeepSeek's fp8 checkpoints (weight = fp8 * scale_inv)."""
    out_f, in_f = w.shape
    bo, bi = -(-out_f // BLOCK), -(-in_f // BLOCK)
    pad = torch.zeros(bo * BLOCK, bi * BLOCK)
    pad[:out_f, :in_f] = w
    blocks = pad.view(bo, BLOCK, bi, BLOCK)
    amax = blocks.abs().amax(dim=(1, 3))
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax)).float()
    q = (blocks / scale[:, None, :, None]).to(torch.float8_e4m3fn)
    return q.view(bo * BLOCK, bi * BLOCK)[:out_f, :in_f].contiguous(), scale


def dequantize_fp8(q: torch.Tensor, scale_inv: torch.Tensor) -> torch.Tensor:
    """What a loader computes: each element times the f32 scale of its 128x128 block."""
    s = scale_inv.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)
    return q.float() * s[:q.shape[0], :q.shape[1]]


def try_transformers_fp8(d: Path, ref: np.ndarray) -> str:
    """Whether transformers itself can load the fp8 folder here (it needs a GPU for fp8 matmuls)."""
    try:
        m = reload(d)
        lg = full_logits(m, INPUT_IDS)
        return f"transformers loaded the fp8 dir on CPU; max abs diff vs reference " \
               f"{float(np.abs(lg - ref).max()):.3g}"
    except Exception as e:  # noqa: BLE001 -- recorded, not fatal
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"transformers could not load the fp8 dir on this CPU machine: " \
               f"{type(e).__name__}: {msg[:200]}"


def make_fp8(src_ck: dict[str, torch.Tensor], src_logits: np.ndarray):
    name = "dsv3-qlora-yarn-fp8"
    spec = MODELS[name]
    cfg = spec["config"]
    # the source model's tensors, except the dense MLP which is wider here (fresh random weights)
    wide = build(cfg, spec["seed"])
    ck = to_checkpoint(wide)
    for k, v in src_ck.items():
        if k in ck and ck[k].shape == v.shape:
            ck[k] = v.clone()
    kept = sorted(k for k in ck if k not in src_ck or ck[k].shape != src_ck[k].shape)
    assert kept == [f"model.layers.0.mlp.{x}_proj.weight" for x in ("down", "gate", "up")], kept

    d = OUT / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    tensors, deq, scales = {}, {}, {}
    for k in sorted(ck):
        if FP8_RE.fullmatch(k):
            q, s = quantize_fp8(ck[k])
            tensors[k] = q
            tensors[k + "_scale_inv"] = s
            deq[k] = dequantize_fp8(q, s)
            scales[k] = list(s.shape)
        else:
            tensors[k] = ck[k].contiguous()
            deq[k] = ck[k]
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(hub_config(cfg, FP8_QUANT_CONFIG), indent=2) + "\n")

    # read the file back and dequantize it independently of the in-memory copies
    back = read_safetensors(d / "model.safetensors")
    n_fp8 = 0
    for k, v in back.items():
        if k.endswith("_scale_inv"):
            continue
        if v.dtype == torch.float8_e4m3fn:
            n_fp8 += 1
            s = back[k + "_scale_inv"]
            assert s.dtype == torch.float32
            assert list(s.shape) == [-(-v.shape[0] // BLOCK), -(-v.shape[1] // BLOCK)]
            assert torch.equal(dequantize_fp8(v, s), deq[k])
        else:
            assert v.dtype == torch.float32 and torch.equal(v, deq[k]) and not FP8_RE.fullmatch(k)
    assert n_fp8 == len(scales)
    partial = {k: s for k, s in scales.items() if s != [1, 1]}
    assert partial, "no weight spans more than one 128x128 block"

    # reference: an unquantized copy with the dequantized weights, loaded by from_pretrained
    with tempfile.TemporaryDirectory() as tmp:
        save_file({k: v.contiguous() for k, v in deq.items()}, Path(tmp) / "model.safetensors",
                  metadata={"format": "pt"})
        (Path(tmp) / "config.json").write_text(json.dumps(hub_config(cfg), indent=2))
        ref_model = reload(Path(tmp))
    own = full_logits(from_checkpoint(deq, ref_model.config), INPUT_IDS)
    assert np.array_equal(own, full_logits(ref_model, INPUT_IDS))
    unq = full_logits(from_checkpoint(ck, ref_model.config), INPUT_IDS)

    rel = {k: float((deq[k] - ck[k]).norm() / ck[k].norm()) for k in scales}
    g = finish_golden(d, "", ref_model, cfg, {
        "model": name, "arch": "deepseek_v3", "weights_dtype": "float8_e4m3fn (block-scaled) + float32",
        "same_weights_as": f"{FP8_SOURCE} (quantized), except model.layers.0.mlp.* which is "
                           f"intermediate_size {cfg['intermediate_size']} here (seed "
                           f"{spec['seed']})",
        "reference": "every float8_e4m3fn weight times its block's weight_scale_inv (f32 product), "
                     "the result saved unquantized to a temporary dir with the same config minus "
                     "quantization_config, loaded with from_pretrained, forward in f32",
        "fp8": {
            "format": "weight float8_e4m3fn [out, in]; weight_scale_inv float32 "
                      "[ceil(out/128), ceil(in/128)]; weight_f32[i, j] = float(weight[i, j]) * "
                      "weight_scale_inv[i // 128, j // 128]",
            "quantized": "every Linear weight of the decoder layers (attention projections, dense "
                         "MLP, routed and shared experts); not embed_tokens, lm_head, norms, "
                         "mlp.gate.weight (router) or e_score_correction_bias",
            "quantizer": "scale_inv = amax(|block|) / 448, weight = (block / scale_inv) cast to "
                         "float8_e4m3fn (round to nearest even)",
            "n_fp8_tensors": n_fp8,
            "scale_shapes_with_partial_blocks": partial,
            "max_relative_weight_error": max(rel.values()),
        },
        "generator": gen_info(spec["seed"]),
    }, [
        "Non-quantized tensors are float32 here (DeepSeek's published checkpoint stores them as "
        "bfloat16); torch_dtype says float32.",
    ])
    lg = np.fromfile(d / "logits.bin", dtype="<f4").reshape(unq.shape)
    g["fp8"]["max_abs_diff_vs_unquantized_weights"] = float(np.abs(lg - unq).max())
    g["notes"].append(try_transformers_fp8(d, lg))
    check_quality(name, g, cfg)
    dump_json(d / "golden.json", g)
    print(f"[{name}] {n_fp8} fp8 tensors, partial-block scales {partial}; max|d vs unquantized|="
          f"{g['fp8']['max_abs_diff_vs_unquantized_weights']:.3g}; {g['notes'][-1]}")


# ---------------------------------------------------------------------------------------------
# Tokenizer: a tiny byte-level BPE with DeepSeek-R1's special tokens and chat template
# ---------------------------------------------------------------------------------------------

TOKENIZER_MODEL = "dsv3-qlora-yarn"  # the folder that gets tokenizer files (and every GGUF file)

# DeepSeek-R1's special tokens, spelled with escapes so that the code points are unambiguous:
# U+FF5C FULLWIDTH VERTICAL LINE and U+2581 LOWER ONE EIGHTH BLOCK.
BOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"
USER = "<\uff5cUser\uff5c>"
ASSISTANT = "<\uff5cAssistant\uff5c>"
THINK, END_THINK = "<think>", "</think>"

# Split + ByteLevel pipeline of DeepSeek-R1-Distill-Qwen's tokenizer.json (Qwen2's), which
# llama.cpp's converter labels "deepseek-r1-qwen". DeepSeek-V3/R1's own pipeline (digits in groups of
# three, a CJK split) is labelled "deepseek-v3" by llama.cpp, a name Seek's tokenizer does not know
# (crates/tokenizer/src/pretok.rs); so the folder and the GGUF files both use this one, and the
# two tokenize identically.
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
GGUF_PRE = "deepseek-r1-qwen"

# Ids: BOS 0 and EOS 1 as in DeepSeek-V3/R1 (and config.json's bos/eos_token_id), byte b at 2 + b,
# one token per merge after them, the chat tokens in the last four ids. Flags as in DeepSeek-R1's
# tokenizer.json: BOS/EOS special, <｜User｜>, <｜Assistant｜>, <think>, </think> added but not special.
BYTE_OFFSET = 2
CHAT_TOKENS = [(USER, False), (ASSISTANT, False), (THINK, False), (END_THINK, False)]
# Hand-picked merges (ByteLevel alphabet: "Ġ" is a space, "Ċ" a newline), as many as the vocabulary
# has room for: vocab_size 300 - 256 bytes - 6 special tokens = 38.
MERGES = [
    ("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("e", "r"), ("a", "n"), ("o", "n"),
    ("r", "e"), ("Ġ", "a"), ("Ġ", "s"), ("Ġ", "w"), ("Ġ", "o"), ("Ġ", "c"), ("Ġ", "i"),
    ("Ġ", "b"), ("Ġ", "f"), ("Ġ", "m"), ("Ġ", "p"), ("e", "n"), ("e", "s"), ("o", "r"),
    ("a", "t"), ("i", "s"), ("i", "t"), ("l", "l"), ("o", "u"), ("e", "d"), ("in", "g"),
    ("n", "d"), ("l", "d"), ("Ġw", "or"), ("Ġwor", "ld"), ("H", "e"), ("He", "ll"),
    ("Hell", "o"), ("Ġ", "Ġ"), ("Ċ", "Ċ"), ("Ġt", "o"),
]

# The chat template of DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.gguf (tokenizer.chat_template, the
# template DeepSeek published with R1 before 2025-02: the generation prompt ends at <｜Assistant｜>),
# verbatim. Checked against that header when models/ has the file, and always against its sha256.
R1_GGUF = ROOT / "models" / "DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.part0000.gguf"
R1_CHAT_TEMPLATE_SHA256 = "b6835114b7303ddd78919a82e4d9f7d8c26ed0d7dfc36beeb12d524f6144eab1"
R1_CHAT_TEMPLATE = (
    '{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}'
    '{% endif %}'
    '{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt'
    "='') %}{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}{{bos_token}}"
    "{{ns.system_prompt}}{%- for message in messages %}{%- if message['role'] == 'user' %}"
    "{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is none %}"
    "{%- set ns.is_tool = false -%}{%- for tool in message['tool_calls']%}"
    '{%- if not ns.is_first %}'
    "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>'"
    " + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + "
    "'\\n' + '```' + '<｜tool▁call▁end｜>'}}{%- set ns.is_first = true -%}{%- else %}"
    "{{'\\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'"
    "] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁cal"
    "l▁end｜>'}}{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}"
    "{%- endif %}{%- if message['role'] == 'assistant' and message['content'] is not none %}"
    '{%- if ns.is_tool %}'
    "{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}"
    "{%- set ns.is_tool = false -%}{%- else %}{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}"
    "{% endif %}{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}"
    '{%- if ns.is_output_first %}'
    "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁en"
    "d｜>'}}{%- set ns.is_output_first = false %}{%- else %}"
    "{{'\\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}"
    "{%- endif %}{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜>'}}{% endif %}"
)

TOKENIZER_CHECK_TEXTS = [
    "Hello, world! 12+30=42",
    "The cat sat on the mat, and it was good.\n\nIndented:\n    x = 1",
    f"{USER}What is 1+1?{ASSISTANT}{THINK}\nEasy.\n{END_THINK}\n\n2{EOS}",
    "naïve café 日本語 🚀",
]


class _HeaderReader(GGUFReader):
    """Metadata only: the R1 sample in models/ is cut short after its header."""

    def _build_tensors(self, start_offs, fields):  # noqa: D401 - signature of the base class
        self.tensors = []


def check_r1_tokens() -> str:
    """The special tokens and the template are DeepSeek-R1's, byte for byte."""
    assert hashlib.sha256(R1_CHAT_TEMPLATE.encode()).hexdigest() == R1_CHAT_TEMPLATE_SHA256
    if not R1_GGUF.exists():
        return f"{R1_GGUF.relative_to(ROOT)} not present: tokens and template checked by sha256 only"
    r = _HeaderReader(R1_GGUF)
    f = {k: r.fields[k].contents() for k in ("tokenizer.ggml.tokens", "tokenizer.chat_template")}
    toks = set(f["tokenizer.ggml.tokens"])
    for t in (BOS, EOS, USER, ASSISTANT, THINK, END_THINK):
        assert t in toks, t
    assert f["tokenizer.chat_template"] == R1_CHAT_TEMPLATE
    return f"checked against {R1_GGUF.name}: the six tokens and the chat template are in its header"


def byte_level_alphabet() -> list[str]:
    """GPT-2's bytes_to_unicode: the printable character that stands for each byte 0..255."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def special_tokens(vocab_size: int) -> list[tuple[int, str, bool]]:
    """(id, content, special) of the added tokens."""
    n = len(CHAT_TOKENS)
    return [(0, BOS, True), (1, EOS, True)] + [
        (vocab_size - n + i, t, s) for i, (t, s) in enumerate(CHAT_TOKENS)]


def tokenizer_doc(vocab_size: int) -> dict:
    """tokenizer.json in the layout of DeepSeek-R1-Distill-Qwen's (Qwen2's pipeline + a
    TemplateProcessing that prepends BOS); every id, added tokens included, is in model.vocab."""
    added = special_tokens(vocab_size)
    assert len(MERGES) == vocab_size - 256 - len(added), "MERGES must fill the vocabulary"
    vocab = {t: i for i, t, _ in added}
    for b, ch in enumerate(byte_level_alphabet()):
        vocab[ch] = BYTE_OFFSET + b
    for k, (a, b) in enumerate(MERGES):
        assert a in vocab and b in vocab and a + b not in vocab, (a, b)
        vocab[a + b] = BYTE_OFFSET + 256 + k
    assert sorted(vocab.values()) == list(range(vocab_size))
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                  "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": s} for i, t, s in added],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated",
             "invert": False},
            byte_level]},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": BOS, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {BOS: {"id": BOS, "ids": [0], "tokens": [BOS]}},
        },
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": [list(m) for m in MERGES]},
    }


def write_tokenizer(d: Path, cfg: dict) -> dict:
    """tokenizer.json (through the tokenizers library), tokenizer_config.json and
    generation_config.json in DeepSeek-R1's style; checked with transformers' AutoTokenizer."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    V = cfg["vocab_size"]
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (0, 1)
    tok = Tokenizer.from_str(json.dumps(tokenizer_doc(V)))
    tok.save(str(d / "tokenizer.json"), pretty=True)
    (d / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": BOS,
        "chat_template": R1_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "legacy": True,
        "model_max_length": cfg["max_position_embeddings"],
        "pad_token": EOS,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (d / "generation_config.json").write_text(json.dumps({
        "bos_token_id": cfg["bos_token_id"],
        "eos_token_id": cfg["eos_token_id"],
        "transformers_version": __import__("transformers").__version__,
    }, indent=2) + "\n")

    # the saved file is what was built, and transformers reads the folder as meant
    assert Tokenizer.from_file(str(d / "tokenizer.json")).to_str() == tok.to_str()
    hf = AutoTokenizer.from_pretrained(d)
    assert len(hf) == V and max(hf.get_vocab().values()) == V - 1
    assert (hf.bos_token, hf.eos_token, hf.bos_token_id, hf.eos_token_id) == (BOS, EOS, 0, 1)
    ids = {t: hf.convert_tokens_to_ids(t) for t in (BOS, EOS, USER, ASSISTANT, THINK, END_THINK)}
    assert ids == {t: i for i, t, _ in special_tokens(V)}, ids
    text = TOKENIZER_CHECK_TEXTS[0]
    enc = hf(text)["input_ids"]
    assert enc == tok.encode(text).ids and enc[0] == 0 and all(i < V for i in enc)
    assert hf.decode(enc, skip_special_tokens=True) == text
    for t in TOKENIZER_CHECK_TEXTS:
        e = hf(t)["input_ids"]
        assert hf.decode(e[1:]) == t, (t, hf.decode(e[1:]))
    msgs = [{"role": "user", "content": "hi"}]
    prompt = hf.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert prompt == f"{BOS}{USER}hi{ASSISTANT}", prompt
    prompt_ids = hf.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                        return_dict=False)
    assert prompt_ids == [0, ids[USER], *tok.encode("hi", add_special_tokens=False).ids, ids[ASSISTANT]]
    return {
        "files": ["tokenizer.json", "tokenizer_config.json", "generation_config.json"],
        "special_token_ids": ids,
        "encode_example": {"text": text, "ids": enc,
                           "pieces": hf.convert_ids_to_tokens(enc)},
        "chat_example": {"messages": msgs, "add_generation_prompt": True, "text": prompt,
                         "ids": prompt_ids},
        "r1_check": check_r1_tokens(),
    }


def does_token_look_special(t: str) -> bool:
    """convert_hf_to_gguf's ModelBase.does_token_look_special."""
    return (t in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (t.startswith("<|") and t.endswith("|>"))
            or (t.startswith("<\uff5c") and t.endswith("\uff5c>"))
            or (t.startswith("<unused") and t.endswith(">")))


def add_tokenizer(w: GGUFWriter, d: Path, n_vocab: int) -> None:
    """What llama.cpp's converter writes for DeepseekV2Model.set_vocab -> TextModel._set_vocab_gpt2:
    get_vocab_base() (tokens in id order, [PADn] for missing ids, CONTROL for special or
    special-looking added tokens, USER_DEFINED for the other added ones), tokenizer.ggml.model "gpt2",
    tokenizer.ggml.pre, then gguf.SpecialVocab(dir, load_merges=True).add_to_gguf: merges,
    bos/eos/padding ids, add_bos/add_eos, chat_template. The pre name is GGUF_PRE (see there), not the
    hash the converter would compute (a 300-token vocabulary matches no known model)."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(d)
    vocab = tok.get_vocab()
    assert max(vocab.values()) < n_vocab
    reverse = {i: t for t, i in vocab.items()}
    added = tok.get_added_vocab()
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        t = reverse[i]
        if t in added:
            if tok.added_tokens_decoder[i].special or does_token_look_special(t):
                types.append(gguf.TokenType.CONTROL)
            else:
                t = t.replace("\u2581", " ")  # pre-normalize user-defined spaces
                types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(t)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(GGUF_PRE)
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(d, load_merges=True).add_to_gguf(w, quiet=True)


def tokenizer_summary(f: dict) -> dict:
    """The tokenizer.* keys of a GGUF file, summarized for its golden JSON."""
    toks, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"]
    names = {int(v): v.name for v in gguf.TokenType}
    return {
        "model": f["tokenizer.ggml.model"],
        "pre": f["tokenizer.ggml.pre"],
        "n_tokens": len(toks),
        "n_merges": len(f["tokenizer.ggml.merges"]),
        "bos_token_id": f["tokenizer.ggml.bos_token_id"],
        "eos_token_id": f["tokenizer.ggml.eos_token_id"],
        "padding_token_id": f.get("tokenizer.ggml.padding_token_id"),
        "add_bos_token": f["tokenizer.ggml.add_bos_token"],
        "add_eos_token": f["tokenizer.ggml.add_eos_token"],
        "not_normal_tokens": {t: {"id": i, "type": names[ty]} for i, (t, ty) in enumerate(zip(toks, types))
                              if ty != gguf.TokenType.NORMAL},
        "chat_template_sha256": hashlib.sha256(f["tokenizer.chat_template"].encode()).hexdigest(),
        "same_as": f"{TOKENIZER_MODEL}/tokenizer.json + tokenizer_config.json",
    }


def check_gguf_tokenizer(f: dict, d: Path) -> None:
    """A tokenizer rebuilt from the GGUF keys alone (vocabulary, merges, token types, add_bos, and
    the pipeline that GGUF_PRE names) encodes like the folder's tokenizer.json."""
    from tokenizers import Tokenizer
    doc = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
    toks, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"]
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == GGUF_PRE
    assert f["tokenizer.chat_template"] == R1_CHAT_TEMPLATE
    assert f["tokenizer.ggml.add_bos_token"] is True and f["tokenizer.ggml.add_eos_token"] is False
    bos = f["tokenizer.ggml.bos_token_id"]
    g = dict(doc)
    g["added_tokens"] = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": ty == gguf.TokenType.CONTROL}
                         for i, (t, ty) in enumerate(zip(toks, types))
                         if ty in (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED)]
    g["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": toks[bos], "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": toks[bos], "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": toks[bos], "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {toks[bos]: {"id": toks[bos], "ids": [bos], "tokens": [toks[bos]]}},
    }
    g["model"] = dict(doc["model"], vocab={t: i for i, t in enumerate(toks)},
                      merges=[m.split(" ") for m in f["tokenizer.ggml.merges"]])
    from_gguf = Tokenizer.from_str(json.dumps(g))
    from_dir = Tokenizer.from_file(str(d / "tokenizer.json"))
    for t in TOKENIZER_CHECK_TEXTS + [f"{BOS}{USER}hi{ASSISTANT}"]:
        assert from_gguf.encode(t).ids == from_dir.encode(t).ids, t
        assert from_gguf.decode(from_gguf.encode(t).ids, skip_special_tokens=False) == \
            from_dir.decode(from_dir.encode(t).ids, skip_special_tokens=False)


# ---------------------------------------------------------------------------------------------
# GGUF (llama.cpp deepseek2)
# ---------------------------------------------------------------------------------------------


def gguf_tensors(ck: dict[str, torch.Tensor], cfg: dict, layout: str):
    """(gguf name, numpy array) in the order conversion/deepseek.py emits them: the safetensors
    names sorted, experts stacked into one 3-D tensor once all of a layer's are seen."""
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.DEEPSEEK2, cfg["num_hidden_layers"])
    H, nope, v = cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["v_head_dim"]
    E = cfg["n_routed_experts"]
    pending: dict[int, dict[str, torch.Tensor]] = {}

    def mapped(name: str) -> str:
        new = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        assert new is not None, name
        return new

    for name in sorted(ck):
        t = ck[name]
        m = re.match(r"model\.layers\.(\d+)\.", name)
        bid = int(m.group(1)) if m else None
        if name.endswith("e_score_correction_bias"):  # -> blk.N.exp_probs_b.bias
            name = name.replace("e_score_correction_bias", "e_score_correction.bias")
        if ".mlp.experts." in name:
            pending.setdefault(bid, {})[name] = t
            if len(pending[bid]) == 3 * E:
                for w in ("down_proj", "gate_proj", "up_proj"):
                    data = torch.stack([pending[bid][f"model.layers.{bid}.mlp.experts.{e}.{w}.weight"]
                                        for e in range(E)])
                    yield mapped(f"model.layers.{bid}.mlp.experts.{w}.weight"), data.numpy()
                del pending[bid]
            continue
        if name.endswith("kv_b_proj.weight") and layout == "split":
            kv_b = t.view(H, nope + v, t.shape[-1])
            k_b, v_b = torch.split(kv_b, [nope, v], dim=1)
            k_b = k_b.transpose(1, 2)
            yield mapped(name.replace("kv_b_proj", "k_b_proj")), k_b.contiguous().numpy()
            yield mapped(name.replace("kv_b_proj", "v_b_proj")), v_b.contiguous().numpy()
            continue
        yield mapped(name), t.numpy()
    assert not pending


def tensor_qtype(gname: str, arr: np.ndarray, outtype: str) -> QT:
    """The type llama.cpp's converter (ModelBase.prepare_tensors) gives a tensor for --outtype
    f32 / q8_0: 1-D tensors, *_norm.weight, ffn_gate_inp (the router) and names not ending in
    .weight (exp_probs_b.bias) stay F32; everything else, the 3-D stacked experts and attn_k_b /
    attn_v_b included (DeepseekV2Model has no tensor_force_quant), gets Q8_0, and gguf.quants.quantize
    refuses rows whose length is not a multiple of 32, which the converter then writes as F16.
    One deliberate difference: token_embd stays F32 here (the converter would make it Q8_0 too)."""
    if outtype == "f32":
        return QT.F32
    assert outtype == "q8_0"
    base = gname.split(".")[-2]
    if arr.ndim <= 1 or gname.endswith("_norm.weight") or not gname.endswith(".weight") \
            or base in ("ffn_gate_inp", "token_embd"):
        return QT.F32
    block = gguf.GGML_QUANT_SIZES[QT.Q8_0][0]
    return QT.Q8_0 if arr.shape[-1] % block == 0 else QT.F16


def write_gguf(path: Path, ck: dict[str, torch.Tensor], cfg: dict, layout: str,
               outtype: str = "f32") -> tuple[dict, dict[str, QT]]:
    """GGUF with the keys llama.cpp's converter writes for DeepseekV3ForCausalLM
    (TextModel.set_gguf_parameters, then DeepseekV2Model.set_gguf_parameters, then the tokenizer of
    TOKENIZER_MODEL's folder), tensors typed by tensor_qtype."""
    rs = cfg["rope_scaling"]
    w = GGUFWriter(path, ARCH)
    w.add_type("model")
    w.add_name(path.name.split(".")[0])
    # TextModel.set_gguf_parameters
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    # the converter sets num_key_value_heads = 1 (MLA as MQA); pre-split files kept the config's value
    w.add_head_count_kv(1 if layout == "split" else cfg["num_key_value_heads"])
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(rs["factor"])
    w.add_rope_scaling_orig_ctx_len(rs["original_max_position_embeddings"])
    if layout == "split":  # newer converters copy beta_fast/beta_slow from rope_scaling
        w.add_rope_scaling_yarn_beta_fast(rs["beta_fast"])
        w.add_rope_scaling_yarn_beta_slow(rs["beta_slow"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    w.add_expert_group_count(cfg["n_group"])
    w.add_expert_group_used_count(cfg["topk_group"])
    w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if outtype == "f32" else gguf.LlamaFileType.MOSTLY_Q8_0)
    # DeepseekV2Model.set_gguf_parameters
    w.add_leading_dense_block_count(cfg["first_k_dense_replace"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_q_lora_rank(cfg["q_lora_rank"])
    w.add_kv_lora_rank(cfg["kv_lora_rank"])
    if layout == "split":
        w.add_key_length(cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"])
        w.add_value_length(cfg["kv_lora_rank"])
        w.add_key_length_mla(cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"])
        w.add_value_length_mla(cfg["v_head_dim"])
    else:
        w.add_key_length(cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"])
        w.add_value_length(cfg["v_head_dim"])
    w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    w.add_expert_count(cfg["n_routed_experts"])
    w.add_expert_shared_count(cfg["n_shared_experts"])
    w.add_expert_weights_scale(cfg["routed_scaling_factor"])
    w.add_expert_weights_norm(cfg["norm_topk_prob"])
    w.add_rope_dimension_count(cfg["qk_rope_head_dim"])
    w.add_rope_scaling_yarn_log_mul(0.1 * rs["mscale_all_dim"])
    # ModelBase.prepare_metadata: set_vocab() after the model parameters, then the quant version
    add_tokenizer(w, OUT / TOKENIZER_MODEL, cfg["vocab_size"])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    shapes, types = {}, {}
    for gname, arr in gguf_tensors(ck, cfg, layout):
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        qt = tensor_qtype(gname, arr, outtype)
        w.add_tensor(gname, gguf.quants.quantize(arr, qt), raw_dtype=qt)
        shapes[gname] = list(reversed(arr.shape))
        types[gname] = qt
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return shapes, types


def read_gguf(path: Path) -> tuple[dict, dict[str, np.ndarray], dict[str, list[int]], dict[str, QT]]:
    """Metadata, every tensor as f32 (Q8_0 through gguf.quants.dequantize, F16 widened), ggml
    shapes and types."""
    r = GGUFReader(path)
    fields = {k: r.fields[k].contents() for k in r.fields if not k.startswith("GGUF.")}
    tens, ne, types = {}, {}, {}
    for t in r.tensors:
        qt = QT(t.tensor_type)
        ne[t.name] = [int(x) for x in t.shape]
        shape = tuple(reversed(ne[t.name]))
        if qt == QT.F32:
            arr = np.asarray(t.data, dtype=np.float32)
        elif qt == QT.F16:
            arr = np.asarray(t.data, dtype=np.float16).astype(np.float32)
        else:
            arr = gguf.quants.dequantize(np.asarray(t.data), qt).astype(np.float32)
        tens[t.name] = arr.reshape(shape)
        types[t.name] = qt
    return fields, tens, ne, types


def config_from_gguf(f: dict) -> dict:
    """The hub config a loader would rebuild from the GGUF metadata alone."""
    a = ARCH + "."
    mla = a + "attention.key_length_mla" in f
    rope = f[a + "rope.dimension_count"]
    if mla:
        qk, v = f[a + "attention.key_length_mla"], f[a + "attention.value_length_mla"]
    else:
        qk, v = f[a + "attention.key_length"], f[a + "attention.value_length"]
    # stored as f32: 0.1 * mscale_all_dim comes back as 0.10000000149
    yarn_mscale_all = round(f[a + "rope.scaling.yarn_log_multiplier"] / 0.1, 6)
    return dict(
        BASE,
        vocab_size=f[a + "vocab_size"],
        hidden_size=f[a + "embedding_length"],
        intermediate_size=f[a + "feed_forward_length"],
        moe_intermediate_size=f[a + "expert_feed_forward_length"],
        num_hidden_layers=f[a + "block_count"],
        first_k_dense_replace=f[a + "leading_dense_block_count"],
        num_attention_heads=f[a + "attention.head_count"],
        num_key_value_heads=f[a + "attention.head_count"],
        q_lora_rank=f.get(a + "attention.q_lora_rank"),
        kv_lora_rank=f[a + "attention.kv_lora_rank"],
        qk_nope_head_dim=qk - rope,
        qk_rope_head_dim=rope,
        v_head_dim=v,
        n_routed_experts=f[a + "expert_count"],
        n_shared_experts=f[a + "expert_shared_count"],
        num_experts_per_tok=f[a + "expert_used_count"],
        n_group=f[a + "expert_group_count"],
        topk_group=f[a + "expert_group_used_count"],
        routed_scaling_factor=f[a + "expert_weights_scale"],
        norm_topk_prob=f[a + "expert_weights_norm"],
        scoring_func={2: "sigmoid", 1: "softmax"}[f[a + "expert_gating_func"]],
        max_position_embeddings=f[a + "context_length"],
        rms_norm_eps=f[a + "attention.layer_norm_rms_epsilon"],
        rope_theta=f[a + "rope.freq_base"],
        rope_scaling={
            "beta_fast": f.get(a + "rope.scaling.yarn_beta_fast", 32),
            "beta_slow": f.get(a + "rope.scaling.yarn_beta_slow", 1),
            "factor": f[a + "rope.scaling.factor"],
            "mscale": yarn_mscale_all,  # llama.cpp has no separate mscale; equal here (see notes)
            "mscale_all_dim": yarn_mscale_all,
            "original_max_position_embeddings": f[a + "rope.scaling.original_context_length"],
            "type": f[a + "rope.scaling.type"],
        },
        tie_word_embeddings="output.weight" not in f.get("_tensors", ()),
    )


def checkpoint_from_gguf(tens: dict[str, np.ndarray], cfg: dict) -> dict[str, torch.Tensor]:
    """Undo the converter: GGUF names -> DeepSeek checkpoint names, experts unstacked,
    attn_k_b/attn_v_b re-assembled into kv_b_proj."""
    L, H = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    nope, v, R = cfg["qk_nope_head_dim"], cfg["v_head_dim"], cfg["kv_lora_rank"]
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.DEEPSEEK2, L)
    names = expected_names(cfg)
    rev = {}
    for hf in names:
        key = hf.replace("e_score_correction_bias", "e_score_correction.bias")
        if ".mlp.experts." in key:
            key = re.sub(r"\.experts\.\d+\.", ".experts.", key)
        g = tmap.get_name(key, try_suffixes=(".weight", ".bias"))
        if g is not None:
            rev.setdefault(g, hf)
    for i in range(L):
        rev[f"blk.{i}.attn_k_b.weight"] = f"model.layers.{i}.self_attn.kv_b_proj.weight"
        rev[f"blk.{i}.attn_v_b.weight"] = f"model.layers.{i}.self_attn.kv_b_proj.weight"
    ck: dict[str, torch.Tensor] = {}
    for gname, arr in tens.items():
        t = torch.from_numpy(arr.copy())
        m = re.fullmatch(r"blk\.(\d+)\.ffn_(gate|up|down)_exps\.weight", gname)
        if m:
            for e in range(cfg["n_routed_experts"]):
                ck[f"model.layers.{m.group(1)}.mlp.experts.{e}.{m.group(2)}_proj.weight"] = t[e]
            continue
        m = re.fullmatch(r"blk\.(\d+)\.attn_k_b\.weight", gname)
        if m:
            i = m.group(1)
            k_b = t  # [H, R, nope]
            v_b = torch.from_numpy(tens[f"blk.{i}.attn_v_b.weight"].copy())  # [H, v, R]
            assert k_b.shape == (H, R, nope) and v_b.shape == (H, v, R)
            kv_b = torch.cat([k_b.transpose(1, 2), v_b], dim=1).reshape(H * (nope + v), R)
            ck[f"model.layers.{i}.self_attn.kv_b_proj.weight"] = kv_b
            continue
        if gname.endswith("attn_v_b.weight"):
            continue
        ck[rev[gname]] = t
    assert set(ck) == names, set(ck) ^ names
    return ck


GGUF_VARIANTS = {  # file variant -> (layout, outtype)
    "kv_b": ("kv_b", "f32"),
    "split": ("split", "f32"),
    "q8_0": ("split", "q8_0"),
}

# GGUF tensor kind -> the transformers module (or fused expert parameter) it becomes
GGUF_TO_HF = {
    "attn_q": "self_attn.q_proj.weight", "attn_q_a": "self_attn.q_a_proj.weight",
    "attn_q_b": "self_attn.q_b_proj.weight", "attn_kv_a_mqa": "self_attn.kv_a_proj_with_mqa.weight",
    "attn_kv_b": "self_attn.kv_b_proj.weight", "attn_k_b": "self_attn.kv_b_proj.weight",
    "attn_v_b": "self_attn.kv_b_proj.weight", "attn_output": "self_attn.o_proj.weight",
    "ffn_gate": "mlp.gate_proj.weight", "ffn_up": "mlp.up_proj.weight",
    "ffn_down": "mlp.down_proj.weight", "ffn_gate_shexp": "mlp.shared_experts.gate_proj.weight",
    "ffn_up_shexp": "mlp.shared_experts.up_proj.weight",
    "ffn_down_shexp": "mlp.shared_experts.down_proj.weight",
    "ffn_gate_exps": "mlp.experts.gate_up_proj", "ffn_up_exps": "mlp.experts.gate_up_proj",
    "ffn_down_exps": "mlp.experts.down_proj",
}


@torch.no_grad()
def act_quant_logits(model, types: dict[str, QT]) -> np.ndarray:
    """Logits when every matmul with a Q8_0 weight sees its input rounded like ggml's CPU kernels
    do (Q8_0 activations: blocks of 32, f16 scale) and every F16 weight an f16-rounded input.
    torch.nn.functional.linear is wrapped for one forward (nn.Linear, the fused experts and the
    router all go through it); weights are recognized by their storage. kv_b_proj (attn_k_b F16 +
    attn_v_b Q8_0 in the file) counts as Q8_0: an estimate, not a model of the absorbed graph."""
    kinds: dict[int, QT] = {}
    for gname, qt in types.items():
        m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", gname)
        if qt == QT.F32:
            continue
        if gname == "output.weight":
            p = model.lm_head.weight
        else:
            assert m is not None, gname
            p = model.get_parameter(f"model.layers.{m.group(1)}.{GGUF_TO_HF[m.group(2)]}")
        key = p.untyped_storage().data_ptr()
        kinds[key] = QT.Q8_0 if QT.Q8_0 in (qt, kinds.get(key)) else qt
    orig = torch.nn.functional.linear

    def linear(x, w, b=None):
        qt = kinds.get(w.untyped_storage().data_ptr())
        if qt == QT.Q8_0:
            x = _q8_blocks(x, 32, True)
        elif qt == QT.F16:
            x = x.half().float()
        return orig(x, w, b)

    torch.nn.functional.linear = linear
    try:
        return full_logits(model, INPUT_IDS)
    finally:
        torch.nn.functional.linear = orig


def make_gguf(variant: str, src_ck: dict[str, torch.Tensor], src_logits: np.ndarray):
    src = "dsv3-qlora-yarn"
    cfg = MODELS[src]["config"]
    layout, outtype = GGUF_VARIANTS[variant]
    d = OUT / "gguf"
    d.mkdir(parents=True, exist_ok=True)
    fname = f"{src}.{variant}.gguf"
    path = d / fname
    shapes, qtypes = write_gguf(path, src_ck, cfg, layout, outtype)
    f, tens, ne, types = read_gguf(path)
    assert ne == shapes and types == qtypes
    f["_tensors"] = set(tens)
    check_gguf_tokenizer(f, OUT / TOKENIZER_MODEL)

    # every key and shape as documented in the module docstring
    C, V, H = cfg["hidden_size"], cfg["vocab_size"], cfg["num_attention_heads"]
    R, nope, rope, v = cfg["kv_lora_rank"], cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], \
        cfg["v_head_dim"]
    E, Im, I = cfg["n_routed_experts"], cfg["moe_intermediate_size"], cfg["intermediate_size"]
    assert f["general.architecture"] == ARCH
    assert ne["token_embd.weight"] == [C, V] and ne["output.weight"] == [C, V]
    assert ne["blk.0.ffn_down.weight"] == [I, C] and ne["blk.0.ffn_gate.weight"] == [C, I]
    assert ne["blk.1.attn_q_a.weight"] == [C, cfg["q_lora_rank"]]
    assert ne["blk.1.attn_q_b.weight"] == [cfg["q_lora_rank"], H * (nope + rope)]
    assert ne["blk.1.attn_kv_a_mqa.weight"] == [C, R + rope]
    assert ne["blk.1.attn_output.weight"] == [H * v, C]
    assert ne["blk.1.ffn_gate_inp.weight"] == [C, E] and ne["blk.1.exp_probs_b.bias"] == [E]
    assert ne["blk.1.ffn_gate_exps.weight"] == [C, Im, E] == ne["blk.1.ffn_up_exps.weight"]
    assert ne["blk.1.ffn_down_exps.weight"] == [Im, C, E]
    assert ne["blk.1.ffn_gate_shexp.weight"] == [C, Im] and ne["blk.1.ffn_down_shexp.weight"] == [Im, C]
    if layout == "split":
        assert ne["blk.1.attn_k_b.weight"] == [nope, R, H]
        assert ne["blk.1.attn_v_b.weight"] == [R, v, H]
        assert "blk.1.attn_kv_b.weight" not in ne
        assert f[f"{ARCH}.attention.head_count_kv"] == 1
    else:
        assert ne["blk.1.attn_kv_b.weight"] == [R, H * (nope + v)]
        assert "blk.1.attn_k_b.weight" not in ne and f"{ARCH}.attention.key_length_mla" not in f

    # the metadata alone rebuilds the hub config
    gcfg = config_from_gguf(f)
    for k in BASE:
        if k in ("topk_method",):
            continue
        want, got = cfg[k], gcfg[k]
        if isinstance(want, float):
            assert abs(want - got) < 1e-6 * max(1.0, abs(want)), (k, want, got)
        elif k == "rope_scaling":
            for kk in want:
                assert (want[kk] == got[kk]) if isinstance(want[kk], str) else \
                    abs(want[kk] - got[kk]) < 1e-6, (kk, want[kk], got[kk])
        else:
            assert want == got, (k, want, got)

    ck = checkpoint_from_gguf(tens, gcfg)
    if outtype == "f32":  # lossless
        for k, t in src_ck.items():
            assert torch.equal(ck[k], t), k
    else:  # each tensor is exactly gguf-py's quantize -> dequantize of the converter's array
        src_t = dict(gguf_tensors(src_ck, cfg, layout))
        rel_err = {}
        for gname, qt in types.items():
            a = np.ascontiguousarray(src_t[gname], dtype=np.float32)
            want = a if qt == QT.F32 else gguf.quants.dequantize(gguf.quants.quantize(a, qt), qt)
            assert np.array_equal(tens[gname], want.reshape(a.shape)), gname
            if qt != QT.F32:
                rel_err[gname] = float(np.linalg.norm(tens[gname] - a) / np.linalg.norm(a))
        assert {k for k, qt in types.items() if qt == QT.F16} == {
            f"blk.{i}.attn_{x}.weight" for i in range(cfg["num_hidden_layers"]) for x in ("q_b", "k_b")}
        assert types["blk.1.ffn_gate_exps.weight"] == types["blk.1.ffn_down_exps.weight"] == QT.Q8_0
        assert types["blk.1.attn_v_b.weight"] == types["output.weight"] == QT.Q8_0
        assert types["token_embd.weight"] == types["blk.1.ffn_gate_inp.weight"] == QT.F32
    ref_model = from_checkpoint(ck, hf_config(gcfg))
    stem = fname[:-len(".gguf")] + "."
    desc = ("every tensor read back with GGUFReader"
            + (" and dequantized with gguf.quants.dequantize (F16 widened to f32)" if outtype != "f32"
               else "")
            + "; experts unstacked"
            + (", attn_k_b/attn_v_b re-assembled into kv_b_proj" if layout == "split" else "")
            + "; config rebuilt from the GGUF metadata; loaded into transformers, forward in f32.")
    g = finish_golden(d, stem, ref_model, cfg, {
        "model_file": fname, "source_model": src, "arch": ARCH, "variant": outtype, "layout": layout,
        "file_type": int(gguf.LlamaFileType.ALL_F32 if outtype == "f32"
                         else gguf.LlamaFileType.MOSTLY_Q8_0),
        "tensor_types": {k: v.name for k, v in types.items()},
        "tensor_shapes_ggml": ne,
        "metadata": {k: (v if not isinstance(v, float) else float(v)) for k, v in f.items()
                     if not k.startswith(("_", "tokenizer."))},
        "tokenizer": tokenizer_summary(f),
        "q_k_permuted": False,
        "reference": desc + (f" Equal bit for bit to {src}/logits.bin." if outtype == "f32" else
                             " What an exact engine computes from this file: weights dequantized "
                             "to f32, f32 arithmetic."),
        "generator": gen_info(MODELS[src]["seed"]),
    }, (["q8_0: the split file with every 2-D weight and the stacked 3-D experts stored as Q8_0 "
         "(gguf.quants.quantize, as llama.cpp's converter with --outtype q8_0), except: norms, "
         "exp_probs_b.bias and ffn_gate_inp (router) stay F32 as the converter does; token_embd "
         "stays F32 (the converter would make it Q8_0); attn_q_b (rows of q_lora_rank 48) and "
         "attn_k_b (rows of qk_nope 16) are F16 because their row length is not a multiple of 32 "
         "(gguf-py refuses, and the converter falls back to F16 the same way).",
         "An engine running this file with ggml-style kernels also rounds the activations to 8 bits "
         "(Q8_0 blocks of 32) before each Q8_0 matmul and to f16 before each F16 one, so only close "
         "agreement with logits_file is expected, not 1e-4: see activation_quant_estimate. An "
         "engine that dequantizes the weights to f32 and computes in f32 should meet 1e-4."]
        if outtype != "f32" else []) + [
        "kv_b layout: attention metadata as llama.cpp's converter wrote it before the MLA split "
        "(head_count_kv = n_head, key_length = qk_nope+qk_rope, value_length = v_head_dim, no "
        "*_mla keys, no rope.scaling.yarn_beta_* keys: defaults 32 / 1 apply); MoE keys as the "
        "current converter, including expert_group_count / expert_group_used_count, which old "
        "converters did not write (without them llama.cpp routes without the group limit)."
        if layout == "kv_b" else
        "split layout: as conversion/deepseek.py writes it now: head_count_kv 1, key_length = "
        "kv_lora_rank + qk_rope_head_dim, value_length = kv_lora_rank, key_length_mla = "
        "qk_nope + qk_rope, value_length_mla = v_head_dim; attn_k_b [nope, kv_lora, H] = per-head "
        "transpose of the k rows of kv_b_proj, attn_v_b [kv_lora, v, H] = the v rows.",
        "llama.cpp's deepseek2 graph: kq_scale = mscale^2 / sqrt(key_length_mla) with mscale = "
        "1 + yarn_log_multiplier * ln(factor) (times attn_factor, 1 here); cos/sin unscaled. "
        "Same numbers as transformers here because mscale == mscale_all_dim.",
    ])
    lg = np.fromfile(d / g["logits_file"], dtype="<f4").reshape(src_logits.shape)
    if outtype == "f32":
        assert np.array_equal(lg, src_logits), "GGUF reference differs from the safetensors one"
        g["max_abs_diff_vs_f32_model"] = 0.0
        msg = f"logits equal to {src}"
    else:
        g["max_abs_diff_vs_f32_model"] = float(np.abs(lg - src_logits).max())
        g["argmax_agreement_vs_f32_model"] = float((lg.argmax(-1) == src_logits.argmax(-1)).mean())
        g["q8_0"] = {
            "types": {t.name: sorted(k for k, v in types.items() if v == t)
                      for t in (QT.Q8_0, QT.F16, QT.F32)},
            "max_relative_weight_error": {k: rel_err[k] for k in sorted(rel_err)},
        }
        f32_model = from_checkpoint(src_ck, hf_config(gcfg))
        seqs = [INPUT_IDS, g["greedy"]["prompt"] + g["greedy"]["tokens"]]
        pairs = [(a, b) for ids in seqs for a, b in zip(routing_choices(ref_model, ids),
                                                         routing_choices(f32_model, ids))]
        g["q8_0"]["routing_vs_f32_model"] = {
            "note": "(token, MoE layer) expert choices on the sequences of routing.note that differ "
                    "between this reference and the unquantized model",
            "decisions": sum(a.shape[0] for a, _ in pairs),
            "differ": sum(int((a != b).any(-1).sum()) for a, b in pairs),
        }
        aq = act_quant_logits(ref_model, types)
        g["activation_quant_estimate"] = {
            "note": "same file, but each matmul with a Q8_0 weight fed Q8_0-rounded activations "
                    "(blocks of 32, f16 scale) and each F16 one f16-rounded activations, as ggml's "
                    "CPU kernels do; kv_b_proj counted as Q8_0; routing recomputed from the rounded "
                    "activations. A rough guide for tolerances of engines whose kernels quantize "
                    "activations",
            "max_abs_logit_diff": float(np.abs(aq - lg).max()),
            "top1_agreement": float((aq.argmax(-1) == lg.argmax(-1)).mean()),
        }
        g["tolerance_hint"] = dict(g["tolerance_hint"], note=(
            "f32_max_abs applies to an engine that dequantizes the weights to f32 and computes in "
            "f32; one that rounds activations to 8 bits (ggml Q8_0 kernels) gets only close "
            "agreement, of the order of activation_quant_estimate.max_abs_logit_diff"))
        msg = (f"max|d vs f32|={g['max_abs_diff_vs_f32_model']:.4g}, argmax agreement "
               f"{g['argmax_agreement_vs_f32_model']:.3f}, act-quant est. max|d|="
               f"{g['activation_quant_estimate']['max_abs_logit_diff']:.3g}")
    dump_json(d / f"{stem}golden.json", g)
    print(f"[gguf] {fname} {path.stat().st_size} B, {len(ne)} tensors "
          f"({sorted(set(v.name for v in types.values()))}), {msg}")


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--allow-logit-changes", action="store_true",
                    help="accept reference logits that differ from the files already there "
                         "(e.g. after a torch/transformers upgrade); by default that is an error")
    args = ap.parse_args()
    print(f"versions: {versions()}")
    # only this script's own outputs: tests/fixtures/deepseek/ also holds files made by hand
    # (DeepSeek-V3-config/)
    OUT.mkdir(parents=True, exist_ok=True)
    before = {p: p.read_bytes() for p in sorted(OUT.rglob("*logits.bin"))
              if p.parent.name in MODELS or p.name.startswith("dsv3-")}
    for p in sorted((OUT / "gguf").glob("dsv3-*")):
        p.unlink()
    _, yarn_ck, _ = make_safetensors("dsv3-qlora-yarn")
    yarn_logits = np.fromfile(OUT / "dsv3-qlora-yarn" / "logits.bin", dtype="<f4").reshape(
        len(INPUT_IDS), -1)
    tk = write_tokenizer(OUT / TOKENIZER_MODEL, MODELS[TOKENIZER_MODEL]["config"])
    print(f"[{TOKENIZER_MODEL}] tokenizer: special ids {tk['special_token_ids']}, "
          f"{tk['encode_example']['text']!r} -> {tk['encode_example']['ids']}, "
          f"chat prompt {tk['chat_example']['text']!r} -> {tk['chat_example']['ids']}; {tk['r1_check']}")
    make_safetensors("dsv3-noqlora")
    make_fp8(yarn_ck, yarn_logits)
    for variant in GGUF_VARIANTS:
        make_gguf(variant, yarn_ck, yarn_logits)
    changed = [str(p.relative_to(ROOT)) for p, b in before.items() if p.read_bytes() != b]
    if changed:
        msg = f"reference logits changed: {changed}"
        if not args.allow_logit_changes:
            raise SystemExit(msg + " (the weights are fixed, so this means a different torch/"
                             "transformers; rerun with --allow-logit-changes to accept)")
        print("WARNING: " + msg)
    else:
        print(f"all {len(before)} reference logits files that existed before are byte-identical")
    files = sorted(p for p in OUT.rglob("*") if p.is_file() and (
        p.parent.name in MODELS or p.name.startswith("dsv3-")))
    total = sum(p.stat().st_size for p in files)
    print(f"done: {len(files)} files, {total} bytes under {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
