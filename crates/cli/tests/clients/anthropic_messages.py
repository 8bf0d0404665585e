"""The `anthropic` SDK against `seek serve` (SmolLM2): `messages.create`, `messages.stream`
(`text_stream`, `get_final_message`), `messages.count_tokens`, `max_tokens`, `stop_sequences`, a
continued assistant turn, the `x-api-key` header Claude Code sends, and the errors the SDK maps
to its exceptions. Prints one JSON object of findings; the Rust test asserts on it.

    python3 anthropic_messages.py BASE_URL API_KEY
"""
import json, sys, anthropic
url, key = sys.argv[1], sys.argv[2]
client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
q = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
# This SDK takes no sampling settings as arguments any more; the server still reads them.
greedy = {"temperature": 0}
out = {}
m = client.messages.create(model="smol", max_tokens=32, messages=q, extra_body=greedy,
                           system="You are a helpful assistant.",
                           metadata={"user_id": "user-7f3a"})
out["create"] = m.model_dump()
with client.messages.stream(model="smol", max_tokens=32, messages=q, extra_body=greedy,
                            system="You are a helpful assistant.") as s:
    out["text_stream"] = "".join(s.text_stream)
    out["final"] = s.get_final_message().model_dump()
out["count"] = client.messages.count_tokens(model="smol", messages=q,
                                            system="You are a helpful assistant.").input_tokens
out["short"] = client.messages.create(model="smol", max_tokens=3, messages=q,
                                      extra_body=greedy).model_dump()
out["stopped"] = client.messages.create(model="smol", max_tokens=32, messages=q, extra_body=greedy,
                                        stop_sequences=["Paris"]).model_dump()
# Claude Code sends its key as x-api-key.
xkey = anthropic.Anthropic(base_url=url, api_key=None, default_headers={"x-api-key": key},
                           max_retries=0)
out["x_api_key"] = xkey.messages.create(model="smol", max_tokens=3, messages=q).stop_reason

def error(call):
    try:
        call()
    except anthropic.APIStatusError as e:
        return {"class": type(e).__name__, "status": e.status_code, "type": e.body["error"]["type"],
                "message": e.body["error"]["message"]}
    return None

out["unknown_model"] = error(lambda: client.messages.create(
    model="claude-sonnet-4-5", max_tokens=8, messages=q))
out["bad_key"] = error(lambda: anthropic.Anthropic(base_url=url, api_key="sk-wrong", max_retries=0)
                       .messages.create(model="smol", max_tokens=8, messages=q))
out["image"] = error(lambda: client.messages.create(model="smol", max_tokens=8, messages=[
    {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                              "data": "iVBORw0KGgo="}}]}]))
# A last assistant turn is continued, not answered anew.
out["continued"] = client.messages.create(
    model="smol", max_tokens=16, extra_body=greedy,
    messages=q + [{"role": "assistant", "content": "The capital of France is"}]).model_dump()
print(json.dumps(out))
