#!/usr/bin/env python3
"""`seek bench` beside llama.cpp on the same GGUF file, thread count, prompt lengths and decode
contexts, measured in the same run, with the same method: --warmup untimed runs, then the median
(and min/max) of --repeats timed runs.

    cargo build --release -p seek-cli
    python3 tools/bench_llama_cpp.py models/Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf --threads 2
    python3 tools/bench_llama_cpp.py MODEL --threads 2 --prefill 128,512 --decode-context 0,512 --json

It runs `seek --threads N bench MODEL --json` first (a subprocess; --seek names the binary), then
llama.cpp in this process, and prints one table: each figure for both engines, the ratio
seek/llama.cpp, and decode as a percentage of the memory-bandwidth bound that seek measured
(bandwidth / bytes a decode step reads, f16 KV cache for both).

llama.cpp comes from the `llama-cpp-python` package, driven through its low-level API:
prefill is `llm.reset(); llm.eval(ids)` (in batches of --n-batch, llama.cpp's usual way), time to
first token adds the argmax of the last logits; decode at context C evaluates C tokens untimed,
then times single-token `llm.eval([tok])` steps, each followed by the argmax of its logits, as
seek does. The ids are the same English text as seek's, encoded by llama.cpp's tokenizer.

Installing llama-cpp-python (it builds llama.cpp from source):

    pip install llama-cpp-python

On machines whose VM does not let user code configure AMX tiles (llama.cpp's AMX kernels then
die with a general-protection fault in `ldtilecfg`, in dmesg; seen on cloud Sapphire Rapids VMs),
build it without AMX. The GGML_AMX_* switches alone are not enough: the default GGML_NATIVE=ON
compiles with -march=native, which turns AMX back on. Name the instruction sets instead (these
suit a Sapphire Rapids; `llama_cpp.llama_print_system_info()` must then not list AMX_INT8):

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_FMA=ON \\
      -DGGML_F16C=ON -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON \\
      -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \\
      pip install --force-reinstall --no-deps --no-cache-dir llama-cpp-python

Check it with a tiny eval before trusting the numbers:

    python3 -c "from llama_cpp import Llama; l = Llama('models/SmolLM2-135M-Instruct-Q4_1.gguf', verbose=False); l.eval(list(range(1, 65))); print('ok')"
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# The same text seek bench encodes (crates/cli/src/bench.rs, TEXT); keep them identical.
TEXT = (
    "The history of mathematics deals with the origin of discoveries in mathematics and "
    "the mathematical methods and notation of the past. Before the modern age and the worldwide spread of "
    "knowledge, written examples of new mathematical developments have come to light only in a few locales. "
    "From 3000 BC the Mesopotamian states of Sumer, Akkad and Assyria, followed closely by Ancient Egypt and "
    "the Levantine state of Ebla, began using arithmetic, algebra and geometry for purposes of taxation, "
    "commerce, trade and also in the patterns in nature, the field of astronomy and to record time. "
)


def lengths(s):
    out = [int(x) for x in s.split(",") if x.strip()]
    if any(x < 0 for x in out):
        raise argparse.ArgumentTypeError("lengths must be 0 or more")
    return out


def stats(samples):
    """The same summary seek prints: median, min, max, mean, sample stdev, raw samples."""
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "mean": statistics.fmean(samples),
        "stdev": statistics.stdev(samples) if len(samples) > 1 else 0.0,
        "samples": samples,
    }


def proc_status_bytes(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run_seek(a):
    cmd = [a.seek, "--threads", str(a.threads), "bench", a.model, "--json",
           "--prefill", ",".join(map(str, a.prefill)),
           "--decode-context", ",".join(map(str, a.decode_context)),
           "--decode-tokens", str(a.decode_tokens), "--repeats", str(a.repeats), "--warmup", str(a.warmup)]
    if a.bandwidth_mib is not None:
        cmd += ["--bandwidth-mib", str(a.bandwidth_mib)]
    print("running:", " ".join(cmd), file=sys.stderr)
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"seek bench failed ({out.returncode}):\n{out.stderr}")
    return json.loads(out.stdout)


def run_llama_cpp(a, context):
    import numpy as np
    import llama_cpp
    from llama_cpp import Llama

    n = a.decode_tokens
    prefill_fits = [t for t in a.prefill if 0 < t <= context]
    decode_fits = [c for c in a.decode_context if c + n <= context]
    need = max(prefill_fits + [c + n for c in decode_fits] + [1])

    print(f"llama.cpp: loading with n_ctx={need}", file=sys.stderr)
    t0 = time.perf_counter()
    llm = Llama(model_path=a.model, n_threads=a.threads, n_threads_batch=a.threads, n_ctx=need,
                n_batch=a.n_batch, logits_all=False, verbose=False)
    load_s = time.perf_counter() - t0
    n_vocab = llm.n_vocab()

    copies = 1
    while True:
        ids = llm.tokenize((TEXT * copies).encode(), add_bos=False, special=False)
        if len(ids) >= need:
            break
        copies = copies * 2
    ids = ids[:need]

    def last_argmax():
        # With logits_all=False only the last position of a batch has logits.
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return int(np.ctypeslib.as_array(ptr, shape=(n_vocab,)).argmax())

    prefill = []
    for t in a.prefill:
        if t not in prefill_fits:
            prefill.append({"tokens": t, "skipped": f"{t} tokens do not fit in the context of {context}"})
            continue
        secs, ttft = [], []
        for run in range(a.warmup + a.repeats):
            print(f"llama.cpp prefill {t}: run {run + 1}", file=sys.stderr)
            llm.reset()
            s = time.perf_counter()
            llm.eval(ids[:t])
            f = time.perf_counter()
            last_argmax()
            e = time.perf_counter()
            if run >= a.warmup:
                secs.append(f - s)
                ttft.append(e - s)
        prefill.append({"tokens": t, "skipped": None, "tokens_per_s": stats([t / s for s in secs]),
                        "seconds": stats(secs), "time_to_first_token_s": stats(ttft)})

    decode = []
    for c in a.decode_context:
        if c not in decode_fits:
            decode.append({"context": c, "tokens": n,
                           "skipped": f"a context of {c} plus {n} decoded tokens does not fit in {context}"})
            continue
        llm.reset()
        if c > 0:
            print(f"llama.cpp decode {c}: filling the KV cache", file=sys.stderr)
            llm.eval(ids[:c])
            first = last_argmax()
        else:
            first = ids[0]
        secs = []
        for run in range(a.warmup + a.repeats):
            print(f"llama.cpp decode {c}: run {run + 1}", file=sys.stderr)
            llm.n_tokens = c  # eval() drops every cached position from n_tokens on
            tok = first
            s = time.perf_counter()
            for _ in range(n):
                llm.eval([tok])
                tok = last_argmax()
            e = time.perf_counter()
            if run >= a.warmup:
                secs.append(e - s)
        decode.append({"context": c, "tokens": n, "skipped": None,
                       "tokens_per_s": stats([n / s for s in secs]),
                       "ms_per_token": stats([1e3 * s / n for s in secs])})

    return {
        "version": getattr(llama_cpp, "__version__", "?"),
        "threads": a.threads,
        "n_batch": a.n_batch,
        "n_ctx": need,
        "load_s": load_s,
        "prefill": prefill,
        "decode": decode,
        "memory": {"peak_rss_bytes": proc_status_bytes("VmHWM")},
    }


def attach_bounds(seek, llama):
    """llama.cpp's bound: seek's bandwidth over the same weights plus an f16 KV cache."""
    bw = seek.get("bandwidth")
    if not bw:
        return
    weights = seek["decode_weight_bytes_per_token"]
    kv_f16 = seek["kv_bytes_per_token"]  # seek keeps an f16 cache for GGUF files, as llama.cpp
    for d in llama["decode"]:
        if d.get("skipped"):
            continue
        positions = d["context"] + (d["tokens"] + 1) / 2  # mean positions a timed step attends to
        d["bytes_read_per_token"] = int(weights + kv_f16 * positions)
        d["bound_tokens_per_s"] = bw["gb_per_s"] * 1e9 / d["bytes_read_per_token"]
        d["percent_of_bound"] = 100 * d["tokens_per_s"]["median"] / d["bound_tokens_per_s"]


def fmt(x, digits=3):
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{max(0, digits - 1 - int(f'{abs(x):e}'.split('e')[1]))}f}" if x else "0"


def cell(s, scale=1.0):
    if s is None:
        return "-"
    if s["min"] == s["max"]:
        return fmt(s["median"] * scale)
    return f"{fmt(s['median'] * scale)} [{fmt(s['min'] * scale)}-{fmt(s['max'] * scale)}]"


def print_table(seek, llama, a):
    m = seek["model"]
    print(f"{os.path.basename(a.model)} ({m['architecture']}, {m['parameters'] / 1e6:.0f}M parameters), "
          f"{a.threads} threads, median [min-max] of {a.repeats} runs after {a.warmup} warm-up")
    print(f"seek {seek['seek_version']} (ids from {seek['token_source']}), "
          f"llama.cpp via llama-cpp-python {llama['version']} (n_batch {llama['n_batch']})")
    bw = seek.get("bandwidth")
    if bw:
        print(f"memory bandwidth {bw['gb_per_s']:.1f} GB/s (seek, {bw['threads']} threads); "
              f"a decode step reads {seek['decode_weight_bytes_per_token'] / 2**20:.1f} MiB of weights")
    print()
    rows = []

    def row(name, s, l, scale=1.0, higher_is_better=True, extra_s="", extra_l=""):
        ratio = None
        if s is not None and l is not None and l["median"]:
            ratio = s["median"] / l["median"]
        note = "" if ratio is None else ("(higher is better)" if higher_is_better else "(lower is better)")
        rows.append((name, cell(s, scale) + extra_s, cell(l, scale) + extra_l,
                     "-" if ratio is None else f"{ratio:.2f}x", note))

    one = lambda x: {"median": x, "min": x, "max": x} if x is not None else None
    row("load (s)", one(seek["load_s"]), one(llama["load_s"]), higher_is_better=False)
    for sp, lp in zip(seek["prefill"], llama["prefill"]):
        t = sp["tokens"]
        if sp.get("skipped") or lp.get("skipped"):
            rows.append((f"prefill {t}", "skipped", "skipped", "-", sp.get("skipped") or lp.get("skipped")))
            continue
        row(f"prefill {t} (tok/s)", sp["tokens_per_s"], lp["tokens_per_s"])
        row(f"TTFT {t} (ms)", sp["time_to_first_token_s"], lp["time_to_first_token_s"], 1e3, False)
    for sd, ld in zip(seek["decode"], llama["decode"]):
        c = sd["context"]
        if sd.get("skipped") or ld.get("skipped"):
            rows.append((f"decode @{c}", "skipped", "skipped", "-", sd.get("skipped") or ld.get("skipped")))
            continue
        pct = lambda d: f" {d['percent_of_bound']:.0f}%" if d.get("percent_of_bound") is not None else ""
        row(f"decode @{c} (tok/s, % bound)", sd["tokens_per_s"], ld["tokens_per_s"],
            extra_s=pct(sd), extra_l=pct(ld))
    mib = 1 / 2**20
    row("peak RSS (MiB)", one(seek["memory"]["peak_rss_bytes"]), one(llama["memory"]["peak_rss_bytes"]),
        mib, False)
    widths = [max(len(r[i]) for r in rows + [("figure", "seek", "llama.cpp", "seek/llama.cpp", "")])
              for i in range(4)]
    header = ("figure", "seek", "llama.cpp", "seek/llama.cpp")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(x.ljust(w) for x, w in zip(r[:4], widths)) + "  " + r[4])
    print()
    print(f"model file {seek['memory']['model_file_bytes'] * mib:.1f} MiB; "
          f"seek's largest KV cache {seek['memory']['kv_cache_peak_bytes'] * mib:.1f} MiB; "
          f"llama.cpp's peak RSS includes the Python interpreter")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", type=lengths, default=[128, 512, 2048])
    ap.add_argument("--decode-context", type=lengths, default=[0, 512, 2048])
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--n-batch", type=int, default=512)
    ap.add_argument("--bandwidth-mib", type=int, default=None, help="passed to seek bench")
    ap.add_argument("--seek", default=os.environ.get("SEEK_BIN", "target/release/seek"))
    ap.add_argument("--json", action="store_true", help="print {seek, llama_cpp} as JSON")
    a = ap.parse_args()
    if a.threads < 1 or a.decode_tokens < 1 or a.repeats < 1 or a.warmup < 0:
        ap.error("--threads, --decode-tokens and --repeats must be at least 1, --warmup 0 or more")
    if not os.path.isfile(a.model):
        ap.error(f"{a.model}: no such GGUF file")

    seek = run_seek(a)
    llama = run_llama_cpp(a, seek["model"]["context_length"])
    attach_bounds(seek, llama)
    if a.json:
        print(json.dumps({"seek": seek, "llama_cpp": llama}, indent=1))
    else:
        print_table(seek, llama, a)


if __name__ == "__main__":
    main()
