#!/usr/bin/env python3
"""Adds the I-quants (IQ4_NL, IQ4_XS, IQ3_S, IQ3_XXS, IQ2_S, IQ2_XS, IQ2_XXS, IQ1_M, IQ1_S) and the
ternary TQ1_0 / TQ2_0 to tests/fixtures/golden/gguf/quant-blocks.gguf (written by
tools/make_golden.py): each type's tensor of the same 2 x 512 `source` data, and `T.expected`, its
decoding by gguf-py's `gguf.quants.dequantize` (llama.cpp's reference decoder), which Seek's
`dequantize_row` must match bit for bit (crates/kernels/tests/golden.rs).

gguf-py decodes the I-quants but does not encode them, so the blocks are encoded here by a plain
quantizer (per block: the scale that maps the largest magnitude to the grid's end, then the
nearest grid value; IQ4_XS's 6-bit sub-block scales relative to the super-block's). Any valid
bytes serve the decoder test; these are also close to the source (the error is printed).

    python3 tools/make_golden.py && python3 tools/make_iquant_blocks.py
    python3 tools/make_iquant_blocks.py --imix   # the mixed IQ4 model file and its reference
"""
import json
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader, GGUFWriter

ROOT = Path(__file__).resolve().parent.parent
PATH = ROOT / "tests/fixtures/golden/gguf/quant-blocks.gguf"
GOLDEN = ROOT / "tests/fixtures/golden/gguf/quant-blocks.golden.json"

NEW = {"IQ4_NL", "IQ4_XS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M",
       "TQ1_0", "TQ2_0"}

# The IQ4 grid (the format's definition).
GRID = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113],
                dtype=np.float32)


def nearest(v):
    return np.abs(v[:, None] - GRID[None, :]).argmin(axis=1)


def pack(idx):  # 32 indices -> 16 bytes: low nibbles the first half, high the second
    return (idx[:16] | (idx[16:] << 4)).astype(np.uint8)


def iq4_nl(row):
    out = bytearray()
    for b in row.reshape(-1, 32):
        m = b[np.abs(b).argmax()]
        d = np.float16(m / -127.0) if m != 0 else np.float16(0)
        q = nearest(b / np.float32(d)) if d != 0 else np.full(32, 8)
        out += d.tobytes() + pack(q).tobytes()
    return bytes(out)


