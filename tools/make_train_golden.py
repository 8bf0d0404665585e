#!/usr/bin/env python3
"""Training fixtures for Seek: loss, every gradient and the weights after two AdamW steps.

For the tiny random Llama and Qwen2 checkpoints of tests/fixtures/golden/ (tools/make_golden.py),
full fine-tuning and LoRA (peft), on one fixed right-padded batch of two rows whose prompt
tokens and padding are masked (-100), this writes tests/fixtures/train/<model>-<mode>/:

  golden.json          the batch (input_ids, shifted labels with null for "no loss"), the
                       optimizer settings, the loss and the global gradient norm of both steps,
                       the parameter names without weight decay, and versions
  grads.safetensors    d(loss)/d(param) at step 1 (before clipping), by parameter name:
                       Hugging Face names for full, PEFT keys (base_model.model....lora_A.weight)
                       for LoRA
  after.safetensors    the trainable parameters after two steps, same names
  adapter_init/        LoRA only: the starting adapter as peft's save_pretrained writes it
                       (init_lora_weights=False, so B is random and every gradient is non-zero)

tests/fixtures/train/tiny-r1-qwen2/: a tiny random Qwen2ForCausalLM (vocab 300) with the
300-token byte-level BPE and DeepSeek-R1's chat template of tests/fixtures/deepseek/dsv3-qlora-yarn
(tools/make_deepseek_golden.py): a miniature R1-Distill-Qwen for the `seek train sft` tests;

and tests/fixtures/train/schedules.json: learning rates of transformers' linear, cosine and
constant-with-warmup schedules (warmup 3 of 10 steps).

DeepSeek-V3 (MLA + DeepSeekMoE), on the tiny DeepseekV3ForCausalLM checkpoints of
tests/fixtures/deepseek/ (tools/make_deepseek_golden.py; vocab 300, so the same batch fits):

  deepseek-qlora-full, deepseek-noqlora-full
      full fine-tuning with and without q_lora_rank. transformers 5 holds the routed experts
      fused (mlp.experts.gate_up_proj (X, 2F, E) = cat(gate, up) per expert, mlp.experts.down_proj
      (X, E, F)); their gradients and weights are written under the checkpoint's (and Seek's)
      per-expert names model.layers.L.mlp.experts.X.{gate,up,down}_proj.weight by splitting the
      fused tensors (see per_expert). AdamW is elementwise and the clipping norm global, so
      splitting after the steps equals stepping the split tensors. The router's
      e_score_correction_bias is a buffer, not a parameter: it is not trained.
  deepseek-qlora-lora
      LoRA with stock transformers 5 + peft on the attention projections q_a_proj,
      kv_a_proj_with_mqa, kv_b_proj, o_proj. No MLP: on transformers 5, peft 0.21 rewrites
      every target named gate_proj / up_proj / down_proj (shared_experts.gate_proj included)
      into target_parameters on the fused routed experts (_convert_peft_config_moe), and that
      is a different adapter from per-expert LoRA (the fused gate_up_proj gets one rank-2r
      adapter whose B is not block-diagonal while it trains), so neither the shared nor the
      routed experts can be targeted as Linear modules there.
  deepseek-noqlora-lora
      LoRA on q_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj, gate_proj, up_proj, down_proj (the
      dense MLP, the shared experts and every routed expert) with the routed experts as one
      DeepseekV3MLP (three Linear modules) per expert: the layout of transformers 4 and of
      DeepSeek's own modeling code, whose per-expert adapters peft 0.21 still loads into
      transformers 5 by converting them. PerExpert below runs the same loop as transformers 5's
      DeepseekV3Experts.forward on the same weights; peft's v4 -> v5 target conversion is
      switched off for this model because it has the v4 layout (see v4_targets).

The loss is what transformers' Trainer computes with gradient accumulation: the sum of the
token cross-entropies over the batch divided by the number of supervised tokens. Each step:
clip_grad_norm_(1.0), then torch.optim.AdamW (lr 1e-3, betas (0.9, 0.999), eps 1e-4 (see EPS),
weight_decay 0.1 on every parameter except biases and norms, as the Trainer groups them).

Deterministic (fixed seeds, 1 thread, float32). Re-run with
    python3 tools/make_train_golden.py
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "fixtures" / "golden"
DEEPSEEK = ROOT / "tests" / "fixtures" / "deepseek"
OUT = ROOT / "tests" / "fixtures" / "train"

# eps 1e-4, not the default 1e-8: Adam's first steps move every weight by about lr * sign(g),
# so with eps 1e-8 a gradient of 1e-6 that differs by 1e-10 between two exact implementations
# (float summation order) can take a visibly different step; 1e-4 keeps the comparison of
# the weights after two steps well conditioned. The update rule is the same.
LR, BETAS, EPS, WD, MAX_NORM = 1e-3, (0.9, 0.999), 1e-4, 0.1, 1.0
NO_DECAY = [r"bias", r"norm"]


def batch():
    # Two rows, right-padded to 12; row 0 supervises positions 4..10, row 1 positions 3..7.
    g = torch.Generator().manual_seed(7)
    ids0 = torch.randint(3, 256, (11,), generator=g).tolist()
    ids1 = torch.randint(3, 256, (8,), generator=g).tolist()
    t = 12
    input_ids = [ids0 + [0] * (t - len(ids0)), ids1 + [0] * (t - len(ids1))]
    # labels[b][j]: the token the logits at j predict (ids[j+1]), None where there is no loss
    labels = []
    for ids, start in ((ids0, 3), (ids1, 2)):
        row = [None] * t
        for j in range(start, len(ids) - 1):
            row[j] = ids[j + 1]
        labels.append(row)
    return input_ids, labels


def loss_of(model, input_ids, labels):
    logits = model(input_ids=torch.tensor(input_ids)).logits  # (B, T, V)
    tgt = torch.tensor([[-100 if x is None else x for x in row] for row in labels])
    n = (tgt != -100).sum()
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100, reduction="sum"
    ) / n


def decays(name):
    return not any(re.search(p, name) for p in NO_DECAY)


def run(model, names, input_ids, labels):
    params = [p for n, p in names]
    groups = [
        {"params": [p for n, p in names if decays(n)], "weight_decay": WD},
        {"params": [p for n, p in names if not decays(n)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS, foreach=False)
    losses, norms, grads = [], [], {}
    for step in range(2):
        opt.zero_grad()
        loss = loss_of(model, input_ids, labels)
        loss.backward()
        # A routed expert no token picked has no gradient; torch's AdamW would skip it (no
        # weight decay either). Seek, like transformers 5's fused experts, steps every
        # parameter with a zero gradient. Never the case for the dense models.
        for _, p in names:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if step == 0:
            grads = {n: p.grad.detach().clone().contiguous() for n, p in names}
        norm = torch.nn.utils.clip_grad_norm_(params, MAX_NORM)
        opt.step()
        losses.append(loss.item())
        norms.append(norm.item())
    after = {n: p.detach().clone().contiguous() for n, p in names}
    return losses, norms, grads, after


def write(dest, input_ids, labels, losses, norms, grads, after, names, extra):
    dest.mkdir(parents=True, exist_ok=True)
    save_file(grads, dest / "grads.safetensors")
    save_file(after, dest / "after.safetensors")
    golden = {
        "batch": {"input_ids": input_ids, "labels": labels},
        "optimizer": {"lr": LR, "betas": list(BETAS), "eps": EPS, "weight_decay": WD,
                      "max_grad_norm": MAX_NORM},
        "no_decay": [n for n, _ in names if not decays(n)],
        "loss": losses,
        "grad_norm": norms,
        "generator": {"script": "tools/make_train_golden.py",
                      "versions": {"torch": torch.__version__,
                                   "transformers": transformers.__version__}},
    }
    golden.update(extra)
    (dest / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")


def load(model_dir):
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config._attn_implementation = "eager"
    return model


def full(model_dir, tag, input_ids, labels, load=load, rename=lambda model, d: d):
    check_vocab(model_dir, input_ids, labels)
    model = load(model_dir)
    names = [(n, p) for n, p in model.named_parameters()]
    losses, norms, grads, after = run(model, names, input_ids, labels)
    grads, after = rename(model, grads), rename(model, after)
    saved = [(n, None) for n in after]
    write(OUT / f"{tag}-full", input_ids, labels, losses, norms, grads, after, saved,
          {"base": str(model_dir.relative_to(ROOT)), "mode": "full"})


def check_vocab(model_dir, input_ids, labels):
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    top = max(x for row in input_ids + labels for x in row if x is not None)
    assert top < vocab, f"{model_dir}: token id {top} is outside the vocabulary of {vocab}"


def lora(model_dir, tag, targets, input_ids, labels, load=load, v4_layout=False):
    import peft

    check_vocab(model_dir, input_ids, labels)
    torch.manual_seed(11)
    model = load(model_dir)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets,
                          init_lora_weights=False, task_type="CAUSAL_LM")
    with v4_targets(v4_layout):
        model = peft.get_peft_model(model, cfg)
    dest = OUT / f"{tag}-lora"
    if dest.exists():
        shutil.rmtree(dest)
    model.save_pretrained(dest / "adapter_init")
    # peft writes target_modules from a set, in an order that changes from run to run.
    cfg_path = dest / "adapter_init" / "adapter_config.json"
    saved = json.loads(cfg_path.read_text())
    if isinstance(saved["target_modules"], list):
        saved["target_modules"] = sorted(saved["target_modules"])
    cfg_path.write_text(json.dumps(saved, indent=2, sort_keys=True))
    # PEFT's saved key for a parameter: the adapter name ("default") dropped.
    names = [(n.replace(".default", ""), p) for n, p in model.named_parameters() if p.requires_grad]
    losses, norms, grads, after = run(model, names, input_ids, labels)
    write(dest, input_ids, labels, losses, norms, grads, after, names,
          {"base": str(model_dir.relative_to(ROOT)), "mode": "lora",
           "lora": {"r": 4, "lora_alpha": 8, "target_modules": targets},
           "versions_peft": peft.__version__})


def load_deepseek(model_dir):
    # The plain per-expert loop (not torch grouped_mm) and eager attention.
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager",
        experts_implementation="eager")
    # transformers 5 fuses the checkpoint's experts on load as cat(gate, up): check that the
    # split below is its inverse.
    ck = safe_open_all(model_dir / "model.safetensors")
    layer = model.config.first_k_dense_replace
    fused = model.model.layers[layer].mlp.experts.gate_up_proj
    f = model.config.moe_intermediate_size
    p = f"model.layers.{layer}.mlp.experts"
    assert torch.equal(fused[1, :f], ck[f"{p}.1.gate_proj.weight"])
    assert torch.equal(fused[1, f:], ck[f"{p}.1.up_proj.weight"])
    return model


def safe_open_all(path):
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def per_expert(model, tensors):
    """Fused expert tensors under the checkpoint's per-expert names:
    experts.gate_up_proj (X, 2F, E) -> experts.X.gate_proj.weight = [X, :F], up_proj = [X, F:];
    experts.down_proj (X, E, F) -> experts.X.down_proj.weight = [X]."""
    f = model.config.moe_intermediate_size
    out = {}
    for k, v in tensors.items():
        m = re.fullmatch(r"(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)", k)
        if m is None:
            out[k] = v
            continue
        for e in range(v.shape[0]):
            if m.group(2) == "down_proj":
                out[f"{m.group(1)}.{e}.down_proj.weight"] = v[e].contiguous()
            else:
                out[f"{m.group(1)}.{e}.gate_proj.weight"] = v[e, :f].contiguous()
                out[f"{m.group(1)}.{e}.up_proj.weight"] = v[e, f:].contiguous()
    return out


class PerExpert(torch.nn.ModuleList):
    """The routed experts as one DeepseekV3MLP each (module names experts.X.gate_proj, ...), as
    transformers 4 and DeepSeek's modeling code hold them; forward is transformers 5's
    DeepseekV3Experts.forward with the fused matrices replaced by each expert's Linear modules."""

    def __init__(self, fused, config):
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MLP

        f = config.moe_intermediate_size
        mlps = []
        for e in range(fused.num_experts):
            mlp = DeepseekV3MLP(config, intermediate_size=f)
            with torch.no_grad():
                mlp.gate_proj.weight.copy_(fused.gate_up_proj[e, :f])
                mlp.up_proj.weight.copy_(fused.gate_up_proj[e, f:])
                mlp.down_proj.weight.copy_(fused.down_proj[e])
            mlps.append(mlp)
        super().__init__(mlps)

    def forward(self, hidden_states, top_k_index, top_k_weights):
        n = len(self)
        final_hidden_states = torch.zeros_like(hidden_states)
        with torch.no_grad():
            expert_mask = torch.nn.functional.one_hot(top_k_index, num_classes=n + 1)
            expert_mask = expert_mask.permute(2, 1, 0)
            expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
        for expert_idx in expert_hit:
            expert_idx = expert_idx[0]
            if expert_idx == n:
                continue
            top_k_pos, token_idx = torch.where(expert_mask[expert_idx])
            current = self[expert_idx](hidden_states[token_idx])
            current = current * top_k_weights[token_idx, top_k_pos, None]
            final_hidden_states.index_add_(0, token_idx, current.to(final_hidden_states.dtype))
        return final_hidden_states


