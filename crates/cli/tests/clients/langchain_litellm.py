"""LangChain's `ChatOpenAI` (`bind_tools`, `with_structured_output`) and LiteLLM's `completion`
against `seek serve`. Prints one JSON object of findings; the Rust test asserts on it.

    python3 langchain_litellm.py BASE_URL MODEL
"""
import io
import json
import logging
import os
import sys
import warnings

# LiteLLM fetches its price table from GitHub at import unless told to use its bundled copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from pydantic import BaseModel, Field

url, model = sys.argv[1], sys.argv[2]
out = {}

from langchain_core.tools import tool  # noqa: E402
from langchain_openai import ChatOpenAI  # noqa: E402


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"18 degrees and sunny in {city}"


class Person(BaseModel):
    """A person mentioned in the text."""
    name: str = Field(max_length=30)
    age: int = Field(ge=0, le=150)


llm = ChatOpenAI(base_url=url + "/v1", api_key="sk-none", model=model, temperature=0, max_tokens=300,
                 max_retries=0)
ai = llm.bind_tools([get_weather], tool_choice="required").invoke("What is the weather in Paris?")
out["bind_tools"] = [{"name": c["name"], "args": c["args"], "id": c["id"]} for c in ai.tool_calls]
person = llm.with_structured_output(Person).invoke("Extract: Grace Hopper was 85 years old.")
out["structured"] = person.model_dump() if isinstance(person, Person) else repr(person)

# LiteLLM: a completion through its OpenAI-compatible provider, watching its log and warnings.
import litellm  # noqa: E402

log = io.StringIO()
handler = logging.StreamHandler(log)
for name in ("LiteLLM", "LiteLLM Proxy", "LiteLLM Router", "litellm"):
    logging.getLogger(name).addHandler(handler)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    r = litellm.completion(model="openai/" + model, api_base=url + "/v1", api_key="sk-none",
                           messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0)
    # Pydantic warns here when a field has the wrong type (an object where a number belongs).
    r.model_dump()
    r.model_dump_json()
usage = r.usage
out["litellm"] = {
    "content": r.choices[0].message.content,
    "total_tokens": usage.total_tokens,
    "cost": getattr(usage, "cost", None),
    "cost_is_number": isinstance(getattr(usage, "cost", None), float),
    "warnings": [str(w.message) for w in caught if any(k in str(w.message).lower()
                                                         for k in ("cost", "usage", "serializ"))],
    "log": [l for l in log.getvalue().splitlines() if "cost" in l.lower()],
}
print(json.dumps(out))
