import math

import pytest
import torch

from rlhf_dist.optim import TFAdam, linear_anneal


def test_tf_adam_first_steps_by_hand():
    p = torch.nn.Parameter(torch.tensor([1.0]))
    opt = TFAdam([p], lr=0.1, eps=1e-5)
    g = 1e-4   # small gradients: where eps placement matters most
    p.grad = torch.tensor([g])
    opt.step()
    # t=1: m = 0.1 g, v = 0.001 g^2; step = lr * sqrt(1-0.999)/(1-0.9) * m / (sqrt(v) + eps)
    m, v = 0.1 * g, 0.001 * g * g
    expected = 1.0 - 0.1 * math.sqrt(0.001) / 0.1 * m / (math.sqrt(v) + 1e-5)
    assert p.item() == pytest.approx(expected, rel=1e-6)
    # PyTorch Adam puts eps after the bias correction: a larger first step here
    q = torch.nn.Parameter(torch.tensor([1.0]))
    torch_opt = torch.optim.Adam([q], lr=0.1, eps=1e-5)
    q.grad = torch.tensor([g])
    torch_opt.step()
    # TF: sqrt(v) = 3.2e-6 against eps 1e-5 -> a step of ~0.24 lr; PyTorch: ~lr
    assert abs(1.0 - q.item()) > 3 * abs(1.0 - p.item())


def test_linear_anneal():
    assert linear_anneal(1e-4, 0, 10) == 1e-4
    assert linear_anneal(1e-4, 5, 10) == pytest.approx(5e-5)
    assert linear_anneal(1e-4, 10, 10) == 0.0
