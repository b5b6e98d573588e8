"""Bad settings fail at launch with the setting's name, before any model is loaded."""
import subprocess
import sys

import pytest

from rlhf_dist.config import ConfigError, derived, dump_yaml, load_config


def test_defaults_and_overrides(tmp_path):
    cfg = load_config("configs/default.yaml", ["ppo.lr=1e-5", "run.name=x", "data.sentence_end_texts=[.]"])
    assert cfg.ppo.lr == 1e-5 and cfg.run.name == "x" and cfg.data.sentence_end_texts == (".",)
    assert derived(cfg).num_updates == 45
    again = tmp_path / "c.yaml"
    again.write_text(dump_yaml(cfg))
    assert load_config(str(again)) == cfg


@pytest.mark.parametrize("override, words", [
    (["ppo.lrr=1"], "unknown setting ppo.lrr"),
    (["nosection.x=1"], "unknown setting nosection"),
    (["ppo.lr=fast"], "ppo.lr: expected a number"),
    (["ppo.batch_size=2.5"], "ppo.batch_size: expected an integer"),
    (["ppo.whiten_rewards=3"], "ppo.whiten_rewards: expected true/false"),
    (["resources.num_rollout_actors=3"], "does not split across resources.num_rollout_actors"),
    (["ppo.num_minibatches=3"], "does not split into ppo.num_minibatches"),
    (["ppo.num_minibatches=4"], "ppo.whiten_rewards needs minibatches of >= 8"),
    (["sampling.truncate_after=16"], "sampling.truncate_after"),
    (["model.trainable_layers=none"], "model.trainable_layers"),
    (["ppo"], "is not of the form"),
])
def test_bad_settings_name_the_setting(override, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.").replace("(", r"\(")):
        load_config("configs/default.yaml", override)


def test_cli_rejects_bad_setting_quickly():
    proc = subprocess.run([sys.executable, "-m", "cluster.entrypoint", "--config", "configs/default.yaml",
                           "ppo.batch_size=15", "resources.num_rollout_actors=2"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "ppo.batch_size (15) does not split across resources.num_rollout_actors (2)" in proc.stderr
    assert "Loading" not in proc.stderr + proc.stdout                 # failed before any model


def test_dataset_too_small_names_the_setting(tmp_path):
    from cluster.train import prepare_task

    text = tmp_path / "small.txt"
    text.write_text(" ".join(f"Line {i} is spoken here. And so on." for i in range(300)))
    cfg = load_config("configs/tiny.yaml", [f"data.source={text}", "reward.num_labels=5000",
                                            "run.eval_queries=2", "reward.num_eval_labels=2"])
    with pytest.raises(ConfigError, match="train queries; reward.num_labels/ppo.batch_size need 5000"):
        prepare_task(cfg)
    cfg = load_config("configs/tiny.yaml", [f"data.source={text}", "run.eval_queries=500"])
    with pytest.raises(ConfigError, match="held-out queries; run.eval_queries/reward.num_eval_labels need 500"):
        prepare_task(cfg)
