"""Adam with TensorFlow's epsilon placement (PAPER.md section 0, item 10).

TF: p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps), eps outside the bias
correction. PyTorch puts eps after correcting v, which makes the first updates several
times larger at eps = 1e-5 (approxkl 0.0024 vs 0.00037 in the reproduction's table).
"""
from __future__ import annotations

import math

import torch


class TFAdam(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-5):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                state["step"] += 1
                t, m, v = state["step"], state["m"], state["v"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                step_size = group["lr"] * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
                p.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-step_size)


def make_optimizer(params, lr: float, eps: float, tf_style: bool) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    return TFAdam(params, lr=lr, eps=eps) if tf_style else torch.optim.Adam(params, lr=lr, eps=eps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def linear_anneal(base_lr: float, done: int, total: int) -> float:
    """lr * (1 - done / total): linear to 0 (by PPO update, or by labels consumed)."""
    return base_lr * max(0.0, 1.0 - done / total)
