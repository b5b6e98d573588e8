import math

import pytest
import torch

from rlhf_dist.reward_math import best_of_k_loss, normalisation
from rlhf_dist.responses import apply_penalty, has_stop, truncate_responses, truncation_mask


def test_best_of_4_loss_by_hand():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    loss, correct = best_of_k_loss(logits, torch.tensor([3]))
    z = sum(math.exp(v) for v in (0, 1, 2, 3))
    assert loss.item() == pytest.approx(-math.log(math.exp(3) / z), abs=1e-6)
    assert correct.tolist() == [1.0]
    loss, correct = best_of_k_loss(logits, torch.tensor([0]))
    assert loss.item() == pytest.approx(-math.log(1 / z), abs=1e-6)
    assert correct.tolist() == [0.0]


def test_best_of_4_identical_candidates_give_ln4():
    logits = torch.full((3, 4), 0.7)
    loss, _ = best_of_k_loss(logits, torch.tensor([0, 2, 3]))
    assert loss.item() == pytest.approx(math.log(4), abs=1e-6)


def test_normalisation_population_std():
    r = torch.tensor([1.0, 2.0, 3.0, 6.0])
    gain, bias = normalisation(r)
    mu, sigma = 3.0, math.sqrt((1 + 4 + 9 + 36) / 4 - 9)     # population std = sqrt(3.5)
    assert gain == pytest.approx(1 / sigma)
    assert bias == pytest.approx(-mu / sigma)
    out = gain * r + bias
    assert out.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert out.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError):
        normalisation(torch.ones(5))


def test_truncation_keeps_stop_token_and_respects_truncate_after():
    # PAPER.md row 10: stop (13) at 5 and at 17, truncate_after 16 -> cut after 17
    resp = torch.arange(100, 124).unsqueeze(0).clone()
    resp[0, 5] = 13
    resp[0, 17] = 13
    stop = torch.tensor([13])
    mask = truncation_mask(resp, stop, 16)
    assert mask[0, :18].all() and not mask[0, 18:].any()
    out = truncate_responses(resp, stop, 16, pad_id=999)
    assert out[0, 17].item() == 13 and (out[0, 18:] == 999).all()
    assert has_stop(resp, stop, 16).tolist() == [True]
    only_early = resp.clone()
    only_early[0, 17] = 7
    assert has_stop(only_early, stop, 16).tolist() == [False]
    assert truncation_mask(only_early, stop, 16).all()          # nothing cut


def test_several_stop_tokens_and_penalty():
    resp = torch.tensor([[5, 17, 5, 5, 47, 5], [5, 5, 5, 5, 5, 5], [30, 5, 5, 5, 5, 30]])
    stop = torch.tensor([30, 17, 47])
    mask = truncation_mask(resp, stop, 2)
    assert mask.tolist() == [[True] * 5 + [False], [True] * 6, [True] * 6]
    valid = has_stop(resp, stop, 2)
    assert valid.tolist() == [True, False, True]
    scores = apply_penalty(torch.tensor([0.3, 0.9, -0.2]), valid, -1.0)
    assert scores.tolist() == pytest.approx([0.3, -1.0, -0.2])
