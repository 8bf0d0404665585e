#!/usr/bin/env python3
"""Structured outputs and tool calling on `seek serve`: the figures of issue 15.

1. Schema-valid rate over 50 prompt-schema pairs, with the schema enforced by constrained
   decoding (`response_format: json_schema`) and without (the schema only in the prompt).
2. Decode speed with a JSON-schema constraint against without, at batch 1 and 16 (the same
   prompt and token count: the constrained answer is an array that cannot end before
   max_tokens; the free one runs with ignore_eos).
3. Schema compile time and per-token mask time (crates/structured/examples/compile_time.rs).
4. Tool-call accuracy on 50 simple function-calling cases in the style of the Berkeley
   Function-Calling Leaderboard's `simple` category (one function, one call, written here):
   right function, arguments valid against its schema, and arguments equal to the expected
   values; with `tool_choice: auto` and with the call enforced (`required`).

    cargo build --release -p seek-cli
    python3 tools/bench_structured.py models/Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf --json bench-structured.json

Needs `jsonschema` (pip) for validation; everything else is the standard library.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import jsonschema

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------
# 50 prompt-schema pairs: 10 schemas, 5 prompts each.

def obj(props: dict, required=None) -> dict:
    return {"type": "object", "properties": props, "required": required or list(props), "additionalProperties": False}


S = {"type": "string", "maxLength": 40}
SCHEMAS = [
    (obj({"name": S, "age": {"type": "integer", "minimum": 0, "maximum": 150}}),
     ["Ada Lovelace, 36.", "Alan Turing was 41.", "My grandmother is 90 years old and called Rose.",
      "Tom (age 7) likes trains.", "The captain, Maria Lopez, is 52."], "Extract the person's name and age"),
    (obj({"city": S, "country": S, "population_millions": {"type": "number", "minimum": 0, "maximum": 50}}),
     ["Paris", "Tokyo", "Nairobi", "Lima", "Oslo"], "Describe the city"),
    (obj({"label": {"enum": ["positive", "negative", "neutral"]}, "confidence": {"type": "number", "minimum": 0, "maximum": 1}}),
     ["I love it!", "Terrible service.", "It arrived on Tuesday.", "Best purchase ever.", "Meh."], "Classify the sentiment"),
    (obj({"items": {"type": "array", "items": obj({"name": {"type": "string", "maxLength": 20}, "qty": {"type": "integer", "minimum": 1, "maximum": 99}}), "minItems": 1, "maxItems": 5}}),
     ["2 apples and 3 pears", "a loaf of bread", "6 eggs, 1 milk", "10 pencils", "3 lemons and 2 limes"], "Make a shopping list"),
    (obj({"title": S, "author": S, "year": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 2100}, {"type": "null"}]}}),
     ["Dune by Frank Herbert", "Emma by Jane Austen", "1984 by George Orwell", "Hamlet", "Ulysses by James Joyce"], "Describe the book"),
    (obj({"category": {"enum": ["bug", "feature", "question"]}, "summary": {"type": "string", "maxLength": 60}, "urgent": {"type": "boolean"}}),
     ["The app crashes on login.", "Please add dark mode.", "How do I reset my password?", "Data loss when saving!", "Can you support CSV export?"], "Triage this ticket"),
    (obj({"steps": {"type": "array", "items": {"type": "string", "maxLength": 60}, "maxItems": 3}, "answer": {"type": "number"}}),
     ["12 times 7", "100 minus 37", "15 plus 27", "81 divided by 9", "2 to the power 10"], "Compute"),
    (obj({"date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}, "event": S}),
     ["The moon landing, 20 July 1969", "Christmas 2024", "New Year's Day 2000", "The fall of the Berlin Wall, 9 November 1989", "My birthday is March 3rd, 1990"], "Extract the event and its ISO date"),
    (obj({"is_valid": {"type": "boolean"}, "errors": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 3}}),
     ["the email 'bob@example.com'", "the email 'bob@@example'", "the phone number '12'", "the URL 'https://a.b'", "the date '2024-13-40'"], "Validate"),
    (obj({"temperature_c": {"type": "number", "minimum": -60, "maximum": 60}, "conditions": {"enum": ["sunny", "cloudy", "rain", "snow"]}, "city": S}),
     ["21 degrees and sunny in Lisbon", "It's snowing in Oslo, -5C", "Rainy London, 12 degrees", "Cloudy Paris at 15C", "Hot sun in Cairo, 38 degrees"], "Report the weather"),
]


def pairs():
    for schema, inputs, task in SCHEMAS:
        for text in inputs:
            yield schema, f"{task}: {text}"


# ---------------------------------------------------------------------------------------------
# 50 simple function-calling cases: (function, question, expected arguments).

def fn(name, desc, props, required=None):
    return {"type": "function", "function": {"name": name, "description": desc, "parameters": obj(props, required)}}


INT, NUM, STR = {"type": "integer"}, {"type": "number"}, {"type": "string"}
FUNCTIONS = {
    "get_weather": fn("get_weather", "Get the current weather for a city.", {"city": STR, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}),
    "add": fn("add", "Add two integers.", {"a": INT, "b": INT}),
    "convert_currency": fn("convert_currency", "Convert an amount between currencies.", {"amount": NUM, "from_currency": STR, "to_currency": STR}),
    "send_email": fn("send_email", "Send an email.", {"to": STR, "subject": STR}),
    "set_timer": fn("set_timer", "Set a timer for a number of minutes.", {"minutes": INT}),
    "get_stock_price": fn("get_stock_price", "Get the latest price of a stock by ticker symbol.", {"ticker": STR}),
    "translate": fn("translate", "Translate text into a target language.", {"text": STR, "target_language": STR}),
    "area_of_circle": fn("area_of_circle", "Compute the area of a circle.", {"radius": NUM}),
    "book_table": fn("book_table", "Book a restaurant table.", {"restaurant": STR, "people": INT}),
    "search_flights": fn("search_flights", "Search flights between two airports (IATA codes).", {"origin": STR, "destination": STR}),
}
CASES = [
    ("get_weather", "What's the weather in Paris in celsius?", {"city": "Paris", "unit": "celsius"}),
    ("get_weather", "Is it hot in Miami right now? Use fahrenheit.", {"city": "Miami", "unit": "fahrenheit"}),
    ("get_weather", "Tell me the weather in Tokyo in celsius.", {"city": "Tokyo", "unit": "celsius"}),
    ("get_weather", "How cold is it in Oslo, in celsius?", {"city": "Oslo", "unit": "celsius"}),
    ("get_weather", "Weather for Chicago in fahrenheit please.", {"city": "Chicago", "unit": "fahrenheit"}),
    ("add", "What is 2 plus 40?", {"a": 2, "b": 40}),
    ("add", "Add 17 and 25.", {"a": 17, "b": 25}),
    ("add", "Sum 100 and 250.", {"a": 100, "b": 250}),
    ("add", "Compute 7 + 8.", {"a": 7, "b": 8}),
    ("add", "I need the total of 1234 and 766.", {"a": 1234, "b": 766}),
    ("convert_currency", "Convert 100 USD to EUR.", {"amount": 100, "from_currency": "USD", "to_currency": "EUR"}),
    ("convert_currency", "How much is 50 GBP in JPY?", {"amount": 50, "from_currency": "GBP", "to_currency": "JPY"}),
    ("convert_currency", "Change 20 EUR into USD.", {"amount": 20, "from_currency": "EUR", "to_currency": "USD"}),
    ("convert_currency", "Convert 1000 JPY to USD.", {"amount": 1000, "from_currency": "JPY", "to_currency": "USD"}),
    ("convert_currency", "What is 75 CHF in EUR?", {"amount": 75, "from_currency": "CHF", "to_currency": "EUR"}),
    ("send_email", "Email bob@example.com with the subject 'Lunch'.", {"to": "bob@example.com", "subject": "Lunch"}),
    ("send_email", "Send an email to alice@corp.com titled 'Report'.", {"to": "alice@corp.com", "subject": "Report"}),
    ("send_email", "Write to team@acme.org, subject: Meeting.", {"to": "team@acme.org", "subject": "Meeting"}),
    ("send_email", "Send mail to joe@x.io with subject Hello.", {"to": "joe@x.io", "subject": "Hello"}),
    ("send_email", "Email hr@company.com about 'Leave request'.", {"to": "hr@company.com", "subject": "Leave request"}),
    ("set_timer", "Set a timer for 10 minutes.", {"minutes": 10}),
    ("set_timer", "Start a 25 minute timer.", {"minutes": 25}),
    ("set_timer", "Timer for 5 minutes please.", {"minutes": 5}),
    ("set_timer", "Remind me in 45 minutes with a timer.", {"minutes": 45}),
    ("set_timer", "Set a 90 minute timer.", {"minutes": 90}),
    ("get_stock_price", "What's Apple's stock price? Ticker AAPL.", {"ticker": "AAPL"}),
    ("get_stock_price", "Get the price of MSFT.", {"ticker": "MSFT"}),
    ("get_stock_price", "How is TSLA trading?", {"ticker": "TSLA"}),
    ("get_stock_price", "Latest quote for NVDA.", {"ticker": "NVDA"}),
    ("get_stock_price", "Check the stock price of GOOG.", {"ticker": "GOOG"}),
    ("translate", "Translate 'good morning' into French.", {"text": "good morning", "target_language": "French"}),
    ("translate", "How do you say 'thank you' in Japanese?", {"text": "thank you", "target_language": "Japanese"}),
    ("translate", "Translate 'where is the station' to German.", {"text": "where is the station", "target_language": "German"}),
    ("translate", "Put 'I love cats' into Spanish.", {"text": "I love cats", "target_language": "Spanish"}),
    ("translate", "Translate 'see you tomorrow' into Italian.", {"text": "see you tomorrow", "target_language": "Italian"}),
    ("area_of_circle", "What is the area of a circle with radius 3?", {"radius": 3}),
    ("area_of_circle", "Area of a circle of radius 10.", {"radius": 10}),
    ("area_of_circle", "Compute the area for radius 2.5.", {"radius": 2.5}),
    ("area_of_circle", "A circle has radius 7; what's its area?", {"radius": 7}),
    ("area_of_circle", "Find the area of a circle with a radius of 1.", {"radius": 1}),
    ("book_table", "Book a table for 4 at Luigi's.", {"restaurant": "Luigi's", "people": 4}),
    ("book_table", "Reserve Nobu for 2 people.", {"restaurant": "Nobu", "people": 2}),
    ("book_table", "Get a table for 6 at The Ivy.", {"restaurant": "The Ivy", "people": 6}),
    ("book_table", "Book Chez Panisse for 3.", {"restaurant": "Chez Panisse", "people": 3}),
    ("book_table", "Table for 8 at Dishoom please.", {"restaurant": "Dishoom", "people": 8}),
    ("search_flights", "Find flights from JFK to LAX.", {"origin": "JFK", "destination": "LAX"}),
    ("search_flights", "Search flights SFO to NRT.", {"origin": "SFO", "destination": "NRT"}),
    ("search_flights", "Flights from LHR to CDG?", {"origin": "LHR", "destination": "CDG"}),
    ("search_flights", "Look up flights from DXB to SIN.", {"origin": "DXB", "destination": "SIN"}),
    ("search_flights", "Any flights from ORD to MIA?", {"origin": "ORD", "destination": "MIA"}),
]


# ---------------------------------------------------------------------------------------------

class Server:
    def __init__(self, seek: str, model: str, name: str):
        self.name = name
        self.proc = subprocess.Popen([seek, "serve", model, "--port", "0", "--served-model-name", name,
                                      "--max-running", "16"], stderr=subprocess.PIPE, text=True)
        for line in self.proc.stderr:
            if "listening on " in line:
                self.url = line.split("listening on ")[1].split()[0]
                break
        else:
            sys.exit("seek serve exited before listening")
        # Keep reading the log, or the server blocks once the pipe is full.
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=5)
                break
            except OSError:
                time.sleep(0.2)

    def post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(self.url + path, json.dumps({"model": self.name, **body}).encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())

    def close(self):
        self.proc.terminate()
        self.proc.wait()


def strip_fences(text: str) -> str:
    t = text.strip()
    if t.startswith("```"):
        t = t.split("\n", 1)[1] if "\n" in t else ""
        t = t.rsplit("```", 1)[0]
    return t.strip()


def valid(text: str, schema: dict, lenient: bool) -> bool:
    try:
        jsonschema.validate(json.loads(strip_fences(text) if lenient else text), schema)
        return True
    except (ValueError, jsonschema.ValidationError):
        return False


def schema_validity(s: Server) -> dict:
    out = {"pairs": 0, "constrained_valid": 0, "free_valid": 0, "free_valid_after_stripping_fences": 0,
           "constrained_finish_length": 0}
    for schema, prompt in pairs():
        out["pairs"] += 1
        msg = [{"role": "user", "content": prompt}]
        r = s.post("/v1/chat/completions", {"messages": msg, "temperature": 0, "max_tokens": 300,
                                            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}})
        c = r["choices"][0]
        out["constrained_valid"] += valid(c["message"]["content"], schema, False)
        out["constrained_finish_length"] += c["finish_reason"] == "length"
        free = [{"role": "user", "content": f"{prompt}\nAnswer with only a JSON object valid against this JSON Schema:\n{json.dumps(schema)}"}]
        r = s.post("/v1/chat/completions", {"messages": free, "temperature": 0, "max_tokens": 300})
        text = r["choices"][0]["message"]["content"]
        out["free_valid"] += valid(text, schema, False)
        out["free_valid_after_stripping_fences"] += valid(text, schema, True)
    return out


def speed(s: Server, batch: int, tokens: int, temperature: float) -> dict:
    """Completion tokens per second of `batch` concurrent requests, free against constrained,
    each measured twice (interleaved) and the best taken. With temperature > 0 the free run
    samples over the whole vocabulary while the constrained one only over the allowed tokens,
    so greedy runs (argmax, the cheapest sampler) show the mask's own cost."""
    long_array = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 999999}, "minItems": 1000}
    prompt = [{"role": "user", "content": "List as many six-digit numbers as you can."}]
    res = {}
    for mode in ["free", "constrained", "free", "constrained"]:
        body = {"messages": prompt, "temperature": temperature, "max_tokens": tokens}
        if mode == "constrained":
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "a", "schema": long_array}}
        else:
            body["ignore_eos"] = True
        t = time.perf_counter()
        with cf.ThreadPoolExecutor(batch) as ex:
            rs = list(ex.map(lambda i: s.post("/v1/chat/completions", {**body, "seed": i}), range(batch)))
        wall = time.perf_counter() - t
        n = sum(r["usage"]["completion_tokens"] for r in rs)
        assert n == batch * tokens, f"{mode}: {n} tokens, not {batch * tokens}"
        res.setdefault(mode, []).append(n / wall)
    free, con = max(res["free"]), max(res["constrained"])
    return {"batch": batch, "temperature": temperature, "tokens_per_request": tokens, "free_tok_s": free,
            "constrained_tok_s": con, "constrained_vs_free": con / free}


