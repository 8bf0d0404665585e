#!/usr/bin/env python3
"""Concurrent streamed chat requests against a running `seek serve`: total tokens/s and mean
time to first token at each concurrency, as the server issue's note reports them.

    cargo build --release -p seek-cli
    target/release/seek serve models/SmolLM2-135M-Instruct-Q4_1.gguf --port 8123 --served-model-name smol &
    python3 tools/serve_load.py --url http://127.0.0.1:8123 --model smol --concurrency 1,4,8 --tokens 64

Standard library only. Each request asks for `--tokens` tokens with `ignore_eos`, greedy.
"""
import argparse
import concurrent.futures
import json
import time
import urllib.request


def one(args, i):
    body = json.dumps({
        "model": args.model,
        "messages": [{"role": "user", "content": f"Write a short story about robot number {i}."}],
        "max_tokens": args.tokens, "temperature": 0, "ignore_eos": True,
        "stream": True, "stream_options": {"include_usage": True},
    }).encode()
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    req = urllib.request.Request(f"{args.url}/v1/chat/completions", data=body, headers=headers)
    t0, ttft, usage = time.time(), None, None
    with urllib.request.urlopen(req) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            delta = ev["choices"][0]["delta"] if ev.get("choices") else {}
            if ttft is None and (delta.get("content") or delta.get("reasoning_content")):
                ttft = time.time() - t0
            if ev.get("usage"):
                usage = ev["usage"]
    return ttft or 0.0, usage


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", required=True)
    ap.add_argument("--api-key")
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    for c in [int(x) for x in args.concurrency.split(",")]:
        t0 = time.time()
        with concurrent.futures.ThreadPoolExecutor(c) as ex:
            res = list(ex.map(lambda i: one(args, i), range(c)))
        wall = time.time() - t0
        toks = sum(u["completion_tokens"] for _, u in res)
        hits = sum(u.get("prompt_cache_hit_tokens", 0) for _, u in res)
        prompt = sum(u["prompt_tokens"] for _, u in res)
        print(f"concurrency {c}: {toks} tokens in {wall:.2f} s = {toks / wall:.1f} tok/s in total; "
              f"mean time to first token {1000 * sum(t for t, _ in res) / c:.0f} ms; "
              f"prompt cache hits {hits}/{prompt} tokens")


if __name__ == "__main__":
    main()
