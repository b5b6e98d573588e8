"""Online data collection, the parts that are plain arithmetic (PAPER.md section 4).

While PPO runs, comparison tasks are posted on a schedule, the reward model is refit at
evenly spaced updates on all labels so far, and validation tuples (2 samples of the initial
policy, 2 of the current one) measure how often the current policy beats the initial one.
No Ray, no gRPC: the schedule, the split of tasks, the validation rate and the conversion of
stored labels back into token tensors.
"""
from __future__ import annotations

import math
import random
from typing import Optional

import torch

from rlhf_dist.experience import Comparison

TRAIN, HELDOUT, VALIDATION = "train", "heldout", "validation"


def fit_steps(num_updates: int, num_fits: int) -> list[int]:
    """PPO updates after which a fit starts: 0 (before the first update), then evenly spaced
    (the paper: 20 fits over 2M episodes). fit_steps(45, 4) = [0, 11, 22, 34]."""
    return [math.floor(i * num_updates / num_fits) for i in range(num_fits)]


def labels_due(step: int, num_updates: int, total: int, initial_fraction: float, schedule: str,
               num_fits: int) -> int:
    """Tasks that should be posted once update `step` is done (step 0: before the first).

    `initial_fraction` of them come from the initial policy before the first fit; the rest
    are spread until the last fit starts, evenly ('uniform') or with a rate falling linearly
    to 0 ('front_loaded': cumulative share x(2 - x)), so the last fit sees all of them."""
    first = int(total * initial_fraction)
    last_fit = fit_steps(num_updates, num_fits)[-1]
    if last_fit == 0:
        return total
    x = min(max(step, 0), last_fit) / last_fit
    share = x if schedule == "uniform" else x * (2.0 - x)
    return first + round((total - first) * share)


def is_heldout(index: int, heldout_fraction: float) -> bool:
    """Task `index` (0, 1, 2, ...) is held out for accuracy when the running count of held-out
    tasks steps up at it: exactly floor(n * fraction) of the first n are held out."""
    return math.floor((index + 1) * heldout_fraction) > math.floor(index * heldout_fraction)


def validation_order(index: int, seed: int = 0) -> list[int]:
    """Positions of [initial 0, initial 1, current 0, current 1] in validation tuple `index`:
    a fixed shuffle per tuple, so a person cannot learn where the current policy sits."""
    order = list(range(4))
    random.Random(seed * 1_000_003 + index).shuffle(order)
    return order


def current_beats_initial(chosen: list[Optional[int]], current_positions: list[list[int]]) -> float:
    """Share of validation labels whose pick is one of the current policy's samples; a
    "can't tell" (None) counts half. 0.5 when the policy has not moved."""
    if not chosen:
        return math.nan
    wins = [0.5 if c is None else float(c in pos) for c, pos in zip(chosen, current_positions)]
    return sum(wins) / len(wins)


def comparison_from_tokens(query_ids: list[int], sample_ids: list[list[int]], best: int, query_length: int,
                           response_length: int, pad_id: int, policy_version: int = 0) -> Comparison:
    """A stored label back into the tensors the reward model trains on: the query left-padded
    to query_length, each (truncated) sample right-padded to response_length."""
    if len(query_ids) > query_length or any(len(s) > response_length for s in sample_ids):
        raise ValueError(f"label tokens longer than data.query_length={query_length} / "
                         f"sampling.response_length={response_length}")
    query = torch.tensor([pad_id] * (query_length - len(query_ids)) + list(query_ids), dtype=torch.long)
    responses = torch.tensor([list(s) + [pad_id] * (response_length - len(s)) for s in sample_ids],
                             dtype=torch.long)
    return Comparison(query, responses, best, None, policy_version, True)
