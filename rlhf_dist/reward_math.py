"""Reward-model math (PAPER.md section 2): best-of-k loss and normalisation."""
from __future__ import annotations

import math

import torch


def best_of_k_loss(logits: torch.Tensor, best: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax cross-entropy over k candidates: -log(e^{r_best} / sum_i e^{r_i}).

    logits (B, k) rewards of the k candidates; best (B,) index of the labeler's pick.
    Returns (mean loss, per-comparison accuracy of ranking the pick first (B,)).
    Identical candidates give ln k, whatever the pick.
    """
    loss = torch.nn.functional.cross_entropy(logits, best)
    correct = (logits.argmax(dim=1) == best).float()
    return loss, correct


def normalisation(rewards: torch.Tensor, target_mean: float = 0.0, target_std: float = 1.0
                  ) -> tuple[float, float]:
    """Gain and bias that map raw rewards (measured at gain 1, bias 0) to (mean, std) targets.

    Population std, sqrt(E[r^2] - mu^2), as train_reward.py. gain = sigma_T / sigma,
    bias = mu_T - gain * mu.
    """
    mu = rewards.double().mean().item()
    sigma = math.sqrt(max((rewards.double() ** 2).mean().item() - mu * mu, 0.0))
    if sigma == 0.0:
        raise ValueError("reward model gives the same reward to every sample; cannot normalise")
    gain = target_std / sigma
    return gain, target_mean - gain * mu
