#!/usr/bin/env python3
"""Golden renders of Qwen3's chat template (tests/fixtures/templates/Qwen-Qwen3-0.6B.jinja, the
template of Qwen3 and its GGUF files, as llama.cpp's models/templates ships it) by transformers'
chat-template Jinja environment, with `enable_thinking` unset, true and false (what
`apply_chat_template(..., enable_thinking=False)` and vLLM's `chat_template_kwargs` pass), for
crates/tokenizer/tests/qwen3_template.rs.

    python3 tools/make_qwen3_template_fixtures.py
"""
import json
from pathlib import Path

import transformers
from transformers.utils.chat_template_utils import _compile_jinja_template

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "tests/fixtures/templates/Qwen-Qwen3-0.6B.jinja"
OUT = ROOT / "tests/fixtures/templates/qwen3_renders.json"

CONVERSATIONS = [
    [{"role": "user", "content": "What is 7 * 8?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a prime."}],
    [{"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello! How can I help?", "reasoning_content": "greet back"},
     {"role": "user", "content": "What is 2 + 2?"}],
]


def main():
    template = TEMPLATE.read_text()
    compiled = _compile_jinja_template(template)
    renders = []
    for conv in CONVERSATIONS:
        for kwargs in [{}, {"enable_thinking": True}, {"enable_thinking": False}]:
            text = compiled.render(messages=conv, tools=None, add_generation_prompt=True, **kwargs)
            renders.append({"messages": conv, "kwargs": kwargs, "rendered": text})
    OUT.write_text(json.dumps({"generated_by": {"script": "tools/make_qwen3_template_fixtures.py",
                                                "transformers": transformers.__version__},
                               "renders": renders}, indent=1) + "\n")
    print(f"wrote {len(renders)} renders to {OUT}")


if __name__ == "__main__":
    main()
