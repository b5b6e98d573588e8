"""PPO math against hand-computed values and naive loops (PAPER.md section 7)."""
import math

import pytest
import torch

from rlhf_dist import ppo


def test_whiten_population_variance_and_mean_shift():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    # mean 3.5, population variance 17.5 / 6 = 2.916666...
    std = math.sqrt(17.5 / 6 + 1e-8)
    expected = (x - 3.5) / std
    assert torch.allclose(ppo.whiten(x), expected, atol=1e-6)
    assert torch.allclose(ppo.whiten(x, shift_mean=False), expected + 3.5, atol=1e-6)
    assert ppo.whiten(x, shift_mean=False).mean().item() == pytest.approx(3.5, abs=1e-6)


def test_kl_penalised_rewards_layout():
    score = torch.tensor([2.0, -1.0])
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-0.5, -1.0, -1.0]])
    rewards, kl = ppo.kl_penalised_rewards(score, logp, ref, beta=0.1)
    assert torch.allclose(kl, torch.tensor([[0.5, 0.0, -1.0], [-0.5, 0.0, 0.0]]))
    # -beta * kl everywhere, score only at the last index
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.0, 0.1 + 2.0], [0.05, 0.0, -1.0]]))


def naive_gae(rewards, values, gamma, lam):
    B, T = rewards.shape
    adv = torch.zeros(B, T)
    for b in range(B):
        for t in range(T):
            total = 0.0
            for l in range(T - t):
                v_next = values[b, t + l + 1] if t + l + 1 < T else 0.0
                delta = rewards[b, t + l] + gamma * v_next - values[b, t + l]
                total += (gamma * lam) ** l * delta
            adv[b, t] = total
    return adv


def test_gae_against_naive_loop_and_hand_values():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.4]])
    adv, ret = ppo.gae_advantages(rewards, values, gamma=1.0, lam=0.95)
    # by hand: d2 = 1 - 0.4 = 0.6; d1 = 0 + 0.4 - 0.2 = 0.2; d0 = 0 + 0.2 - 0.5 = -0.3
    # A2 = 0.6; A1 = 0.2 + 0.95*0.6 = 0.77; A0 = -0.3 + 0.95*0.77 = 0.4315
    assert torch.allclose(adv, torch.tensor([[0.4315, 0.77, 0.6]]), atol=1e-6)
    assert torch.allclose(ret, adv + values)
    g = torch.Generator().manual_seed(0)
    r, v = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    adv, _ = ppo.gae_advantages(r, v, gamma=0.99, lam=0.9)
    assert torch.allclose(adv, naive_gae(r, v, 0.99, 0.9), atol=1e-5)


def test_policy_loss_clipping_by_hand():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.7]]))       # ratios
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    loss, stats = ppo.policy_loss(new, old, adv, cliprange=0.2)
    # per element max(-A r, -A clip(r)): [-1.2, -0.5, 1.1, 0.8]
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.1 + 0.8) / 4, abs=1e-6)
    # the clipped term wins for r=1.5 with A>0 and for r=0.7 with A<0
    assert stats["clipfrac"] == pytest.approx(0.5)
    # approxkl = 0.5 * mean(log r ^ 2)
    expected_kl = 0.5 * sum(math.log(r) ** 2 for r in (1.5, 0.5, 1.1, 0.7)) / 4
    assert stats["approxkl"] == pytest.approx(expected_kl, rel=1e-5)


def test_policy_loss_is_minus_mean_advantage_at_ratio_one():
    lp = torch.randn(3, 5)
    adv = torch.randn(3, 5)
    loss, stats = ppo.policy_loss(lp, lp.clone(), adv, 0.2)
    assert loss.item() == pytest.approx(-adv.mean().item(), abs=1e-6)
    assert stats["clipfrac"] == 0.0 and stats["approxkl"] == 0.0


def test_value_loss_clipped_around_rollout_values():
    vpred = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[0.5, 0.1]])
    ret = torch.tensor([[2.0, 0.0]])
    loss, stats = ppo.value_loss(vpred, old, ret, cliprange_value=0.2)
    # elem 0: unclipped (1-2)^2 = 1; clipped v=0.7 -> (0.7-2)^2 = 1.69 -> max 1.69
    # elem 1: unclipped 0; clipped v=-0.1 (within 0.2 of 0.1? 0.0 is within, so v=0.0) -> 0
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.0) / 2, abs=1e-6)
    assert stats["clipfrac"] == pytest.approx(0.5)
    assert stats["error"] == pytest.approx((1.0 + 0.0) / 2)


def test_adaptive_kl_controller_official_form():
    # PAPER.md row 12: KL 12, target 6, batch 512, horizon 10000 -> beta * (1 + 0.2 * 0.0512)
    ctl = ppo.AdaptiveKLController(0.15, target=6.0, horizon=10000)
    assert ctl.update(12.0, 512) == pytest.approx(0.15 * (1 + 0.2 * 0.0512))
    ctl = ppo.AdaptiveKLController(0.2, target=6.0, horizon=1000)
    assert ctl.update(5.4, 100) == pytest.approx(0.2 * (1 - 0.1 * 0.1))   # error -0.1, inside the clip
    assert ctl.update(0.0, 100) == pytest.approx(0.2 * 0.99 * (1 - 0.2 * 0.1))   # clipped at -0.2
    fixed = ppo.FixedKLController(0.03)
    assert fixed.update(100.0, 512) == 0.03