@contextlib.contextmanager
def v4_targets(on):
    """peft 0.21 on transformers 5 redirects targets named gate_proj / up_proj / down_proj to
    the fused expert parameters of MoE models (convert_peft_config_for_transformers). A model
    rebuilt with per-expert Linear modules (PerExpert) has the transformers 4 layout that
    conversion undoes, so for it the targets are taken as written, as peft does on v4."""
    if not on:
        yield
        return
    import peft.utils.transformers_weight_conversion as conv

    orig = conv.convert_peft_config_for_transformers
    conv.convert_peft_config_for_transformers = lambda *args, **kwargs: None
    try:
        yield
    finally:
        conv.convert_peft_config_for_transformers = orig


def load_deepseek_per_expert(model_dir):
    model = load_deepseek(model_dir)
    for layer in model.model.layers[model.config.first_k_dense_replace:]:
        layer.mlp.experts = PerExpert(layer.mlp.experts, model.config)
    return model


def schedules():
    out = {"base_lr": LR, "warmup": 3, "total": 10}
    for name in ("linear", "cosine", "constant_with_warmup"):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=LR)
        sched = transformers.get_scheduler(name, opt, num_warmup_steps=3, num_training_steps=10)
        lrs = []
        for _ in range(10):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        out[name] = lrs
    (OUT / "schedules.json").write_text(json.dumps(out, indent=1) + "\n")