def iq4_xs(row):
    out = bytearray()
    for sb in row.reshape(-1, 256):
        subs = sb.reshape(8, 32)
        s = np.array([b[np.abs(b).argmax()] / -127.0 for b in subs], dtype=np.float32)
        d = np.float16(np.abs(s).max() / 31.0) if np.abs(s).max() > 0 else np.float16(0)
        ls = np.clip(np.round(s / np.float32(d)), -32, 31).astype(np.int32) if d != 0 else np.zeros(8, np.int32)
        scales_h = 0
        scales_l = bytearray(4)
        qs = bytearray()
        for ib in range(8):
            l6 = int(ls[ib]) + 32
            scales_l[ib // 2] |= (l6 & 0xF) << (4 * (ib % 2))
            scales_h |= (l6 >> 4) << (2 * ib)
            dl = np.float32(d) * ls[ib]
            q = nearest(subs[ib] / dl) if dl != 0 else np.full(32, 8)
            qs += pack(q).tobytes()
        out += d.tobytes() + np.uint16(scales_h).tobytes() + bytes(scales_l) + bytes(qs)
    return bytes(out)


# Byte offsets of the f16 scale fields per type (IQ1_M spreads its scale over 4 words).
D_FIELDS = {QT.IQ2_XXS: [0], QT.IQ2_XS: [0], QT.IQ2_S: [0], QT.IQ3_XXS: [0], QT.IQ3_S: [0],
            QT.IQ1_S: [0], QT.TQ1_0: [52], QT.TQ2_0: [64]}
LOW_BIT = [QT.IQ2_XXS, QT.IQ2_XS, QT.IQ2_S, QT.IQ3_XXS, QT.IQ3_S, QT.IQ1_S, QT.IQ1_M]


def random_blocks(qt, rows, cols, rng):
    """Random bytes of `rows` x `cols` elements of `qt` with finite, moderate scales: every
    byte pattern of the low-bit I-quants is a valid encoding (all indices are in range)."""
    bs, ts = gguf.GGML_QUANT_SIZES[qt]
    raw = rng.integers(0, 256, size=(rows * cols // bs, ts), dtype=np.uint8)
    d = rng.uniform(-0.02, 0.02, size=raw.shape[0]).astype(np.float16).view(np.uint16)
    if qt == QT.IQ1_M:
        for i, bits in enumerate(d):
            for k in range(4):
                w = int(raw[i, 48 + 2 * k]) | int(raw[i, 49 + 2 * k]) << 8
                w = (w & 0x0FFF) | (((int(bits) >> (4 * k)) & 0xF) << 12)
                raw[i, 48 + 2 * k], raw[i, 49 + 2 * k] = w & 0xFF, w >> 8
    else:
        for at in D_FIELDS[qt]:
            raw[:, at] = (d & 0xFF).astype(np.uint8)
            raw[:, at + 1] = (d >> 8).astype(np.uint8)
    return raw.reshape(rows, -1)


def main():
    r = GGUFReader(PATH)
    tensors = {t.name: t for t in r.tensors}
    src = np.asarray(tensors["source"].data, dtype=np.float32).reshape(2, 512)
    w = GGUFWriter(PATH.with_suffix(".tmp"), "quant-test")
    w.add_name("quant-blocks")
    for t in r.tensors:
        if t.name.split(".")[0] in NEW:
            continue
        qt = QT(t.tensor_type)
        data = np.asarray(t.data)
        if qt in (QT.F32, QT.F16):
            w.add_tensor(t.name, data.reshape([int(x) for x in reversed(t.shape)]))
        else:
            w.add_tensor(t.name, data, raw_dtype=qt)
    errors = {}
    for qt, enc in [(QT.IQ4_NL, iq4_nl), (QT.IQ4_XS, iq4_xs)]:
        raw = np.frombuffer(b"".join(enc(row) for row in src), dtype=np.uint8).reshape(2, -1)
        w.add_tensor(qt.name, raw, raw_dtype=qt)
        exp = gguf.quants.dequantize(raw, qt).reshape(src.shape)
        w.add_tensor(f"{qt.name}.expected", exp.astype(np.float32))
        errors[qt.name] = float(np.abs(exp - src).max())
    rng = np.random.default_rng(17)
    for qt in LOW_BIT + [QT.TQ1_0, QT.TQ2_0]:
        if qt in (QT.TQ1_0, QT.TQ2_0):
            # gguf-py encodes the ternary types: their blocks come from the source.
            raw = gguf.quants.quantize(src, qt)
        else:
            raw = random_blocks(qt, 2, 512, rng)
        w.add_tensor(qt.name, raw, raw_dtype=qt)
        exp = gguf.quants.dequantize(raw, qt).reshape(2, 512)
        assert np.all(np.isfinite(exp))
        w.add_tensor(f"{qt.name}.expected", exp.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    PATH.with_suffix(".tmp").replace(PATH)
    g = json.loads(GOLDEN.read_text())
    g["types"] = [t for t in g["types"] if t not in NEW] + sorted(NEW)
    g["max_abs_quantization_error"].update(errors)
    g["iquants_from"] = ("tools/make_iquant_blocks.py: IQ4_NL/IQ4_XS encoded by a plain quantizer, "
                         "TQ1_0/TQ2_0 by gguf-py, the low-bit I-quants random valid blocks; all decoded by gguf-py")
    GOLDEN.write_text(json.dumps(g, indent=1) + "\n")
    print(f"added {sorted(NEW)} to {PATH.name}; max |decoded - source| {errors}")


if __name__ == "__main__" and len(__import__("sys").argv) == 1:
    main()


def make_imix():
    """tests/fixtures/golden/gguf/tiny-llama-256.imix.gguf: tiny-llama-256 with IQ4_XS and
    IQ4_NL weights mixed with K-quants (as bartowski's and Unsloth's IQ4 files mix them), and
    its reference (every tensor dequantized by gguf-py, run by transformers in f32), through
    tools/make_golden.py's own writer and reference code."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import make_golden as mg

    def enc(fn):
        def q(blocks):
            return np.frombuffer(b"".join(fn(b) for b in blocks), dtype=np.uint8).reshape(len(blocks), -1)
        return q

    mg.K_QUANTIZERS[QT.IQ4_NL] = lambda b: enc(iq4_nl)(b)
    mg.K_QUANTIZERS[QT.IQ4_XS] = lambda b: enc(iq4_xs)(b)
    mg.MIXED["imix"] = {"token_embd": QT.IQ4_XS, "attn_q": QT.IQ4_XS, "attn_k": QT.IQ4_NL,
                        "attn_v": QT.Q6_K, "attn_output": QT.IQ4_NL, "ffn_gate": QT.IQ4_XS,
                        "ffn_up": QT.IQ4_XS, "ffn_down": QT.Q4_K}
    mg.FILE_TYPES["imix"] = gguf.LlamaFileType.MOSTLY_IQ4_XS
    model = mg.build("tiny-llama-256")
    f32 = mg.full_logits(model, mg.INPUT_IDS)
    mg.make_gguf("tiny-llama-256", model, "imix", f32)


if __name__ == "__main__" and len(__import__("sys").argv) > 1 and __import__("sys").argv[1] == "--imix":
    make_imix()
