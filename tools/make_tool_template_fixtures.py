#!/usr/bin/env python3
"""Golden renders of tool conversations: each sample model's chat template rendered by
`transformers`' chat-template Jinja environment (what `apply_chat_template(messages, tools=...)` renders with), for
crates/tokenizer/tests/fixtures/tool_chats.json (checked by crates/tokenizer/tests/golden.rs).

The conversations use the message shapes Hugging Face documents for tool use: `tools` as
OpenAI function specs, an assistant turn with `tool_calls` (arguments as a mapping for templates
that `tojson` them, as text for those that concatenate them, the rule Seek applies), and a `tool`
turn with `tool_call_id` and `name`.

    scripts/fetch-sample-models.sh
    python3 tools/make_tool_template_fixtures.py
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tokenizer_fixtures as mtf  # noqa: E402
import transformers  # noqa: E402
from transformers.utils.chat_template_utils import _compile_jinja_template  # noqa: E402

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "add", "description": "Add two integers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a", "b"]}}},
]

ARGS_MAPPING = re.compile(r"arguments['\"]?\]?\s*\|\s*tojson")


def conversations(args_as_mapping: bool) -> list[dict]:
    args = {"city": "Paris", "unit": "celsius"}
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": args if args_as_mapping else json.dumps(args)}}
    ask = {"role": "user", "content": "What is the weather in Paris?"}
    return [
        {"messages": [ask], "tools": TOOLS, "add_generation_prompt": True},
        {"messages": [{"role": "system", "content": "Be brief."}, ask], "tools": TOOLS,
         "add_generation_prompt": True},
        {"messages": [ask, {"role": "assistant", "content": None, "tool_calls": [call]},
                      {"role": "tool", "content": "18 degrees, sunny", "tool_call_id": "call_1",
                       "name": "get_weather"}],
         "tools": TOOLS, "add_generation_prompt": True},
    ]


def main() -> None:
    models_dir = mtf.ROOT / "models"
    out = {"generated_by": {"script": "tools/make_tool_template_fixtures.py",
                            "transformers": transformers.__version__}, "models": []}
    for spec in mtf.MODELS:
        path = models_dir / spec["file"]
        meta = mtf.gguf_metadata(path)
        template = meta["tokenizer.chat_template"]
        if "tool_call" not in template and "tool▁calls" not in template:
            print(f"{spec['file']}: the template has no tool format; skipped")
            continue
        chats = []
        for conv in conversations(bool(ARGS_MAPPING.search(template))):
            # transformers 5 drops `content: None` before rendering, which DeepSeek's template needs
            # to see (`message['content'] is none` marks a tool-call turn); vLLM keeps it. So the
            # template is rendered here by transformers' own compiled Jinja (its sandbox, filters
            # and globals), with the messages as the client sent them.
            compiled = _compile_jinja_template(template)
            rendered = compiled.render(messages=conv["messages"], tools=conv["tools"],
                                       add_generation_prompt=conv["add_generation_prompt"],
                                       **spec["special_tokens"])
            chats.append({**conv, "rendered": rendered})
        out["models"].append({"model_file": spec["file"], "chats": chats})
        print(f"{spec['file']}: {len(chats)} tool conversations")
    dest = mtf.FIXTURES / "tool_chats.json"
    dest.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
