#!/usr/bin/env python3
"""Prefill and decode speed of `seek run` beside llama.cpp (through llama-cpp-python) on the same
GGUF file, thread count and prompt, measured in the same run.

    pip install llama-cpp-python          # builds llama.cpp from source
    cargo build --release -p seek-cli
    python3 tools/compare_speed.py models/Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf --threads 2

Prints medians over --repeats runs after one warm-up. `seek bench` (issue 3) will replace this.
"""
import argparse
import json
import os
import statistics
import subprocess
import time

TEXT = (
    "The history of mathematics deals with the origin of discoveries in mathematics and the mathematical "
    "methods and notation of the past. Before the modern age and the worldwide spread of knowledge, written "
    "examples of new mathematical developments have come to light only in a few locales. "
)


def prompt_of(llm, n_tokens):
    text = TEXT
    while len(llm.tokenize(text.encode(), add_bos=False)) < n_tokens:
        text += TEXT
    ids = llm.tokenize(text.encode(), add_bos=False)[:n_tokens]
    return llm.detokenize(ids).decode(errors="ignore")


def seek_once(binary, model, prompt, n_decode, threads):
    out = subprocess.run(
        [binary, "--threads", str(threads), "run", model, prompt, "--raw", "-t", "0", "-n", str(n_decode),
         "--ignore-eos", "--json"],
        check=True, capture_output=True, text=True,
    )
    j = json.loads(out.stdout)
    return j["usage"]["prompt_tokens"], j["timings"]["prefill_tokens_per_s"], j["timings"]["decode_tokens_per_s"]


def llama_once(llm, prompt, n_decode):
    ids = llm.tokenize(prompt.encode(), add_bos=False)
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    t1 = time.perf_counter()
    tok = int(llm.scores[llm.n_tokens - 1].argmax())
    t2 = time.perf_counter()
    for _ in range(n_decode - 1):
        llm.eval([tok])
        tok = int(llm.scores[llm.n_tokens - 1].argmax())
    t3 = time.perf_counter()
    return len(ids), len(ids) / (t1 - t0), (n_decode - 1) / (t3 - t2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seek", default=os.environ.get("SEEK_BIN", "target/release/seek"))
    a = ap.parse_args()

    from llama_cpp import Llama

    llm = Llama(model_path=a.model, n_threads=a.threads, n_threads_batch=a.threads, n_ctx=4096,
                n_batch=512, logits_all=True, verbose=False)
    prompt = prompt_of(llm, a.prompt_tokens)
    rows = {}
    for name, fn in [("llama.cpp", lambda: llama_once(llm, prompt, a.decode_tokens)),
                     ("seek", lambda: seek_once(a.seek, a.model, prompt, a.decode_tokens, a.threads))]:
        fn()  # warm-up
        runs = [fn() for _ in range(a.repeats)]
        rows[name] = (runs[0][0], statistics.median(r[1] for r in runs), statistics.median(r[2] for r in runs))
    base = rows["llama.cpp"]
    print(f"{os.path.basename(a.model)}, {a.threads} threads, medians of {a.repeats}")
    print(f"{'engine':<10} {'prompt':>6} {'prefill tok/s':>14} {'decode tok/s':>13}")
    for name, (n, pre, dec) in rows.items():
        print(f"{name:<10} {n:>6} {pre:>14.1f} {dec:>13.1f}   ({pre / base[1]:.2f}x, {dec / base[2]:.2f}x of llama.cpp)")


if __name__ == "__main__":
    main()
