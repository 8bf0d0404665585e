"""The `anthropic` SDK against `seek serve` (a model whose template renders tools): a tool
round trip (`tool_use`, then the result as a `tool_result` block), streamed and not, the same
conversation through the `openai` SDK for comparison, and named and `none` tool choices. Prints
one JSON object of findings; the Rust test asserts on it.

    python3 anthropic_tools.py BASE_URL MODEL
"""
import json, sys, anthropic, openai
url, model = sys.argv[1], sys.argv[2]
client = anthropic.Anthropic(base_url=url, api_key="sk-none", max_retries=0)
tools = [{"name": "get_weather", "description": "Get the current weather in a city.",
          "input_schema": {"type": "object", "properties": {
              "city": {"type": "string", "maxLength": 30},
              "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
              "required": ["city", "unit"], "additionalProperties": False}}]
q = [{"role": "user", "content": "What is the weather in Paris right now, in celsius?"}]
greedy = dict(model=model, extra_body={"temperature": 0})
out = {}
first = client.messages.create(max_tokens=200, messages=q, tools=tools, tool_choice={"type": "any"}, **greedy)
out["first"] = first.model_dump()
with client.messages.stream(max_tokens=200, messages=q, tools=tools, tool_choice={"type": "any"},
                            **greedy) as s:
    # The wire events (the SDK skips `ping`, and adds its own `input_json` and `text` events).
    out["events"] = [[e.type, getattr(getattr(e, "delta", None), "type", None),
                      getattr(getattr(e, "content_block", None), "type", None)]
                     for e in s if e.type not in ("input_json", "text", "thinking")]
    out["streamed"] = s.get_final_message().model_dump()
uses = [b for b in first.content if b.type == "tool_use"]
result = json.dumps({"temperature": 18, "sky": "sunny"})
history = q + [{"role": "assistant", "content": first.content},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": u.id, "content": result}
                                            for u in uses]}]
out["answer"] = client.messages.create(max_tokens=60, messages=history, tools=tools, **greedy).model_dump()
out["count"] = client.messages.count_tokens(model=model, messages=history, tools=tools).input_tokens
# The same conversation through OpenAI's API on the same server.
oai = openai.OpenAI(base_url=url + "/v1", api_key="sk-none", max_retries=0)
oai_history = q + [{"role": "assistant", "content": None, "tool_calls": [
    {"id": u.id, "type": "function", "function": {"name": u.name, "arguments": json.dumps(u.input)}}
    for u in uses]}] + [{"role": "tool", "tool_call_id": u.id, "content": result} for u in uses]
oai_tools = [{"type": "function", "function": {"name": t["name"], "description": t["description"],
                                                "parameters": t["input_schema"]}} for t in tools]
r = oai.chat.completions.create(model=model, messages=oai_history, tools=oai_tools, temperature=0,
                                max_tokens=60)
out["openai"] = {"text": r.choices[0].message.content, "prompt_tokens": r.usage.prompt_tokens,
                 "finish_reason": r.choices[0].finish_reason}
out["named"] = client.messages.create(max_tokens=200, tools=tools,
                                      tool_choice={"type": "tool", "name": "get_weather"},
                                      messages=[{"role": "user", "content": "Hi!"}], **greedy).model_dump()
out["none"] = client.messages.create(max_tokens=20, messages=q, tools=tools, tool_choice={"type": "none"},
                                     **greedy).model_dump()
print(json.dumps(out))
