"""PPO math of the paper (section 3 of PAPER.md): pure functions over tensors.

Shapes: B = episodes in a (mini)batch, R = response length. No config objects, no devices,
no Ray here; every function is tested against hand-computed values.
"""
from __future__ import annotations

import torch


def whiten(x: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over all elements, population variance (tf.nn.moments).

    With shift_mean=False the mean is added back: rewards are rescaled, not centred.
    """
    mean = x.mean()
    var = ((x - mean) ** 2).mean()
    out = (x - mean) * torch.rsqrt(var + eps)
    return out if shift_mean else out + mean


def kl_penalised_rewards(score: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards r_t = -beta * (log pi - log rho)_t, score added at the last index.

    score (B,), logprobs/ref_logprobs (B, R). Every response token carries the KL term,
    also those after the truncation point (paper eq. 2; train_policy.py L149-154).
    Returns (rewards (B, R), kl (B, R)).
    """
    kl = logprobs - ref_logprobs                         # (B, R) k1 estimator
    rewards = -beta * kl
    rewards[:, -1] += score
    return rewards, kl


def gae_advantages(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation with V = 0 after the last token.

    rewards, values (B, R). Returns (advantages, returns) with returns = A + V computed
    before any whitening of A.
    """
    R = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(R)):
        next_value = values[:, t + 1] if t + 1 < R else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    return advantages, advantages + values


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                cliprange: float) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate: mean(max(-A * ratio, -A * clip(ratio, 1 - c, 1 + c)))."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = torch.max(unclipped, clipped).mean()
    stats = {
        "clipfrac": (clipped > unclipped).float().mean().item(),
        "approxkl": 0.5 * (log_ratio.detach() ** 2).mean().item(),
        "ratio_mean": ratio.detach().mean().item(),
    }
    return loss, stats


def value_loss(vpred: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               cliprange_value: float) -> tuple[torch.Tensor, dict]:
    """0.5 * mean(max((v - R)^2, (clip(v, V_old +- c) - R)^2)), clipped around rollout values."""
    vpred_clipped = old_values + torch.clamp(vpred - old_values, -cliprange_value, cliprange_value)
    losses = (vpred - returns) ** 2
    losses_clipped = (vpred_clipped - returns) ** 2
    loss = 0.5 * torch.max(losses, losses_clipped).mean()
    stats = {
        "clipfrac": (losses_clipped > losses).float().mean().item(),
        "error": ((vpred.detach() - returns) ** 2).mean().item(),
    }
    return loss, stats


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    var = target.var(unbiased=False)
    return float("nan") if var == 0 else float(1.0 - (target - pred).var(unbiased=False) / var)


class AdaptiveKLController:
    """beta <- beta * (1 + clip(KL/target - 1, -0.2, 0.2) * n / horizon).

    The official code's form (train_policy.py L115-124): n is the number of samples
    consumed by the update (the PPO batch), so the paper's K_beta = batch / horizon.
    KL is the batch mean of the per-sequence sum of per-token KL. Called after the
    update, so the beta used in a batch's rewards is the one from before it.
    Stale samples count like fresh ones: n is what the learner consumed.
    """

    def __init__(self, init_beta: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_beta, target, horizon

    def update(self, kl: float, n_samples: int) -> float:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_samples / self.horizon
        return self.value


class FixedKLController:
    def __init__(self, beta: float):
        self.value = beta

    def update(self, kl: float, n_samples: int) -> float:
        return self.value