def tool_accuracy(s: Server) -> dict:
    out = {}
    for choice in ["auto", "required"]:
        right_fn = valid_args = exact = 0
        for name, question, expected in CASES:
            tools = [FUNCTIONS[name]]
            r = s.post("/v1/chat/completions", {"messages": [{"role": "user", "content": question}], "tools": tools,
                                                "tool_choice": choice, "temperature": 0, "max_tokens": 200})
            calls = r["choices"][0]["message"].get("tool_calls") or []
            if not calls or calls[0]["function"]["name"] != name:
                continue
            right_fn += 1
            try:
                args = json.loads(calls[0]["function"]["arguments"])
                jsonschema.validate(args, FUNCTIONS[name]["function"]["parameters"])
            except (ValueError, jsonschema.ValidationError):
                continue
            valid_args += 1
            norm = lambda d: {k: (v.lower() if isinstance(v, str) else float(v)) for k, v in d.items()}
            exact += norm(args) == norm(expected)
        out[choice] = {"cases": len(CASES), "right_function": right_fn, "valid_arguments": valid_args,
                       "expected_arguments": exact}
    return out


def compile_times(model: str) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([s for s, _, _ in SCHEMAS], f)
    r = subprocess.run(["cargo", "run", "--quiet", "--release", "-p", "seek-structured", "--example", "compile_time",
                        "--", model, f.name], cwd=ROOT, capture_output=True, text=True)
    os.unlink(f.name)
    if r.returncode != 0:
        return {"error": r.stderr[-2000:]}
    return json.loads(r.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--seek", default=str(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "seek"))
    ap.add_argument("--json", default="bench-structured.json")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per request in the speed test")
    ap.add_argument("--only", default="validity,speed,compile,tools")
    a = ap.parse_args()
    only = set(a.only.split(","))
    out = {"model": a.model, "cpus": os.cpu_count()}
    if "compile" in only:
        out["compile"] = compile_times(a.model)
        print(json.dumps(out["compile"]), flush=True)
    s = Server(a.seek, a.model, "m")
    try:
        if "speed" in only:
            out["speed"] = [speed(s, b, a.tokens, t) for t in (0.0, 0.7) for b in (1, 16)]
            print(json.dumps(out["speed"]), flush=True)
        if "validity" in only:
            out["validity"] = schema_validity(s)
            print(json.dumps(out["validity"]), flush=True)
        if "tools" in only:
            out["tools"] = tool_accuracy(s)
            print(json.dumps(out["tools"]), flush=True)
    finally:
        s.close()
    Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
