#!/usr/bin/env python3
"""Golden fixtures for seek-tokenizer, made with Hugging Face `tokenizers` and `transformers`.

    python3 tools/make_tokenizer_fixtures.py                  # writes crates/tokenizer/tests/fixtures/*.json
    python3 tools/make_tokenizer_fixtures.py --check-transformers-gguf   # also compare transformers' GGUF loader

Needs: transformers >= 5, tokenizers, gguf (pip), and the sample models from
scripts/fetch-sample-models.sh (in models/, or $SEEK_MODELS_DIR).

For each sample GGUF model this script builds the *reference* tokenizer independently of the
Rust code: vocabulary and merges come from the GGUF file, everything else (normalizer,
pre-tokenizer, post-processor, decoder, added tokens and their `special` flags, BOS/EOS of
tokenizer_config.json) is written out below as it appears in the model's official Hugging Face
`tokenizer.json` / `tokenizer_config.json`. Nothing is derived from the GGUF token types or from
llama.cpp's pre-tokenizer names. The tokenizer is wrapped in transformers'
PreTrainedTokenizerFast, and the fixture records, for a list of tricky strings, the ids, the
decoded text, and the model's chat template rendered by `apply_chat_template` for a few
conversations (plus the ids of each rendered prompt).

A second fixture, pretokenizers.json, records how each official pre-tokenizer (with its
normalizer) splits the same strings, for the families that have no sample model (Llama 3,
GPT-2).

The output is deterministic: no clocks, no randomness, sorted where order is not meaningful.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import tokenizers
import transformers
from gguf import GGUFReader
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates" / "tokenizer" / "tests" / "fixtures"


class HeaderReader(GGUFReader):
    """Reads metadata only: the DeepSeek sample is cut short after its header on purpose."""

    def _build_tensors(self, start_offs, fields):  # noqa: D401 - same signature as the base
        self.tensors = []


def gguf_metadata(path: Path) -> dict:
    reader = HeaderReader(path)
    return {key: field.contents() for key, field in reader.fields.items() if key.startswith("tokenizer.")}


# ---------------------------------------------------------------------------------------------
# The official pipelines, as in each model's tokenizer.json on the Hugging Face hub.

QWEN2_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def byte_level(add_prefix_space: bool, trim_offsets: bool, use_regex: bool) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": trim_offsets, "use_regex": use_regex}


def split(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


# HuggingFaceTB/SmolLM2-135M-Instruct
SMOLLM2_PIPELINE = {
    "normalizer": None,
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, byte_level(False, True, True)]},
    "post_processor": byte_level(True, False, True),
    "decoder": byte_level(True, True, True),
}
# Qwen/Qwen2.5-Coder-0.5B-Instruct (and every Qwen2.5 model)
QWEN2_PIPELINE = {
    "normalizer": {"type": "NFC"},
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(False, False, False)]},
    "post_processor": byte_level(False, False, False),
    "decoder": byte_level(False, False, False),
}
# meta-llama/Meta-Llama-3-8B-Instruct, deepseek-ai/DeepSeek-R1-Distill-Llama-8B
LLAMA3_PIPELINE = {
    "normalizer": None,
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(False, True, False)]},
}
# openai-community/gpt2
GPT2_PIPELINE = {"normalizer": None, "pre_tokenizer": byte_level(False, True, True)}


def bos_template(bos: str, bos_id: int) -> dict:
    """The post_processor of DeepSeek-R1-Distill-Qwen-*'s tokenizer.json."""
    return {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [
            {"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }


# (id, content, special) of `added_tokens`.
SMOLLM2_ADDED = [(i, t, True) for i, t in enumerate([
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>", "<filename>",
    "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>", "<jupyter_start>", "<jupyter_text>",
    "<jupyter_code>", "<jupyter_output>", "<jupyter_script>", "<empty_output>"])]

QWEN25_ADDED = [(151643 + i, t, s) for i, (t, s) in enumerate([
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False)])]

R1_QWEN_ADDED = [(151643 + i, t, s) for i, (t, s) in enumerate([
    ("<｜end▁of▁sentence｜>", True), ("<｜User｜>", False), ("<｜Assistant｜>", False),
    ("<｜begin▁of▁sentence｜>", True), ("<|EOT|>", False), ("<think>", False), ("</think>", False),
    ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True),
    ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False)])]

MODELS = [
    {
        "fixture": "smollm2.json",
        "file": "SmolLM2-135M-Instruct-Q4_1.gguf",
        "hf_repo": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "pipeline": SMOLLM2_PIPELINE,
        "model_vocab": "all",  # the added tokens are part of vocab.json
        "subword_fields": None,
        "added": SMOLLM2_ADDED,
        "special_tokens": {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                           "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>"},
    },
    {
        "fixture": "qwen2.5-coder.json",
        "file": "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf",
        "hf_repo": "Qwen/Qwen2.5-Coder-0.5B-Instruct",
        "pipeline": QWEN2_PIPELINE,
        "model_vocab": 151643,  # vocab.json; added tokens follow; the GGUF pads with [PADn]
        "subword_fields": "",
        "added": QWEN25_ADDED,
        "special_tokens": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    },
    {
        "fixture": "r1-distill-qwen.json",
        "file": "DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.part0000.gguf",
        "hf_repo": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        "pipeline": {**QWEN2_PIPELINE, "post_processor": bos_template("<｜begin▁of▁sentence｜>", 151646)},
        "model_vocab": 151643,
        "subword_fields": "",
        "added": R1_QWEN_ADDED,
        "special_tokens": {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>",
                           "pad_token": "<｜end▁of▁sentence｜>"},
    },
]

