"""Score with Seek's rule-based rewards from a TRL or veRL run on another machine.

Start the server where the run can reach it (the rewards are the ones `seek train grpo` uses):

    seek rewards serve --host 0.0.0.0 --port 5000 \
        --reward_funcs accuracy_reward think_format_reward --reward_weights 1 0.5

Then, with SEEK_REWARD_URL=http://HOST:5000/get_reward in the trainer's environment:

- OpenRLHF needs no code: `--remote_rm_url http://HOST:5000/get_reward` (it posts `query`,
  `prompts`, `labels`; add `--label_key solution` so the labels are sent).
- TRL: `GRPOTrainer(..., reward_funcs=[seek_reward])` with `from seek_reward_client import
  seek_reward` (TRL passes `prompts`, `completions` and the dataset's columns, `solution` among them).
- veRL: `custom_reward_function.path=tools/seek_reward_client.py custom_reward_function.name=compute_score`.

Standard library only, so it runs in any trainer's environment.
"""

import json
import os
import urllib.request

URL = os.environ.get("SEEK_REWARD_URL", "http://127.0.0.1:5000/get_reward")
TIMEOUT = float(os.environ.get("SEEK_REWARD_TIMEOUT", "60"))


def _text(x):
    """TRL gives a completion as text or as a list of chat messages."""
    if isinstance(x, list):
        return "".join(m.get("content", "") for m in x if isinstance(m, dict))
    return x or ""


def _post(queries, prompts, labels, url=None):
    body = json.dumps({"query": queries, "prompts": prompts, "labels": labels}).encode()
    req = urllib.request.Request(url or URL, data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
        answer = json.load(resp)
    return [float(r) for r in answer["rewards"]]


def seek_reward(prompts, completions, solution=None, **kwargs):
    """A TRL reward function: one float per completion."""
    n = len(completions)
    prompts = [_text(p) for p in (prompts or [""] * n)]
    completions = [_text(c) for c in completions]
    labels = [None if s is None else str(s) for s in (solution or [None] * n)]
    # OpenRLHF's query is prompt + completion; the server strips the prompt back off.
    return _post([p + c for p, c in zip(prompts, completions)], prompts, labels)


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    """veRL's custom_reward_function: one completion, one float."""
    return _post([solution_str], [""], [None if ground_truth is None else str(ground_truth)])[0]
