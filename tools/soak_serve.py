#!/usr/bin/env python3
"""Soak test of `seek serve`: mixed traffic and a slowloris at once, for --minutes.

Starts the server itself (so it can watch its memory and open files), then runs together:
non-streamed chat, streamed chat of which a third is cancelled mid-stream by closing the
connection, legacy completions, bad requests (malformed JSON, unknown model, a 9 MB body,
negative max_tokens) and a slowloris (--slow connections that send a header byte by byte).
Prints requests served and errors by kind, the server's RSS at start / peak / end and its open
files at the end, and writes --json.

    cargo build --release -p seek-cli
    python3 tools/soak_serve.py models/SmolLM2-135M-Instruct-Q4_1.gguf --minutes 30

Standard library only.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def seek_bin(arg):
    if arg:
        return arg
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    return str(Path(target) / "release" / "seek")


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.Counter()

    def add(self, key):
        with self.lock:
            self.counts[key] += 1


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_files(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def post(url, body, timeout=120, raw=None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code


def worker(kind, base, model, stop, tally, n):
    i = 0
    while not stop.is_set():
        i += 1
        msg = [{"role": "user", "content": f"Tell me one fact about the number {n * 1000 + i}."}]
        try:
            if kind == "chat":
                s = post(f"{base}/v1/chat/completions", {"model": model, "messages": msg, "max_tokens": 24})
                tally.add(f"chat {s}")
            elif kind == "completion":
                s = post(f"{base}/v1/completions", {"model": model, "prompt": f"Count to {i % 9}:", "max_tokens": 16})
                tally.add(f"completion {s}")
            elif kind == "stream":
                body = json.dumps({"model": model, "messages": msg, "max_tokens": 32, "stream": True}).encode()
                req = urllib.request.Request(f"{base}/v1/chat/completions", data=body,
                                             headers={"Content-Type": "application/json"})
                cancel = i % 3 == 0
                with urllib.request.urlopen(req, timeout=120) as r:
                    lines = 0
                    for line in r:
                        if line.startswith(b"data: "):
                            lines += 1
                        if cancel and lines == 3:
                            break
                tally.add("stream cancelled" if cancel else f"stream {r.status}")
            elif kind == "bad":
                which = i % 4
                if which == 0:
                    s = post(f"{base}/v1/chat/completions", None, raw=b'{"model": ')
                elif which == 1:
                    s = post(f"{base}/v1/chat/completions", {"model": "nope", "messages": msg})
                elif which == 2:
                    s = post(f"{base}/v1/chat/completions", None, raw=b"x" * (9 << 20))
                else:
                    s = post(f"{base}/v1/chat/completions", {"model": model, "messages": msg, "max_tokens": -5})
                tally.add(f"bad {s}")
                time.sleep(0.2)
        except Exception as e:  # noqa: BLE001 - every failure is counted by kind
            tally.add(f"{kind} error {type(e).__name__}")
            time.sleep(0.2)


def slowloris(host, port, n, stop, tally):
    socks = []
    while not stop.is_set():
        while len(socks) < n and not stop.is_set():
            try:
                s = socket.create_connection((host, port), timeout=5)
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                socks.append(s)
                tally.add("slowloris opened")
            except OSError:
                tally.add("slowloris connect failed")
                time.sleep(0.1)
                break
        alive = []
        for s in socks:
            try:
                s.sendall(b"X-a: b\r\n")
                alive.append(s)
            except OSError:
                tally.add("slowloris closed by server")
                s.close()
        socks = alive
        time.sleep(1.0)
    for s in socks:
        s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--seek")
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--slow", type=int, default=300, help="slowloris connections kept open")
    ap.add_argument("--json", default="soak.json")
    a = ap.parse_args()
    server = subprocess.Popen([seek_bin(a.seek), "serve", a.model, "--port", str(a.port),
                               "--served-model-name", "m"], stderr=open(a.json + ".server.log", "w"))
    base = f"http://127.0.0.1:{a.port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except Exception:  # noqa: BLE001
            time.sleep(0.5)
    else:
        server.kill()
        sys.exit("the server never became ready")
    pid = server.pid
    rss_start = rss_kib(pid)
    rss_peak = rss_start
    tally, stop = Tally(), threading.Event()
    threads = [threading.Thread(target=worker, args=(k, base, "m", stop, tally, n), daemon=True)
               for n, k in enumerate(["chat", "chat", "stream", "stream", "completion", "bad"])]
    threads.append(threading.Thread(target=slowloris, args=("127.0.0.1", a.port, a.slow, stop, tally),
                                     daemon=True))
    for t in threads:
        t.start()
    health_worst = 0.0
    t0 = time.time()
    while time.time() - t0 < a.minutes * 60:
        time.sleep(5)
        rss_peak = max(rss_peak, rss_kib(pid))
        h = time.time()
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=10) as r:
                tally.add(f"health {r.status}")
        except Exception as e:  # noqa: BLE001
            tally.add(f"health error {type(e).__name__}")
        health_worst = max(health_worst, time.time() - h)
        print(f"{(time.time() - t0) / 60:5.1f} min  rss {rss_kib(pid) / 1024:7.1f} MiB  "
              f"files {open_files(pid):5d}  served {sum(v for k, v in tally.counts.items() if k.endswith(' 200'))}",
              flush=True)
    stop.set()
    for t in threads:
        t.join(timeout=150)
    time.sleep(20)  # let timeouts close what the clients left
    result = {
        "minutes": a.minutes,
        "counts": dict(sorted(tally.counts.items())),
        "rss_mib": {"start": rss_start / 1024, "peak": rss_peak / 1024, "end": rss_kib(pid) / 1024},
        "open_files_end": open_files(pid),
        "health_worst_s": health_worst,
    }
    server.terminate()
    server.wait(timeout=60)
    result["exit_code"] = server.returncode
    print(json.dumps(result, indent=1))
    Path(a.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