# ---------------------------------------------------------------------------------------------
# What is tokenized and rendered.

TEXTS = [
    "",
    "Hello, world!",
    " ",
    "   leading spaces and trailing   ",
    "a    b     c",
    " " * 20 + "x",
    "tabs\tand\nnewlines\r\nmixed\n\n\nend\t\t",
    "1234567 3.14159 -42 1,000,000 2**32 0x1F",
    "I'm sure you'll see they've done it. IT'S DONE, WE'LL GO; don't",
    "naïve café résumé Ångström",
    "cafe\u0301 A\u030a \u212b \ufb01ne",  # decomposed; Angstrom sign; ligature (NFC changes the first three)
    "日本語のテキストと中文混合，标点符号。",
    "한국어 텍스트, Привет мир, مرحبا بالعالم, हिन्दी",
    "🚀🦙 😶‍🌫️ 👨‍👩‍👧‍👦 🇯🇵 ❤️ 👍🏽",
    "zero\u200bwidth and\u00a0nbsp and \u2028line sep",
    "fn main() {\n    println!(\"{}\", x[0] + 1);\n}\n",
    "def f(x):\n\treturn x ** 2  # comment\n\n\nclass A: pass",
    "<div class=\"a\">&amp; <br/></div>",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<｜User｜>What is 1+1?<｜Assistant｜><think>\nEasy.\n</think>\n\n2<｜end▁of▁sentence｜>",
    "<think>reasoning</think>answer",
    "<|endoftext|><|endoftext|>",
    "not special: <|im_start  |> <think > </ think>",
]


def conversations() -> list[dict]:
    def m(role, content):
        return {"role": role, "content": content}

    system_user = [m("system", "You are a terse assistant."), m("user", "What is the capital of France?")]
    user_only = [m("user", "Write a haiku about tokenizers 🚀.")]
    multi_turn = [
        m("system", "Think step by step."),
        m("user", "Hi!"),
        m("assistant", "<think>\nThe user greets me. I should greet back.\n</think>\n\nHello! How can I help?"),
        m("user", "What is 2+2? Answer in 日本語."),
    ]
    return [
        {"messages": system_user, "add_generation_prompt": True},
        {"messages": user_only, "add_generation_prompt": True},
        {"messages": user_only, "add_generation_prompt": False},
        {"messages": multi_turn, "add_generation_prompt": True},
        {"messages": multi_turn, "add_generation_prompt": False},
    ]


# The DeepSeek-R1-Distill template on the hub since 2025-02 opens the reasoning itself; GGUF files
# converted before (like the sample) carry the older template, which stops at <｜Assistant｜>.
R1_OLD_END = "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜>'}}{% endif %}"
R1_NEW_END = "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"

# ---------------------------------------------------------------------------------------------


def reference_tokenizer(spec: dict, meta: dict) -> Tokenizer:
    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = [m.split(" ", 1) for m in meta["tokenizer.ggml.merges"]]
    n_vocab = len(tokens) if spec["model_vocab"] == "all" else spec["model_vocab"]
    for id_, content, _ in spec["added"]:
        if tokens[id_] != content:
            sys.exit(f"{spec['file']}: token {id_} is {tokens[id_]!r}, the official tokenizer has {content!r}")
    doc = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": id_, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": special}
            for id_, content, special in spec["added"]
        ],
        **spec["pipeline"],
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None,
            "continuing_subword_prefix": spec["subword_fields"], "end_of_word_suffix": spec["subword_fields"],
            "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(tokens[:n_vocab])},
            "merges": merges,
        },
    }
    return Tokenizer.from_str(json.dumps(doc))


