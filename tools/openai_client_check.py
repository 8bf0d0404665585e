#!/usr/bin/env python3
"""Exercise a running `seek serve` with the official `openai` Python package.

Not run in CI. Start a server, then point this script at it:

    cargo run --release -p seek-cli -- serve tests/fixtures/deepseek/dsv3-qlora-yarn \
        --served-model-name tiny --api-key sk-check --max-running 2 --max-queue 2 &
    pip install openai
    python3 tools/openai_client_check.py --base-url http://127.0.0.1:8000/v1 --api-key sk-check --model tiny

Checks: model list; chat with usage, cost and DeepSeek's cache fields; streaming with reasoning deltas
equal to the non-streamed answer at temperature 0; `n > 1`; stop strings; seed determinism;
cache hits on a repeated prompt; 401 on a wrong key; 400 on an unknown model and on a context
overflow; 429 under a flood (needs a small --max-queue); a client that leaves mid-stream is
recorded as 499 and its sequence freed. Exits non-zero on the first failed check.
"""

import argparse
import concurrent.futures
import json
import sys
import time
import urllib.request

import openai

PROMPT = "Explain briefly why the sky looks blue on a clear afternoon."


def extra(obj, name):
    """A field the openai package does not declare (DeepSeek's and Seek's additions)."""
    value = getattr(obj, name, None)
    if value is None and getattr(obj, "model_extra", None):
        value = obj.model_extra.get(name)
    return value


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}")
        sys.exit(1)
    print(f"ok: {what}")


def metrics(base, key):
    req = urllib.request.Request(base.rsplit("/v1", 1)[0] + "/metrics",
                                 headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req) as r:
        return r.read().decode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--api-key", default="sk-check")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--skip-flood", action="store_true", help="skip the 429 check")
    a = ap.parse_args()
    client = openai.OpenAI(base_url=a.base_url, api_key=a.api_key, max_retries=0)
    greedy = dict(model=a.model, temperature=0, max_tokens=24)
    msgs = [{"role": "user", "content": PROMPT}]

    ids = [m.id for m in client.models.list()]
    check(a.model in ids, f"models.list has {a.model}: {ids}")

    r = client.chat.completions.create(messages=msgs, **greedy)
    u = r.usage
    check(r.object == "chat.completion" and r.id.startswith("chatcmpl-"), "chat completion object")
    check(u.total_tokens == u.prompt_tokens + u.completion_tokens, "total = prompt + completion")
    hit, miss = extra(u, "prompt_cache_hit_tokens"), extra(u, "prompt_cache_miss_tokens")
    check(hit + miss == u.prompt_tokens, "cache hit + miss = prompt")
    cost = extra(u, "cost_details")
    check(cost["currency"] == "USD" and abs(cost["total"] - cost["input_cache_hit"]
                                            - cost["input_cache_miss"] - cost["output"]) < 1e-12,
          f"cost adds up: {cost}")
    check(extra(u, "cost") == cost["total"], "usage.cost is the total in dollars")
    check(u.completion_tokens_details.reasoning_tokens <= u.completion_tokens, "reasoning tokens counted")
    whole = r.choices[0].message
    whole_reasoning = extra(whole, "reasoning_content") or ""

    stream = client.chat.completions.create(messages=msgs, stream=True,
                                            stream_options={"include_usage": True}, **greedy)
    reasoning, content, usage = "", "", None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            reasoning += extra(c.delta, "reasoning_content") or ""
            content += c.delta.content or ""
    check(reasoning == whole_reasoning and content == (whole.content or ""),
          "streamed deltas (reasoning and content) equal the non-streamed answer")
    check(usage is not None and usage.completion_tokens == u.completion_tokens, "usage chunk")

    again = client.chat.completions.create(messages=msgs, **greedy)
    check(extra(again.usage, "prompt_cache_hit_tokens") > 0, "a repeated prompt hits the prefix cache")

    r = client.chat.completions.create(messages=msgs, n=2, **greedy)
    check([c.index for c in r.choices] == [0, 1], "n = 2 gives two indexed choices")

    text = whole_reasoning or (whole.content or "")
    if len(text) >= 8:
        stop = text[len(text) // 2: len(text) // 2 + 2]
        r = client.chat.completions.create(messages=msgs, stop=[stop], **greedy)
        got = (extra(r.choices[0].message, "reasoning_content") or "") + (r.choices[0].message.content or "")
        check(stop not in got and r.choices[0].finish_reason == "stop", f"stop {stop!r} ends the output")

    seeded = dict(model=a.model, temperature=1.0, seed=7, max_tokens=16)
    r1 = client.chat.completions.create(messages=msgs, **seeded)
    r2 = client.chat.completions.create(messages=msgs, **seeded)
    check(r1.choices[0].message == r2.choices[0].message, "same seed, same answer")

    bad = openai.OpenAI(base_url=a.base_url, api_key="sk-wrong", max_retries=0)
    try:
        bad.chat.completions.create(messages=msgs, **greedy)
        check(False, "a wrong key is refused")
    except openai.AuthenticationError:
        check(True, "a wrong key is 401")
    try:
        client.chat.completions.create(messages=msgs, model="no-such-model", max_tokens=4)
        check(False, "an unknown model is refused")
    except openai.BadRequestError as e:
        check(e.code == "model_not_found", "an unknown model is 400 model_not_found")
    try:
        client.chat.completions.create(messages=msgs, model=a.model, max_tokens=10 ** 6)
        check(False, "a context overflow is refused")
    except openai.BadRequestError as e:
        check(e.code == "context_length_exceeded" and "maximum context length" in str(e),
              "a context overflow is 400 naming the limits")

    before = metrics(a.base_url, a.api_key).count('status="499"')
    s = client.chat.completions.create(messages=msgs, model=a.model, stream=True, max_tokens=200,
                                       extra_body={"ignore_eos": True})
    next(iter(s))
    s.close()
    for _ in range(500):
        m = metrics(a.base_url, a.api_key)
        if 'status="499"' in m and m.count('status="499"') >= before:
            break
        time.sleep(0.02)
    check('status="499"' in m, "a client that leaves mid-stream is recorded as 499")

    if not a.skip_flood:
        def one(_):
            try:
                client.chat.completions.create(messages=msgs, model=a.model, max_tokens=64,
                                               extra_body={"ignore_eos": True})
                return 200
            except openai.RateLimitError:
                return 429
        with concurrent.futures.ThreadPoolExecutor(16) as ex:
            codes = list(ex.map(one, range(32)))
        check(429 in codes and 200 in codes, f"a flood gets some 429s: {codes.count(429)} of {len(codes)}")
    print(json.dumps({"checks": "all passed"}))


if __name__ == "__main__":
    main()
