"""The `openai` SDK against `seek serve`: `chat.completions.parse()` with Pydantic models
(nested objects, arrays, enums, bounded numbers, optional fields), streamed and not, and a
tool round trip (the model calls a function, gets its result as a `tool` message, answers),
streamed and not. Prints one JSON object of findings; the Rust test asserts on it.

    python3 openai_structured.py BASE_URL MODEL
"""
import enum
import json
import sys
from typing import List, Literal, Optional

import openai
from pydantic import BaseModel, Field

url, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=url + "/v1", api_key="sk-none", max_retries=0)
greedy = dict(model=model, temperature=0, max_tokens=400)


class Person(BaseModel):
    name: str = Field(max_length=30)
    age: int = Field(ge=0, le=150)


class Address(BaseModel):
    street: str = Field(max_length=40)
    city: str = Field(max_length=30)
    postcode: str = Field(max_length=10)


class Contact(BaseModel):
    name: str = Field(max_length=30)
    address: Address


class Sentiment(BaseModel):
    label: Literal["positive", "negative", "neutral"]
    confidence: float = Field(ge=0, le=1)


class Item(BaseModel):
    name: str = Field(max_length=20)
    quantity: int = Field(ge=1, le=99)


class ShoppingList(BaseModel):
    items: List[Item] = Field(min_length=1, max_length=4)


class Book(BaseModel):
    title: str = Field(max_length=40)
    author: str = Field(max_length=30)
    year: Optional[int] = Field(default=None, ge=0, le=2100)


class Category(str, enum.Enum):
    bug = "bug"
    feature = "feature"
    question = "question"


class Ticket(BaseModel):
    category: Category
    summary: str = Field(max_length=60)
    urgent: bool


class Ingredient(BaseModel):
    name: str = Field(max_length=20)
    amount: float = Field(gt=0, le=1000)
    unit: Literal["g", "ml", "piece"]


class Recipe(BaseModel):
    name: str = Field(max_length=30)
    ingredients: List[Ingredient] = Field(min_length=1, max_length=3)
    servings: int = Field(ge=1, le=12)


class MathAnswer(BaseModel):
    steps: List[str] = Field(max_length=3)
    answer: float


class Meta(BaseModel):
    version: int = Field(ge=1, le=10)
    tags: List[str] = Field(max_length=3)


class Check(BaseModel):
    is_valid: bool
    errors: List[str] = Field(max_length=3)
    meta: Meta
    note: Optional[str] = Field(default=None, max_length=40)


class Weather(BaseModel):
    city: str = Field(max_length=30)
    temperature_c: float = Field(ge=-60, le=60)
    conditions: Literal["sunny", "cloudy", "rain", "snow"]


CASES = [
    (Person, "Extract the person: Ada Lovelace was 36 years old."),
    (Contact, "Extract the contact: Jane Doe lives at 12 High Street, Oxford, OX1 2AB."),
    (Sentiment, "Classify the sentiment of: 'I love this phone, the battery lasts for days.'"),
    (ShoppingList, "Make a shopping list: two apples, one bread, three eggs."),
    (Book, "Describe the book 'Dune' by Frank Herbert."),
    (Ticket, "File this: the login button crashes the app on Android, please fix quickly."),
    (Recipe, "Give a tiny pancake recipe for 2 people."),
    (MathAnswer, "What is 12 times 7? Show your steps."),
    (Check, "Validate the version string '1.2' and report."),
    (Weather, "It is 21 degrees and sunny in Lisbon. Report the weather."),
]

out = {"parsed": 0, "cases": len(CASES), "failures": [], "streamed": 0}
for cls, prompt in CASES:
    try:
        r = client.chat.completions.parse(messages=[{"role": "user", "content": prompt}],
                                          response_format=cls, **greedy)
        msg = r.choices[0].message
        if msg.parsed is None or not isinstance(msg.parsed, cls):
            out["failures"].append({"schema": cls.__name__, "content": msg.content})
        else:
            out["parsed"] += 1
    except Exception as e:  # noqa: BLE001 - the test reports every failure
        out["failures"].append({"schema": cls.__name__, "error": f"{type(e).__name__}: {e}"})

