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
from rlhf_dist.models import new_reward_head, set_torch_threads
from rlhf_dist import online
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
        self.seed = seed
        self.version = 0
        # Online mode (attach_ingest): labels read by cursor, kept for refits from scratch.
        self.initial_state = self.model.trainable_state()
        self.reader = None
        self.labels: dict[str, list[Comparison]] = {online.TRAIN: [], online.HELDOUT: [], online.VALIDATION: []}
        self.consumed: list[tuple[int, str]] = []     # (sequence, task_id) of every label read
        self.validation: list[tuple[Optional[int], list[int], int]] = []   # (pick, pi positions, pi version)
        self.cant_tell = 0
        self.trainable: list[Comparison] = []          # train + validation labels, in arrival order
        self.trained_upto = 0                          # how many of them a fit has seen
        self.norm_tokens = self.norm_features = None

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

    # -- online: labels from the ingest service --------------------------------------------
    def attach_ingest(self, address: str, token: str, query_length: int, response_length: int,
                      pad_id: int, cursor: int = 0) -> int:
        """Read labels from the service from `cursor` on; a resumed job passes its saved cursor
        and the labels before it are read again (a refit from scratch needs all of them)."""
        from rlhf_dist.ingest.client import IngestClient

        self.reader = IngestClient(address, token, max_retries=3)
        self.shape = (query_length, response_length, pad_id)
        self.cursor = 0
        while self.cursor < cursor:
            self.pull(limit=cursor - self.cursor)
        return self.cursor

    def pull(self, limit: int = 1 << 30) -> dict:
        """Read every label past the cursor (up to `limit`); an unreachable service is not an
        error: the labels are read on the next call. Returns counts so far."""
        from rlhf_dist.ingest.validate import IngestError

        new_validation = 0
        try:
            while limit > 0:
                items, next_cursor = self.reader.read_labels(self.cursor, min(1000, limit))
                if not items:
                    break
                for item in items:
                    new_validation += self._keep(item)
                limit -= len(items)
                self.cursor = next_cursor
            reachable = True
        except IngestError as err:
            if not err.retryable:
                raise
            reachable = False
        return {"labels/read": len(self.consumed), "labels/cursor": self.cursor, "labels/cant_tell": self.cant_tell,
                "labels/train": len(self.labels[online.TRAIN]), "labels/heldout": len(self.labels[online.HELDOUT]),
                "labels/validation": len(self.labels[online.VALIDATION]), "labels/new_validation": new_validation,
                "labels/ingest_reachable": reachable}

    def _keep(self, item) -> int:
        task, label = item.task, item.label
        self.consumed.append((item.sequence, task.task_id))
        kind = task.metadata.get("kind", online.TRAIN)
        versions = [int(v) for v in task.metadata.get("policy_versions", "0").split(",")]
        if kind == online.VALIDATION:
            positions = [int(p) for p in task.metadata["current_positions"].split(",")]
            self.validation.append((None if label.cant_tell else label.chosen_index, positions, max(versions)))
        if label.cant_tell:
            self.cant_tell += 1
            return int(kind == online.VALIDATION)
        q, r, pad = self.shape
        comparison = online.comparison_from_tokens(task.query_token_ids, task.sample_token_ids, label.chosen_index,
                                                   q, r, pad, max(versions))
        self.labels[kind].append(comparison)
        if kind != online.HELDOUT:   # validation tuples are trained on too (paper)
            self.trainable.append(comparison)
        return int(kind == online.VALIDATION)

    def validation_outcomes(self, start: int = 0) -> list[tuple[Optional[int], list[int], int]]:
        return self.validation[start:]

    def consumed_labels(self) -> list[tuple[int, str]]:
        return list(self.consumed)

    def set_norm_samples(self, tokens: torch.Tensor, features: Optional[torch.Tensor]) -> int:
        """Untruncated samples of the initial policy, for normalisation before and after each fit."""
        self.norm_tokens, self.norm_features = tokens, features
        return tokens.shape[0]

    @torch.no_grad()
    def _fill_features(self, comparisons: list[Comparison], batch_size: int = 64) -> None:
        """Trunk features of labels read from the service, once: the trunk is frozen, so they
        serve every later fit."""
        todo = [c for c in comparisons if c.trunk_features is None]
        if self.model.lm.trunk is None or not todo:
            return
        for i in range(0, len(todo), batch_size // 4):
            chunk = todo[i:i + batch_size // 4]
            tokens, _, _ = stack_comparisons(chunk)
            feats = self.model.lm.trunk_features(tokens)
            k = chunk[0].response_tokens.shape[0]
            for j, c in enumerate(chunk):
                c.trunk_features = feats[j * k:(j + 1) * k]

    def _reset(self) -> None:
        """Back to the initial backbone with a new random head (gain 1, bias 0)."""
        self.model.load_trainable_state(self.initial_state)
        fresh = new_reward_head(self.model.lm.hidden_size, torch.Generator().manual_seed(self.seed + self.version + 1))
        with torch.no_grad():
            self.model.head.weight.copy_(fresh.weight)
            self.model.head.bias.copy_(fresh.bias)

    def fit(self, from_scratch: bool = True) -> dict:
        """One online fit: read new labels, then (from scratch: on all of them; continued: on
        the ones no fit has seen) one epoch, normalised before and after on initial-policy
        samples, accuracy on the held-out labels. Publishes a new version."""
        counts = self.pull()
        trainable = list(self.trainable)
        batch = trainable if from_scratch else trainable[self.trained_upto:]
        if len(batch) < self.cfg.batch_size:
            return {**counts, "reward/skipped": 1.0, "reward/version": self.version}
        self._fill_features(trainable + self.labels[online.HELDOUT])
        if from_scratch:
            self._reset()
        before = self.normalise(self.norm_tokens, self.norm_features)
        stats = self.train(batch)
        after = self.normalise(self.norm_tokens, self.norm_features)
        stats.update(self.evaluate(self.labels[online.HELDOUT]))
        self.trained_upto = len(trainable)
        stats.update(counts)
        stats.update({"reward/gain": after["gain"], "reward/bias": after["bias"], "reward/gain_before": before["gain"],
                      "reward/fit_labels": len(batch), "reward/skipped": 0.0})
        return stats

    def online_state(self) -> dict:
        return {"cursor": self.cursor if self.reader else 0, "trained_upto": self.trained_upto}

    def load_online_state(self, state: dict) -> None:
        self.trained_upto = state["trained_upto"]

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
