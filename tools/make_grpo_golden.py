#!/usr/bin/env python3
"""Golden values for Seek's GRPO loss, computed by TRL's own code.

For fixed rewards, per-token log-probabilities (policy, old policy, reference) and completion masks,
this runs TRL's advantage computation (`GRPOTrainer._generate_and_score_completions`'
`sum_then_normalize` branch, with `trl.trainer.utils.nanstd`) and TRL's `GRPOTrainer._compute_loss`
itself (bound to a stand-in trainer that returns the fixed log-probs instead of running a model), then
backpropagates to get d loss / d per-token log-prob. Every `loss_type` (grpo, bnpo, dr_grpo, dapo) x
`scale_rewards` (group, batch, none) x beta (0, 0.04), with clip-higher (epsilon 0.2, epsilon_high 0.28).
Writes crates/train/tests/fixtures/grpo_loss.json, checked by crates/train/tests/grpo_golden.rs.

    python3 tools/make_grpo_golden.py
"""
from __future__ import annotations

import collections
import json
import types
from pathlib import Path

import torch
import trl
from trl.trainer.grpo_trainer import GRPOTrainer
from trl.trainer.utils import nanstd

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates" / "train" / "tests" / "fixtures" / "grpo_loss.json"

G, GROUPS, T = 4, 2, 6  # generations per prompt, prompts, completion length (padded)
B = G * GROUPS


def advantages(rewards: torch.Tensor, scale: str) -> tuple[torch.Tensor, torch.Tensor]:
    """TRL 1.16's `sum_then_normalize` branch, verbatim in substance."""
    mean_grouped = torch.nanmean(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
    if scale in ("group", "none"):
        std = nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G, dim=0)
    else:
        std = nanstd(rewards).expand_as(rewards)
    adv = rewards - mean_grouped
    if scale != "none":
        adv = adv / (std + 1e-4)
    is_std_zero = torch.isclose(std, torch.zeros_like(std))
    return torch.nan_to_num(adv, nan=0.0), is_std_zero


class Accelerator:
    num_processes = 1

    def reduce(self, x, reduction="sum"):
        return x

    def gather(self, x):
        return x

    gather_for_metrics = gather


def stand_in(loss_type: str, beta: float, logps: torch.Tensor, entropies: torch.Tensor):
    """The attributes `_compute_loss` reads, as a GRPOTrainer configured with these options has them."""
    s = types.SimpleNamespace()
    s.loss_type, s.beta = loss_type, beta
    s.epsilon_low, s.epsilon_high = 0.2, 0.28
    s.importance_sampling_level = "token"
    s.top_entropy_quantile = 1.0
    s.off_policy_mask_threshold = None
    s.use_vllm = False
    s.vllm_importance_sampling_correction = False
    s.aux_loss_enabled = False
    s._entropy_bonus_enabled = False
    s.use_adaptive_entropy = False
    s.max_completion_length = T
    s.current_gradient_accumulation_steps = 2
    s.model = types.SimpleNamespace(training=True)
    s.args = types.SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=2)
    s.accelerator = Accelerator()
    s._metrics = {"train": collections.defaultdict(list), "eval": collections.defaultdict(list)}
    s._get_per_token_logps_and_entropies = lambda *a, **k: (logps, entropies, None)
    s.get_high_entropy_mask = None
    return s


def case(loss_type: str, scale: str, beta: float, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 3, (B,), generator=g).double() / 2
    rewards[0:G] = 1.0  # one group with equal rewards: zero std, advantages 0
    lengths = torch.randint(2, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3 - 0.05
    logps = (old + (torch.rand(B, T, generator=g, dtype=torch.float64) - 0.5) * 0.8).requires_grad_(True)
    ref = old + (torch.rand(B, T, generator=g, dtype=torch.float64) - 0.5) * 0.5
    adv, is_std_zero = advantages(rewards, scale)
    num_items = mask.sum().double()
    inputs = {
        "prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask,
        "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
        "num_items_in_batch": num_items,
    }
    entropies = torch.zeros(B, T, dtype=torch.float64)
    s = stand_in(loss_type, beta, logps, entropies)
    loss = GRPOTrainer._compute_loss(s, None, inputs)
    loss.backward()
    m = s._metrics["train"]
    return {
        "loss_type": loss_type, "scale_rewards": scale, "beta": beta,
        "num_generations": G, "epsilon": 0.2, "epsilon_high": 0.28, "max_completion_length": T,
        "gradient_accumulation_steps": 2, "steps_per_generation": 2, "num_items_in_batch": float(num_items),
        "rewards": rewards.tolist(), "mask": mask.tolist(), "old_logps": old.tolist(),
        "logps": logps.detach().tolist(), "ref_logps": ref.tolist(),
        "advantages": adv.tolist(), "std_is_zero": is_std_zero.tolist(),
        "loss": loss.item(), "grad_logps": logps.grad.tolist(),
        "kl": m["kl"][0] if beta else None,
        "clip_ratio_low_mean": m["clip_ratio/low_mean"][0], "clip_ratio_high_mean": m["clip_ratio/high_mean"][0],
        "clip_ratio_region_mean": m["clip_ratio/region_mean"][0],
        "clip_ratio_low_min": m["clip_ratio/low_min"][0], "clip_ratio_high_max": m["clip_ratio/high_max"][0],
    }


def main():
    cases = []
    seed = 0
    for loss_type in ["grpo", "bnpo", "dr_grpo", "dapo"]:
        for scale in ["group", "batch", "none"]:
            for beta in [0.0, 0.04]:
                cases.append(case(loss_type, scale, beta, seed))
                seed += 1
    OUT.write_text(json.dumps({"generated_by": {"script": "tools/make_grpo_golden.py", "trl": trl.__version__,
                                                "torch": torch.__version__}, "cases": cases}) + "\n")
    print(f"wrote {OUT}: {len(cases)} cases")


if __name__ == "__main__":
    main()
