"""resources.placement reaches Ray as the actors' placement group strategy; bad settings are refused."""
import pytest
from ray.util.placement_group import placement_group_table, remove_placement_group

from cluster.topology import ResourceError, actor_bundles, describe_placement, make_placement_group
from rlhf_dist.config import ConfigError, load_config


def test_unknown_placement_is_refused_naming_the_setting():
    with pytest.raises(ConfigError) as e:
        load_config("configs/tiny.yaml", ["resources.placement=diagonal"])
    assert str(e.value) == "resources.placement must be 'pack' or 'spread', got 'diagonal'"


def test_an_actor_that_asks_for_nothing_is_refused():
    with pytest.raises(ConfigError) as e:
        load_config("configs/tiny.yaml", ["resources.learner_cpus=0"])
    assert str(e.value) == ("resources.learner_cpus (0) and resources.learner_gpus (0) must be >= 0 and not both 0 "
                            "(each actor is a placement group bundle, and a bundle cannot be empty)")


def test_one_bundle_per_actor_from_the_config():
    cfg = load_config("configs/tiny.yaml")                              # 2 rollout actors, no GPUs
    assert actor_bundles(cfg.resources) == [{"CPU": 0.5}, {"CPU": 0.5},  # rollout 0, 1
                                            {"CPU": 0.25}, {"CPU": 0.5}, {"CPU": 0.25}]  # scorer, learner, trainer
    gpus = load_config("configs/tiny.yaml", ["resources.rollout_gpus=0.5", "resources.learner_gpus=1",
                                             "resources.num_rollout_actors=1"])
    assert actor_bundles(gpus.resources) == [{"CPU": 0.5, "GPU": 0.5}, {"CPU": 0.25},
                                             {"CPU": 0.5, "GPU": 1.0}, {"CPU": 0.25}]


@pytest.mark.parametrize("placement, strategy", [("pack", "PACK"), ("spread", "SPREAD")])
def test_strategy_reaches_ray(ray_local, placement, strategy):
    cfg = load_config("configs/tiny.yaml", [f"resources.placement={placement}"])
    pg = make_placement_group(ray_local, cfg.resources, name=f"test-{placement}")
    try:
        table = placement_group_table(pg)
        assert table["strategy"] == strategy
        assert table["state"] == "CREATED"
        assert table["name"] == f"test-{placement}"
        assert table["bundles"] == {0: {"CPU": 0.5}, 1: {"CPU": 0.5}, 2: {"CPU": 0.25}, 3: {"CPU": 0.5},
                                    4: {"CPU": 0.25}}
        assert describe_placement(pg) == f"placement group test-{placement}: strategy {strategy}, 5 bundles on 1 node(s)"
    finally:
        remove_placement_group(pg)


def test_group_that_fits_no_node_fails_with_a_message(ray_local):
    # A group no node can hold waits forever in Ray (check_resources catches only totals that
    # are too large, before this): the driver gives up with a message instead.
    cfg = load_config("configs/tiny.yaml", ["resources.learner_cpus=5", "resources.rollout_cpus=0.25",
                                            "resources.num_rollout_actors=1"])
    with pytest.raises(ResourceError) as e:
        make_placement_group(ray_local, cfg.resources, timeout_s=2)
    assert str(e.value) == (
        "the actors' placement group (resources.placement=pack) was not placed within 2s: bundles "
        "[{'CPU': 0.25}, {'CPU': 0.25}, {'CPU': 5.0}, {'CPU': 0.25}] do not fit the nodes (CPU=4); lower "
        "resources.*_cpus/*_gpus so that each actor fits one node, or add nodes")
    assert {t["state"] for t in placement_group_table().values()} == {"REMOVED"}   # nothing left reserved
