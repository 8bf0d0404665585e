#!/usr/bin/env python3
"""Golden fixtures for Qwen3 (R1-0528-Qwen3's architecture): a tiny random Qwen3ForCausalLM saved
as safetensors and as a GGUF file (`qwen3` architecture, as llama.cpp's converter writes it), with
transformers' f32 logits, greedy continuation and KV-cache check in the format of
tools/make_golden.py (whose helpers it uses).

The config exercises what Qwen3 adds to the Llama decoder: a head size (32) apart from
hidden / heads (16), per-head q/k RMSNorm with random weights, no q/k/v biases, GQA 4/2.

    python3 tools/make_qwen3_golden.py
"""
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import gguf
from transformers import Qwen3Config, Qwen3ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_golden as mg  # noqa: E402

NAME = "tiny-qwen3"


def build():
    torch.manual_seed(31)
    cfg = Qwen3Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                      max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=1000000.0,
                      tie_word_embeddings=False, attention_bias=False)
    m = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.08)
        # norms near 1, as trained ones are, but not exactly 1 (so a missing norm shows)
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    return m


def write_gguf(model, path: Path):
    c = model.config
    w = gguf.GGUFWriter(str(path), "qwen3")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"] if getattr(c, "rope_parameters", None) else c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for hf, t in model.state_dict().items():
        g = names.get(hf)
        if g is None:
            layer, tail = hf[len("model.layers."):].split(".", 1)
            for h, p in parts.items():
                if tail.startswith(h):
                    g = f"blk.{layer}.{p}{tail[len(h):]}"
        w.add_tensor(g, t.float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    model = build()
    d = mg.OUT / NAME
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    model.save_pretrained(d, safe_serialization=True)
    (d / "generation_config.json").unlink(missing_ok=True)
    re = Qwen3ForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    # (the in-memory model runs SDPA attention, the reloaded one eager: equal to float noise)
    assert np.abs(mg.full_logits(model, mg.INPUT_IDS) - mg.full_logits(re, mg.INPUT_IDS)).max() < 1e-5
    extra = {"model": NAME, "arch": "qwen3", "weights_dtype": "float32",
             "reference": "transformers f32 forward of the checkpoint re-loaded from this dir",
             "generator": {"script": "tools/make_qwen3_golden.py", "seed": 31, "versions": mg.versions()}}
    g = mg.write_reference(d, "", re, extra)
    mg.dump_json(d / "golden.json", g)
    # The same weights as a qwen3 GGUF (F32): the same logits.
    gg = mg.OUT / "gguf"
    gg.mkdir(exist_ok=True)
    write_gguf(re, gg / f"{NAME}.f32.gguf")
    g2 = mg.write_reference(gg, f"{NAME}.f32.", re, dict(extra, model_file=f"{NAME}.f32.gguf"))
    mg.dump_json(gg / f"{NAME}.f32.golden.json", g2)
    print(f"[{NAME}] logits[0,:4]={g['first_logits'][:4]} greedy={g['greedy']['tokens']}")


if __name__ == "__main__":
    main()
