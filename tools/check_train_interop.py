#!/usr/bin/env python3
"""What `seek train` writes loads in the tools users own, with the same numbers.

  1. LoRA: `seek train sft --use_peft` on the miniature R1-Distill-Qwen
     (tests/fixtures/train/tiny-r1-qwen2); Python `peft` loads the adapter folder
     (PeftModel.from_pretrained) and its logits equal `seek logits --lora` (1e-4).
  2. Full fine-tuning: transformers loads the output folder (from_pretrained) and its logits
     equal `seek logits` on the same folder (1e-4).
  3. GGUF (with --gguf MODEL.gguf, e.g. the SmolLM2 sample): a LoRA run on the GGUF model,
     `seek train export --gguf` merges it into an F16 GGUF, and llama.cpp (llama-cpp-python)
     gives the same greedy tokens as `seek run` on that file.

    cargo build --release -p seek-cli
    python3 tools/check_train_interop.py [--gguf models/SmolLM2-135M-Instruct-Q4_1.gguf]

Needs torch, transformers, peft, numpy (and llama-cpp-python for 3). SEEK_BIN or --seek
names the binary. Exits non-zero on any mismatch.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "train" / "tiny-r1-qwen2"
IDS = [0, 5, 17, 200, 3, 42, 7, 250, 11]


def seek_bin(arg):
    if arg:
        return arg
    if os.environ.get("SEEK_BIN"):
        return os.environ["SEEK_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    return str(Path(target) / "release" / "seek")


def sh(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{p.stderr}")
    return p.stdout


def data(path, n=12):
    with open(path, "w") as f:
        for i in range(n):
            a, b = i % 7 + 1, i % 5 + 2
            f.write(json.dumps({"messages": [
                {"role": "user", "content": f"{a}+{b}?"},
                {"role": "assistant", "reasoning_content": f"{a} plus {b}", "content": str(a + b)}]}) + "\n")


def seek_logits(seek, model, out, lora=None):
    cmd = [seek, "logits", str(model), "--tokens", ",".join(map(str, IDS)), "--out", str(out)]
    if lora:
        cmd += ["--lora", str(lora)]
    sh(cmd)
    return np.load(out)


def torch_logits(model):
    import torch
    with torch.no_grad():
        return model(input_ids=torch.tensor([IDS])).logits[0].float().numpy()


def check(name, a, b, tol):
    d = float(np.abs(a - b).max())
    ok = d <= tol
    print(f"{'ok  ' if ok else 'FAIL'} {name}: max |logit diff| {d:.2e} (tolerance {tol:g})")
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seek")
    ap.add_argument("--gguf", help="also check the GGUF export with llama.cpp on this model")
    a = ap.parse_args()
    seek = seek_bin(a.seek)
    import peft
    import torch
    import transformers

    torch.set_num_threads(2)
    ok = True
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        data(d / "d.jsonl")
        common = ["--dataset_name", str(d / "d.jsonl"), "--max_steps", "5", "--learning_rate", "5e-3",
                  "--per_device_train_batch_size", "4", "--max_length", "64", "--logging_steps", "0"]
        # 1. LoRA -> peft
        sh([seek, "train", "sft", "--model_name_or_path", str(TINY), "--output_dir", str(d / "lora"),
            "--use_peft", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "all-linear"] + common)
        base = transformers.AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32).eval()
        pm = peft.PeftModel.from_pretrained(base, d / "lora").eval()
        ok &= check("peft loads the LoRA adapter", torch_logits(pm),
                    seek_logits(seek, TINY, d / "l.npy", d / "lora"), 1e-4)
        # 2. full -> transformers
        sh([seek, "train", "sft", "--model_name_or_path", str(TINY), "--output_dir", str(d / "full")] + common)
        full = transformers.AutoModelForCausalLM.from_pretrained(d / "full", dtype=torch.float32).eval()
        ok &= check("transformers loads the full checkpoint", torch_logits(full),
                    seek_logits(seek, d / "full", d / "f.npy"), 1e-4)
        # 3. GGUF export -> llama.cpp
        if a.gguf:
            from llama_cpp import Llama

            gdata = d / "g.jsonl"
            data(gdata, 16)
            sh([seek, "train", "sft", "--model_name_or_path", a.gguf, "--output_dir", str(d / "glora"),
                "--use_peft", "--lora_r", "8", "--lora_alpha", "16", "--dataset_name", str(gdata),
                "--max_steps", "3", "--learning_rate", "1e-3", "--per_device_train_batch_size", "4",
                "--max_length", "128", "--logging_steps", "0"])
            out = d / "merged.gguf"
            sh([seek, "train", "export", "--base", a.gguf, "--lora", str(d / "glora"), "--gguf", str(out)])
            prompt = "The capital of France is"
            ours = json.loads(sh([seek, "run", str(out), prompt, "--raw", "--temperature", "0",
                                  "--max-tokens", "16", "--json"]))
            llm = Llama(model_path=str(out), n_ctx=256, n_threads=2, verbose=False, logits_all=False)
            theirs = llm.create_completion(prompt, max_tokens=16, temperature=0.0, top_k=1)
            a_text, b_text = ours.get("content", ours.get("text", "")), theirs["choices"][0]["text"]
            same = a_text == b_text
            print(f"{'ok  ' if same else 'FAIL'} llama.cpp runs the exported GGUF: seek {a_text!r} / llama.cpp {b_text!r}")
            ok &= same
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
