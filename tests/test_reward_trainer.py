"""Reward-model training pieces on the tiny model (PAPER.md section 7, rows 8, 9, 22)."""
import torch

from learner.reward_trainer import RewardTrainer
from rlhf_dist.config import load_config
from rlhf_dist.experience import Comparison


def make_comparisons(n, k=4, q=6, r=5, vocab=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [Comparison(torch.randint(0, vocab, (q,), generator=g), torch.randint(0, vocab, (k, r), generator=g),
                       int(torch.randint(0, k, (1,), generator=g))) for _ in range(n)]


def test_normalise_resets_then_sets_mean0_std1():
    cfg = load_config("configs/tiny.yaml")
    trainer = RewardTrainer(cfg.model, cfg.reward, seed=0, torch_threads=1)
    tokens = torch.randint(0, 1000, (64, 11), generator=torch.Generator().manual_seed(1))
    first = trainer.normalise(tokens, None)
    trainer.model.set_normalisation(5.0, 3.0)                          # anything left from before
    second = trainer.normalise(tokens, None)
    assert abs(first["gain"] - second["gain"]) < 1e-6                  # measured from gain 1, bias 0
    with torch.no_grad():
        r = trainer.model(tokens)
    assert abs(r.mean().item()) < 1e-5
    assert abs(r.std(unbiased=False).item() - 1.0) < 1e-5


def test_one_epoch_trains_gain_and_bias_and_counts_versions():
    cfg = load_config("configs/tiny.yaml", ["reward.batch_size=4"])
    trainer = RewardTrainer(cfg.model, cfg.reward, seed=0, torch_threads=1)
    comparisons = make_comparisons(12)
    gain0, bias0 = trainer.model.gain.item(), trainer.model.bias.item()
    stats = trainer.train(comparisons)
    assert stats["reward/steps"] == 3                                  # exactly one pass: 12 / 4
    assert stats["reward/version"] == 1 and trainer.version == 1
    assert trainer.model.gain.item() != gain0 and trainer.model.bias.item() != bias0   # trainable
    ev = trainer.evaluate(comparisons[:8])
    assert ev["reward/eval_n"] == 8 and 0.0 <= ev["reward/eval_acc"] <= 1.0
    w = trainer.weights()
    assert w.version == 1 and {"gain", "bias", "head.weight", "head.bias"} <= set(w.tensors)
