"""Simulated labelers: a real sentiment scorer stands in for a person.

The policy never sees this scorer; it only ever sees the reward model trained from the
labeler's best-of-k picks. The labeler's own score is also the "true score" in evaluation.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional


@dataclass
class Pick:
    best: Optional[int]      # index of the chosen sample, None = "can't tell"
    scores: list[float]      # the labeler's true score of each sample


class VaderLabeler:
    """Picks the most positive continuation by VADER's compound score (-1..1)."""

    def __init__(self, tie_margin: float = 0.0, on_tie: str = "random", noise: float = 0.0, seed: int = 0):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()
        self.tie_margin, self.on_tie, self.noise = tie_margin, on_tie, noise
        self._rng = random.Random(seed)

    def score(self, texts: list[str]) -> list[float]:
        return [self._analyzer.polarity_scores(t)["compound"] for t in texts]

    def pick(self, texts: list[str]) -> Pick:
        scores = self.score(texts)
        if self.noise and self._rng.random() < self.noise:
            return Pick(self._rng.randrange(len(texts)), scores)
        top = max(scores)
        tied = [i for i, s in enumerate(scores) if s >= top - self.tie_margin]
        if len(tied) > 1 and self.on_tie == "cant_tell":
            return Pick(None, scores)
        return Pick(self._rng.choice(tied), scores)


def make_labeler(cfg) -> VaderLabeler:
    """From a LabelerConfig."""
    return VaderLabeler(cfg.tie_margin, cfg.on_tie, cfg.noise, cfg.seed)
