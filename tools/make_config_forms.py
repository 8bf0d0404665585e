"""config.json files in every rope form transformers writes, for `crates/models` config tests.

transformers 5.x saves `rope_parameters` (with `rope_theta` inside it, and both `type` and `rope_type`
when the caller used the old key) and `rope_scaling: null`, `rope_theta: null` at the top; 4.4x saved
`rope_scaling` with `type` and/or `rope_type` beside a top-level `rope_theta`. The 5.x files are saved by
the installed transformers; the 4.4x forms are the same settings moved where 4.4x put them.

    python3 tools/make_config_forms.py crates/models/tests/fixtures/config_forms
"""

import json
import os
import sys

import transformers
from transformers import DeepseekV2Config, DeepseekV3Config, LlamaConfig, Qwen2Config

OUT = sys.argv[1] if len(sys.argv) > 1 else "crates/models/tests/fixtures/config_forms"
os.makedirs(OUT, exist_ok=True)

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=131072)
DS = dict(vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4,
          n_shared_experts=1, num_experts_per_tok=2, n_group=1, topk_group=1, q_lora_rank=16,
          kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8,
          max_position_embeddings=163840, first_k_dense_replace=1)

LLAMA3 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}
YARN = {"factor": 40.0, "original_max_position_embeddings": 4096, "beta_fast": 32.0, "beta_slow": 1.0,
        "mscale": 1.0, "mscale_all_dim": 1.0}
THETA = 500000.0


def save(name, d):
    with open(os.path.join(OUT, name + ".json"), "w") as f:
        json.dump(d, f, indent=1, sort_keys=True)


def v5(cls, base, kind, params):
    """Saved by the installed transformers, given the old `rope_scaling` with `type` (how most
    hub configs spell it) and with `rope_type`."""
    for key in ("type", "rope_type"):
        rs = dict(params, **{key: kind}) if params else None
        kw = dict(base, rope_theta=THETA)
        if rs is not None:
            kw["rope_scaling"] = rs
        d = json.loads(cls(**kw).to_json_string())
        yield key, d


def v4_forms(d, kind, params):
    """The same settings where 4.4x wrote them."""
    base = {k: v for k, v in d.items() if k not in ("rope_parameters", "rope_scaling", "rope_theta")}
    forms = {"v4_null": dict(base, rope_theta=THETA, rope_scaling=None)}
    if params:
        forms["v4_type"] = dict(base, rope_theta=THETA, rope_scaling=dict(params, type=kind))
        forms["v4_rope_type"] = dict(base, rope_theta=THETA, rope_scaling=dict(params, rope_type=kind))
        forms["v4_both"] = dict(base, rope_theta=THETA, rope_scaling=dict(params, type=kind, rope_type=kind))
    return forms


for arch, cls, base, kind, params in [
    ("llama", LlamaConfig, TINY, "llama3", LLAMA3),
    ("qwen2", Qwen2Config, TINY, "default", None),
    ("deepseek_v3", DeepseekV3Config, DS, "yarn", YARN),
    ("deepseek_v2", DeepseekV2Config, DS, "yarn", YARN),
]:
    last = None
    for key, d in v5(cls, base, kind, params):
        save(f"{arch}.v5_from_{key}", d)
        last = d
    for form, d in v4_forms(last, kind, params).items():
        save(f"{arch}.{form}", d)
    if params:
        bad = dict(last)
        bad["rope_parameters"] = dict(last["rope_parameters"], type=kind, rope_type="default")
        save(f"{arch}.contradictory", bad)
print(f"wrote {len(os.listdir(OUT))} files with transformers {transformers.__version__}")
