"""The online loop's arithmetic with hand-computed values (rlhf_dist/online.py)."""
import math

import pytest
import torch

from rlhf_dist import online
from rlhf_dist.config import ConfigError, load_config


def test_fit_steps_are_evenly_spaced_and_start_before_ppo():
    assert online.fit_steps(45, 4) == [0, 11, 22, 33]          # floor(45 i / 4)
    assert online.fit_steps(6, 3) == [0, 2, 4]
    assert online.fit_steps(10, 1) == [0]


def test_labels_due_uniform_and_front_loaded():
    # 100 labels, half before the first fit, the rest until the last fit (update 4 of 6)
    due = lambda step, schedule: online.labels_due(step, 6, 100, 0.5, schedule, 3)
    assert [due(s, "uniform") for s in range(7)] == [50, 62, 75, 88, 100, 100, 100]
    # front-loaded: share x (2 - x) at x = step / 4: 0.4375, 0.75, 0.9375 of the other 50
    assert [due(s, "front_loaded") for s in range(7)] == [50, 72, 88, 97, 100, 100, 100]
    assert online.labels_due(0, 6, 100, 0.5, "uniform", 1) == 100   # one fit: all up front


def test_heldout_split_is_exact():
    held = [i for i in range(16) if online.is_heldout(i, 0.125)]
    assert held == [7, 15]
    assert sum(online.is_heldout(i, 0.125) for i in range(100)) == 12   # floor(100 / 8)
    assert not any(online.is_heldout(i, 0.0) for i in range(50))


def test_validation_order_is_a_fixed_permutation():
    orders = [online.validation_order(i, seed=3) for i in range(20)]
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders)
    assert orders == [online.validation_order(i, seed=3) for i in range(20)]   # reproducible
    assert len({tuple(o) for o in orders}) > 1                                # not always the same


def test_current_beats_initial_counts_cant_tell_half():
    picks = [1, None, 0, 3]
    positions = [[1, 3], [0, 2], [1, 2], [0, 3]]
    assert online.current_beats_initial(picks, positions) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert math.isnan(online.current_beats_initial([], []))


def test_comparison_from_tokens_pads_like_the_rollout():
    c = online.comparison_from_tokens([5, 6], [[1], [2, 3], [7, 8, 9], [4, 4]], 2, query_length=4,
                                      response_length=3, pad_id=99, policy_version=7)
    assert c.query_tokens.tolist() == [99, 99, 5, 6]                           # left-padded
    assert c.response_tokens.tolist() == [[1, 99, 99], [2, 3, 99], [7, 8, 9], [4, 4, 99]]   # right-padded
    assert c.best == 2 and c.policy_version == 7 and c.trunk_features is None
    with pytest.raises(ValueError, match="sampling.response_length=3"):
        online.comparison_from_tokens([5], [[1, 2, 3, 4]] * 4, 0, 4, 3, 99)


@pytest.mark.parametrize("override,fragment", [
    ("online.schedule=backloaded", "online.schedule must be one of"),
    ("online.retrain=sometimes", "online.retrain must be"),
    ("online.num_fits=99", "online.num_fits must be in [1, 3]"),
    ("online.labels=8", "fewer than reward.batch_size"),
    ("online.ingest_address=nohostport", "online.ingest_address must be host:port"),
    ("online.heldout_fraction=0.7", "online.heldout_fraction must be in"),
])
def test_online_settings_fail_at_launch(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        load_config("configs/tiny.yaml", ["online.enabled=true", override])


def test_online_settings_are_ignored_when_off():
    cfg = load_config("configs/tiny.yaml", ["online.schedule=backloaded"])
    assert not cfg.online.enabled
