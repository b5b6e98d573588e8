"""Model sources and the split into frozen trunk and trainable top."""
import pytest
import torch

from rlhf_dist.config import ModelConfig, load_config
from rlhf_dist.models import SplitLM, attention_inputs, build_policy, load_causal_lm, resolve_model_dir


def test_local_folder_loads_like_the_named_model():
    cfg = load_config("configs/tiny.yaml").model
    folder = resolve_model_dir(cfg)                                     # converted/built once
    local = ModelConfig(name=str(folder), trainable_layers=1)
    a, b = build_policy(cfg), build_policy(local)
    tokens = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(a.lm.hidden(tokens), b.lm.hidden(tokens))


def test_split_trains_only_the_top_and_matches_the_full_model():
    cfg = load_config("configs/tiny.yaml").model
    lm = load_causal_lm(cfg)
    split = SplitLM(lm, 1)
    trainable = {id(p) for p in split.trainable_parameters()}
    assert all(p.requires_grad == (id(p) in trainable) for p in lm.parameters())
    assert not lm.get_input_embeddings().weight.requires_grad        # tied embedding/head frozen
    tokens = torch.tensor([[11, 12, 13, 14, 15]])
    with torch.no_grad():
        assert torch.allclose(split.logits(split.hidden(tokens)), lm(tokens).logits, atol=1e-5)
    full = SplitLM(load_causal_lm(cfg), "all")
    assert full.trunk is None and all(p.requires_grad for p in full.full.parameters())


def test_positions_are_the_exclusive_cumsum_of_the_mask():
    pad = 99
    ids, mask, positions = attention_inputs(torch.tensor([[pad, pad, 4, 5, 6], [1, 2, 3, 4, 5]]), pad)
    assert positions.tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert mask.tolist()[0] == [False, False, True, True, True]
    assert ids.tolist()[0][:2] == [0, 0]                                 # pads never reach the embedding


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model_dir(ModelConfig(name=str(tmp_path)))
