#!/usr/bin/env python3
"""A verifiable arithmetic task for distillation: data/arith/{train,test}.jsonl.

Each line is {"id", "question", "answer"}: "What is A * B + C?" with A two-digit, B one-digit
and C two-digit, the answer an integer checked by seek's verifier (\\boxed{} or the last
number). The 300 test problems never occur in the 1500 training problems. Deterministic
(seed 2026); re-run with
    python3 tools/make_arith_task.py
"""
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "data" / "arith"


def main():
    r = random.Random(2026)
    seen, rows = set(), []
    while len(rows) < 1800:
        a, b, c = r.randint(11, 99), r.randint(3, 9), r.randint(11, 99)
        if (a, b, c) in seen:
            continue
        seen.add((a, b, c))
        rows.append({"question": f"What is {a} * {b} + {c}?", "answer": str(a * b + c)})
    OUT.mkdir(parents=True, exist_ok=True)
    for name, part in (("test", rows[:300]), ("train", rows[300:])):
        with open(OUT / f"{name}.jsonl", "w") as f:
            for i, row in enumerate(part):
                f.write(json.dumps({"id": f"{name}-{i}", **row}) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
