"""Reward-model training (PAPER.md section 2): best-of-k softmax loss, one epoch, TF Adam
with the LR annealed linearly to 0 over the labels, gain and bias trainable during training
and set by normalisation before and after (mean 0, std 1 on samples of the initial policy)."""
from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch

from rlhf_dist.config import ModelConfig, RewardConfig
from rlhf_dist.experience import Comparison, Weights
from rlhf_dist.models import set_torch_threads
from rlhf_dist.optim import linear_anneal, make_optimizer, set_lr
from rlhf_dist.reward_math import best_of_k_loss, normalisation
from rlhf_dist.reward_model import build_reward_model
from rlhf_dist.sampling import concat_tokens


def stack_comparisons(comparisons: list[Comparison]) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """(tokens (n*k, Q+R), features (n*k, Q+R, C) or None, best (n,))."""
    k = comparisons[0].response_tokens.shape[0]
    queries = torch.stack([c.query_tokens for c in comparisons]).repeat_interleave(k, dim=0)
    responses = torch.cat([c.response_tokens for c in comparisons])
    features = None
    if all(c.trunk_features is not None for c in comparisons):
        features = torch.cat([c.trunk_features for c in comparisons])
    best = torch.tensor([c.best for c in comparisons])
    return concat_tokens(queries, responses), features, best


class RewardTrainer:
    def __init__(self, model_cfg: ModelConfig, reward_cfg: RewardConfig, seed: int, torch_threads: int):
        set_torch_threads(torch_threads)
        self.cfg = reward_cfg
        self.model = build_reward_model(model_cfg, seed=seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.version = 0

    @torch.no_grad()
    def normalise(self, tokens: torch.Tensor, features: Optional[torch.Tensor], batch_size: int = 64) -> dict:
        """Reset gain/bias to (1, 0), measure r on initial-policy samples, set mean 0 / std 1."""
        self.model.set_normalisation(1.0, 0.0)
        raw = torch.cat([self.model(tokens[i:i + batch_size],
                                    None if features is None else features[i:i + batch_size])
                         for i in range(0, tokens.shape[0], batch_size)])
        gain, bias = normalisation(raw)
        self.model.set_normalisation(gain, bias)
        return {"gain": gain, "bias": bias, "raw_mean": raw.mean().item(), "raw_std": raw.std(unbiased=False).item()}

    def train(self, comparisons: list[Comparison], progress: Optional[Callable[[int, int, float], None]] = None) -> dict:
        """One pass (reward.epochs) over the comparisons in a random order."""
        start = time.perf_counter()
        optimizer = make_optimizer(self.model.trainable_parameters(), self.cfg.lr, self.cfg.adam_eps, self.cfg.tf_adam)
        n, bs = len(comparisons), self.cfg.batch_size
        total = n * self.cfg.epochs
        losses, accs, seen = [], [], 0
        for epoch in range(self.cfg.epochs):
            order = torch.randperm(n, generator=self.generator).tolist()
            for i in range(0, n, bs):
                batch = [comparisons[j] for j in order[i:i + bs]]
                tokens, features, best = stack_comparisons(batch)
                logits = self.model(tokens, features).view(len(batch), -1)      # (b, k)
                loss, correct = best_of_k_loss(logits, best)
                set_lr(optimizer, linear_anneal(self.cfg.lr, seen, total))       # by labels consumed
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                seen += len(batch)
                losses.append(loss.item())
                accs.append(correct.mean().item())
                if progress:
                    progress(seen, total, loss.item())
        self.version += 1
        tail = max(1, len(losses) // 4)
        return {"reward/loss_first": sum(losses[:tail]) / tail, "reward/loss_last": sum(losses[-tail:]) / tail,
                "reward/train_acc_last": sum(accs[-tail:]) / tail, "reward/steps": len(losses),
                "reward/labels": n, "reward/train_s": time.perf_counter() - start, "reward/version": self.version}

    @torch.no_grad()
    def evaluate(self, comparisons: list[Comparison], batch_size: int = 16) -> dict:
        """Loss and how often the labeler's pick is ranked first (chance = 1/k)."""
        if not comparisons:
            return {"reward/eval_acc": math.nan, "reward/eval_loss": math.nan, "reward/eval_n": 0}
        losses, correct = [], []
        for i in range(0, len(comparisons), batch_size):
            batch = comparisons[i:i + batch_size]
            tokens, features, best = stack_comparisons(batch)
            logits = self.model(tokens, features).view(len(batch), -1)
            loss, c = best_of_k_loss(logits, best)
            losses.append(loss.item() * len(batch))
            correct.append(c)
        c = torch.cat(correct)
        return {"reward/eval_acc": c.mean().item(), "reward/eval_acc_se": (c.std(unbiased=True) / math.sqrt(len(c))).item(),
                "reward/eval_loss": sum(losses) / len(c), "reward/eval_n": len(c)}

    def weights(self) -> Weights:
        return Weights.from_torch(self.version, self.model.trainable_state())

    def load_weights(self, weights: Weights) -> int:
        self.model.load_trainable_state(weights.to_torch())
        self.version = weights.version
        return self.version

    def save(self, folder: str, meta: Optional[dict] = None) -> str:
        self.model.save(folder, meta)
        return folder

    def ready(self) -> bool:
        return True