# The streaming helper assembles and parses the same way.
with client.chat.completions.stream(messages=[{"role": "user", "content": CASES[0][1]}],
                                    response_format=Person, **greedy) as s:
    final = s.get_final_completion()
    if isinstance(final.choices[0].message.parsed, Person):
        out["streamed"] += 1

# A tool round trip, non-streamed then streamed.
tools = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 30},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": False},
        "strict": True,
    },
}, {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a", "b"], "additionalProperties": False},
    },
}]
question = [{"role": "user", "content": "What is the weather in Paris right now, in celsius?"}]


def round_trip(stream: bool) -> dict:
    if stream:
        with client.chat.completions.stream(messages=question, tools=tools, tool_choice="required",
                                            **greedy) as s:
            first = s.get_final_completion()
    else:
        first = client.chat.completions.create(messages=question, tools=tools, tool_choice="required",
                                               **greedy)
    choice = first.choices[0]
    calls = choice.message.tool_calls or []
    result = {"finish_reason": choice.finish_reason, "calls": [
        {"id": c.id, "name": c.function.name, "arguments": json.loads(c.function.arguments)} for c in calls]}
    if not calls:
        return result
    history = question + [
        {"role": "assistant", "content": choice.message.content,
         "tool_calls": [{"id": c.id, "type": "function",
                         "function": {"name": c.function.name, "arguments": c.function.arguments}}
                        for c in calls]},
    ] + [{"role": "tool", "tool_call_id": c.id, "content": json.dumps({"temperature": 18, "sky": "sunny"})}
         for c in calls]
    answer = client.chat.completions.create(messages=history, tools=tools, **greedy)
    result["answer"] = answer.choices[0].message.content
    result["answer_finish"] = answer.choices[0].finish_reason
    return result


out["tools"] = round_trip(False)
out["tools_streamed"] = round_trip(True)
# A named choice calls exactly that function, with valid arguments.
named = client.chat.completions.create(messages=[{"role": "user", "content": "Add 2 and 40."}], tools=tools,
                                       tool_choice={"type": "function", "function": {"name": "add"}}, **greedy)
call = named.choices[0].message.tool_calls[0]
out["named"] = {"name": call.function.name, "arguments": json.loads(call.function.arguments)}
# DeepSeek's chat prefix completion: the last assistant message is continued.
prefix = "The capital of France is"
r = client.chat.completions.create(
    messages=[{"role": "user", "content": "Name the capital of France in one sentence."},
              {"role": "assistant", "content": prefix, "prefix": True}], **greedy)
out["prefix"] = r.choices[0].message.content
# Fill in the middle with Qwen2.5-Coder's FIM tokens.
r = client.completions.create(model=model, prompt="def add(a, b):\n    ", suffix="\n\nprint(add(1, 2))\n",
                              max_tokens=16, temperature=0)
out["fim"] = r.choices[0].text
# Regex and choice constraints through vLLM's fields (extra_body, as vLLM's docs show).
r = client.chat.completions.create(messages=[{"role": "user", "content": "Give a date in 2024."}],
                                   extra_body={"structured_outputs": {"regex": r"2024-[01][0-9]-[0-3][0-9]"}}, **greedy)
out["regex"] = r.choices[0].message.content
r = client.chat.completions.create(messages=[{"role": "user", "content": "Is the sky green? yes or no"}],
                                   extra_body={"guided_choice": ["yes", "no"]}, **greedy)
out["choice"] = r.choices[0].message.content
# Errors an SDK maps to its exceptions.
try:
    client.chat.completions.create(messages=question, model="no-such-model", max_tokens=4)
except openai.NotFoundError as e:
    out["unknown_model"] = e.code
try:
    client.chat.completions.create(messages=question, model=model, max_tokens=4, logit_bias={"x": 5})
except openai.BadRequestError as e:
    out["bad_logit_bias"] = e.param
print(json.dumps(out))
