#!/usr/bin/env python3
"""Training speed and peak memory: `seek train sft` beside transformers + peft, same run.

Both fine-tune the same model (a GGUF file, dequantized to f32 by each: transformers reads it
with gguf_file=...), on the same token sequences of exactly --seq-len tokens (every token
learned), batch --batch, --threads CPU threads, AdamW, for --steps optimizer steps; full
fine-tuning and LoRA (r 16, alpha 32, --lora-targets), and Seek's LoRA over the GGUF base kept
quantized (qlora; PyTorch has no CPU counterpart). Tokens/s is the median over the steps
after the first (warm-up); peak memory is the process's maximum RSS. Prints a table with the
ratios seek / PyTorch and writes --json.

    cargo build --release -p seek-cli
    python3 tools/bench_train_torch.py models/SmolLM2-135M-Instruct-Q4_1.gguf --threads 2

Needs torch, transformers, peft and gguf (pip). SEEK_BIN or --seek names the binary.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def seek_bin(arg):
    if arg:
        return arg
    if os.environ.get("SEEK_BIN"):
        return os.environ["SEEK_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    return str(Path(target) / "release" / "seek")


def make_data(model, seq_len, n, path):
    """n texts that the model's tokenizer turns into more than seq_len tokens (truncated to it)."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(Path(model).parent), gguf_file=Path(model).name)
    words = ("the quick brown fox jumps over the lazy dog while seventeen engineers "
             "measure training speed on two cores and write down every number they see").split()
    rows, seqs = [], []
    for i in range(n):
        text = " ".join(words[(i * 7 + j) % len(words)] for j in range(seq_len * 2))
        ids = tok(text, add_special_tokens=True)["input_ids"][:seq_len]
        rows.append({"text": text})
        seqs.append(ids)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return seqs


def run_seek(binary, model, data, out, a, lora, quantized=False):
    cmd = [binary, "--threads", str(a.threads), "train", "sft", "--model_name_or_path", model,
           "--dataset_name", data, "--output_dir", out, "--max_steps", str(a.steps),
           "--per_device_train_batch_size", str(a.batch), "--max_length", str(a.seq_len),
           "--overlong", "truncate", "--completion_only_loss", "false", "--learning_rate", "1e-5",
           "--save_steps", "0", "--logging_steps", "0"]
    if lora:
        cmd += ["--use_peft", "--lora_r", "16", "--lora_alpha", "32", "--lora_dropout", "0",
                "--lora_target_modules", a.lora_targets]
    if quantized:
        cmd += ["--quantized_base"]
    t = time.time()
    p = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"seek failed:\n{p.stderr}")
    peak_kib = int(p.stderr.strip().splitlines()[-1])
    recs = [json.loads(l) for l in open(Path(out) / "metrics.jsonl")]
    tps = statistics.median(r["tokens_per_second"] for r in recs[1:])
    return {"tokens_per_second": tps, "peak_rss_mib": peak_kib / 1024, "wall_s": time.time() - t,
            "losses": [r["loss"] for r in recs]}


TORCH_CHILD = r'''
import json, resource, statistics, sys, time
import torch, transformers
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"]); torch.manual_seed(0)
from pathlib import Path
m = Path(cfg["model"])
model = transformers.AutoModelForCausalLM.from_pretrained(str(m.parent), gguf_file=m.name, dtype=torch.float32)
model.config._attn_implementation = cfg["attn"]
if cfg["lora"]:
    import peft
    model = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
        target_modules=cfg["targets"], task_type="CAUSAL_LM"))
model.train()
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-5)
seqs = cfg["seqs"]; b = cfg["batch"]; times = []; losses = []
for step in range(cfg["steps"]):
    batch = torch.tensor(seqs[(step * b) % len(seqs):(step * b) % len(seqs) + b])
    t = time.time()
    out = model(input_ids=batch, labels=batch)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step(); opt.zero_grad()
    times.append(time.time() - t); losses.append(out.loss.item())
tok = b * len(seqs[0])
print(json.dumps({"tokens_per_second": statistics.median(tok / x for x in times[1:]),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "losses": losses}))
'''


def run_torch(model, seqs, a, lora):
    cfg = {"model": model, "seqs": seqs, "batch": a.batch, "steps": a.steps, "threads": a.threads,
           "lora": lora, "targets": a.lora_targets.split(","), "attn": a.attn}
    t = time.time()
    p = subprocess.run([sys.executable, "-c", TORCH_CHILD, json.dumps(cfg)], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"torch failed:\n{p.stderr}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["wall_s"] = time.time() - t
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--seek")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--lora-targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    ap.add_argument("--attn", default="sdpa", help="transformers attention implementation (sdpa, eager)")
    ap.add_argument("--modes", default="full,lora,qlora",
                    help="full, lora (both beside PyTorch), qlora (Seek only: LoRA over the GGUF base kept quantized)")
    ap.add_argument("--json", default="bench-train.json")
    a = ap.parse_args()
    binary = seek_bin(a.seek)
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        data = str(Path(d) / "data.jsonl")
        seqs = make_data(a.model, a.seq_len, max(a.steps * a.batch, 8), data)
        for mode in a.modes.split(","):
            lora = mode in ("lora", "qlora")
            s = run_seek(binary, a.model, data, str(Path(d) / f"out-{mode}"), a, lora, mode == "qlora")
            if mode == "qlora":
                rows[mode] = {"seek": s}
                print(f"{mode:5} seek {s['tokens_per_second']:8.1f} tok/s {s['peak_rss_mib']:7.0f} MiB "
                      f"(LoRA over the quantized GGUF base; no PyTorch counterpart run)", flush=True)
                continue
            t = run_torch(a.model, seqs, a, lora)
            rows[mode] = {"seek": s, "torch": t}
            print(f"{mode:5} seek {s['tokens_per_second']:8.1f} tok/s {s['peak_rss_mib']:7.0f} MiB | "
                  f"torch {t['tokens_per_second']:8.1f} tok/s {t['peak_rss_mib']:7.0f} MiB | "
                  f"speed {s['tokens_per_second'] / t['tokens_per_second']:.2f}x, "
                  f"memory {s['peak_rss_mib'] / t['peak_rss_mib']:.2f}x | "
                  f"first losses seek {s['losses'][0]:.4f} torch {t['losses'][0]:.4f}", flush=True)
    meta = {"model": a.model, "threads": a.threads, "seq_len": a.seq_len, "batch": a.batch,
            "steps": a.steps, "lora_targets": a.lora_targets, "torch_attn": a.attn}
    Path(a.json).write_text(json.dumps({"settings": meta, "results": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