def model_fixture(spec: dict, models_dir: Path) -> dict:
    path = models_dir / spec["file"]
    if not path.exists():
        sys.exit(f"{path} is missing: run scripts/fetch-sample-models.sh first")
    meta = gguf_metadata(path)
    template = meta["tokenizer.chat_template"]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=reference_tokenizer(spec, meta),
        chat_template=template,
        clean_up_tokenization_spaces=False,
        **spec["special_tokens"],
    )

    encodings = []
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        with_special = tok.encode(text, add_special_tokens=True)
        assert ids == tok.backend_tokenizer.encode(text, add_special_tokens=False).ids
        encodings.append({
            "text": text,
            "ids": ids,
            "ids_with_special_tokens": with_special,
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
        })

    def render_all(chat_template: str | None) -> list[dict]:
        out = []
        for conv in conversations():
            rendered = tok.apply_chat_template(
                conv["messages"], chat_template=chat_template, tokenize=False,
                add_generation_prompt=conv["add_generation_prompt"])
            out.append({**conv, "rendered": rendered, "ids": tok.encode(rendered, add_special_tokens=False)})
        return out

    fixture = {
        "model_file": spec["file"],
        "hf_repo": spec["hf_repo"],
        "vocab_size": len(meta["tokenizer.ggml.tokens"]),
        "special_tokens": spec["special_tokens"],
        "added_tokens": [{"id": i, "content": c, "special": s} for i, c, s in spec["added"]],
        "encodings": encodings,
        "chats": render_all(None),
    }
    if "deepseek" in spec["hf_repo"]:
        if template.count(R1_OLD_END) != 1:
            sys.exit(f"{path}: the chat template does not end as expected; update R1_OLD_END")
        new_template = template.replace(R1_OLD_END, R1_NEW_END)
        fixture["template_variants"] = [{
            "name": "DeepSeek-R1-Distill hub template since 2025-02 (generation prompt opens <think>)",
            "source": new_template,
            "chats": render_all(new_template),
        }]
    return fixture


def pretokenizer_fixture() -> dict:
    families = {"qwen2": QWEN2_PIPELINE, "llama-bpe": LLAMA3_PIPELINE, "smollm": SMOLLM2_PIPELINE,
                "gpt2": GPT2_PIPELINE}
    out = {}
    for name, pipeline in families.items():
        tk = Tokenizer.from_str(json.dumps({
            "version": "1.0", "normalizer": pipeline["normalizer"], "pre_tokenizer": pipeline["pre_tokenizer"],
            "model": {"type": "BPE", "vocab": {}, "merges": []},
        }))
        splits = []
        for text in TEXTS:
            normalized = tk.normalizer.normalize_str(text) if tk.normalizer else text
            splits.append({"text": text, "pieces": [p for p, _ in tk.pre_tokenizer.pre_tokenize_str(normalized)]})
        out[name] = {"normalizer": pipeline["normalizer"], "pre_tokenizer": pipeline["pre_tokenizer"],
                     "splits": splits}
    return out


def dump(obj) -> str:
    """Indented JSON with lists of numbers or strings on one line: small, diffable fixtures."""

    def scalar(x) -> bool:
        return x is None or isinstance(x, (bool, int, float, str))

    def go(x, level: int) -> str:
        pad, inner = " " * level, " " * (level + 1)
        if isinstance(x, dict) and x:
            items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {go(v, level + 1)}" for k, v in x.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(x, list) and x and not all(scalar(v) for v in x):
            return "[\n" + ",\n".join(inner + go(v, level + 1) for v in x) + "\n" + pad + "]"
        return json.dumps(x, ensure_ascii=False)

    return go(obj, 0) + "\n"


def check_transformers_gguf(spec: dict, models_dir: Path) -> None:
    """Prints where transformers' own GGUF tokenizer loader disagrees with the reference."""
    from transformers import AutoTokenizer

    try:
        theirs = AutoTokenizer.from_pretrained(str(models_dir), gguf_file=spec["file"])
    except Exception as e:  # noqa: BLE001 - report, do not fail
        print(f"{spec['file']}: transformers cannot load the GGUF tokenizer: {type(e).__name__}: {e}")
        return
    ours = json.loads((FIXTURES / spec["fixture"]).read_text(encoding="utf-8"))
    diffs = 0
    for enc in ours["encodings"]:
        got = theirs.encode(enc["text"], add_special_tokens=False)
        if got != enc["ids"]:
            diffs += 1
            print(f"{spec['file']}: {enc['text']!r}: reference {enc['ids']} transformers-gguf {got}")
    print(f"{spec['file']}: transformers' GGUF loader differs on {diffs} of {len(ours['encodings'])} strings;"
          f" its pre_tokenizer: {theirs.backend_tokenizer.pre_tokenizer.__getstate__()}"
          f" normalizer: {theirs.backend_tokenizer.normalizer.__getstate__() if theirs.backend_tokenizer.normalizer else None}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=Path(os.environ.get("SEEK_MODELS_DIR", ROOT / "models")))
    parser.add_argument("--check-transformers-gguf", action="store_true",
                        help="also report where transformers' GGUF loader disagrees (writes nothing)")
    args = parser.parse_args()

    FIXTURES.mkdir(parents=True, exist_ok=True)
    generator = {"script": "tools/make_tokenizer_fixtures.py", "transformers": transformers.__version__,
                 "tokenizers": tokenizers.__version__}
    for spec in MODELS:
        fixture = {"generated_by": generator, **model_fixture(spec, args.models_dir)}
        (FIXTURES / spec["fixture"]).write_text(dump(fixture), encoding="utf-8")
        print(f"wrote {FIXTURES / spec['fixture']}")
    (FIXTURES / "pretokenizers.json").write_text(
        dump({"generated_by": generator, "families": pretokenizer_fixture()}), encoding="utf-8")
    print(f"wrote {FIXTURES / 'pretokenizers.json'}")
    if args.check_transformers_gguf:
        for spec in MODELS:
            check_transformers_gguf(spec, args.models_dir)


if __name__ == "__main__":
    main()
