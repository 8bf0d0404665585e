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

and tests/fixtures/train/schedules.json: learning rates of transformers' linear, cosine and
constant-with-warmup schedules (warmup 3 of 10 steps).

The loss is what transformers' Trainer computes with gradient accumulation: the sum of the
token cross-entropies over the batch divided by the number of supervised tokens. Each step:
clip_grad_norm_(1.0), then torch.optim.AdamW (lr 1e-3, betas (0.9, 0.999), eps 1e-4 (see EPS),
weight_decay 0.1 on every parameter except biases and norms, as the Trainer groups them).

Deterministic (fixed seeds, 1 thread, float32). Re-run with
    python3 tools/make_train_golden.py
"""
from __future__ import annotations

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


def full(model_dir, tag, input_ids, labels):
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config._attn_implementation = "eager"
    names = [(n, p) for n, p in model.named_parameters()]
    losses, norms, grads, after = run(model, names, input_ids, labels)
    write(OUT / f"{tag}-full", input_ids, labels, losses, norms, grads, after, names,
          {"base": str(model_dir.relative_to(ROOT)), "mode": "full"})


def lora(model_dir, tag, targets, input_ids, labels):
    import peft

    torch.manual_seed(11)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config._attn_implementation = "eager"
    cfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets,
                          init_lora_weights=False, task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, cfg)
    dest = OUT / f"{tag}-lora"
    if dest.exists():
        shutil.rmtree(dest)
    model.save_pretrained(dest / "adapter_init")
    # PEFT's saved key for a parameter: the adapter name ("default") dropped.
    names = [(n.replace(".default", ""), p) for n, p in model.named_parameters() if p.requires_grad]
    losses, norms, grads, after = run(model, names, input_ids, labels)
    write(dest, input_ids, labels, losses, norms, grads, after, names,
          {"base": str(model_dir.relative_to(ROOT)), "mode": "lora",
           "lora": {"r": 4, "lora_alpha": 8, "target_modules": targets},
           "versions_peft": peft.__version__})


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


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    input_ids, labels = batch()
    full(GOLDEN / "tiny-llama", "llama", input_ids, labels)
    full(GOLDEN / "tiny-qwen2", "qwen2", input_ids, labels)
    lora(GOLDEN / "tiny-llama", "llama", ["q_proj", "v_proj"], input_ids, labels)
    lora(GOLDEN / "tiny-qwen2", "qwen2", "all-linear", input_ids, labels)
    schedules()
    print("wrote", OUT)


if __name__ == "__main__":
    main()