def tiny_r1():
    torch.manual_seed(5)
    cfg = transformers.Qwen2Config(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=1)
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    dest = OUT / "tiny-r1-qwen2"
    if dest.exists():
        shutil.rmtree(dest)
    model.save_pretrained(dest, safe_serialization=True)
    src = ROOT / "tests" / "fixtures" / "deepseek" / "dsv3-qlora-yarn"
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(src / f, dest / f)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    tiny_r1()
    input_ids, labels = batch()
    full(GOLDEN / "tiny-llama", "llama", input_ids, labels)
    full(GOLDEN / "tiny-qwen2", "qwen2", input_ids, labels)
    lora(GOLDEN / "tiny-llama", "llama", ["q_proj", "v_proj"], input_ids, labels)
    lora(GOLDEN / "tiny-qwen2", "qwen2", "all-linear", input_ids, labels)
    qlora, noqlora = DEEPSEEK / "dsv3-qlora-yarn", DEEPSEEK / "dsv3-noqlora"
    full(qlora, "deepseek-qlora", input_ids, labels, load=load_deepseek, rename=per_expert)
    full(noqlora, "deepseek-noqlora", input_ids, labels, load=load_deepseek, rename=per_expert)
    lora(qlora, "deepseek-qlora", ["q_a_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"],
         input_ids, labels, load=load_deepseek)
    lora(noqlora, "deepseek-noqlora",
         ["q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", "gate_proj", "up_proj",
          "down_proj"],
         input_ids, labels, load=load_deepseek_per_expert, v4_layout=True)
    schedules()
    print("wrote", OUT)


if __name__ == "__main__":
    main()
