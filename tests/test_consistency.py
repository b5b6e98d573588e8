"""Rollout, learner and reference agree at step 0; padding changes nothing (PAPER.md
section 7, rows 1-5), on the tiny model and on the real default model."""
import pytest
import torch

from actors.rollout import RolloutWorker
from actors.scorer import RewardScorer
from learner.ppo_learner import PPOLearner
from rlhf_dist.config import load_config
from rlhf_dist.data import left_pad
from rlhf_dist.models import build_policy, load_tokenizer
from rlhf_dist.reward_model import build_reward_model
from rlhf_dist.sampling import concat_tokens, response_logprobs, response_values

CONFIGS = {
    "tiny": ("configs/tiny.yaml", []),
    "smollm2": ("configs/default.yaml", []),
    "tiny_full_ft": ("configs/tiny.yaml", ["model.trainable_layers=all"]),
}

TEXTS = ["Good morrow, my lord. How fares your grace?", "What light through yonder window breaks?",
         "I am not in the giving vein to-day.", "Now is the winter of our discontent."]


def queries(cfg, tokenizer, n=4):
    ids = [tokenizer.encode(t, add_special_tokens=False)[: cfg.data.query_length] for t in TEXTS[:n]]
    return left_pad(ids, cfg.data.query_length, len(tokenizer))


@pytest.fixture(scope="module", params=list(CONFIGS))
def setup(request):
    path, overrides = CONFIGS[request.param]
    cfg = load_config(path, overrides)
    tok = load_tokenizer(cfg.model)
    worker = RolloutWorker(cfg.model, cfg.sampling, seed=0, torch_threads=2)
    scorer = RewardScorer(cfg.model, cfg.sampling, [tok.encode(".")[0]], torch_threads=2)
    return cfg, tok, worker, scorer


def test_step0_logprobs_agree(setup):
    cfg, tok, worker, scorer = setup
    batch = worker.generate(queries(cfg, tok))
    s = batch.samples
    R = cfg.sampling.response_length
    assert s.response_tokens.shape == (4, R)                           # exactly R tokens
    assert (s.response_tokens < len(tok)).all()                        # pad (= vocab size) never sampled
    learner = PPOLearner(cfg.model, cfg.ppo, cfg.kl, cfg.sampling, 10, seed=0, torch_threads=2)
    with torch.no_grad():
        hidden = learner.policy.lm.hidden(concat_tokens(s.query_tokens, s.response_tokens), s.trunk_features)
        recomputed, _ = response_logprobs(learner.policy.lm, hidden, s.response_tokens, cfg.sampling.temperature)
        values = response_values(learner.policy.value_head, hidden, R)
    assert (recomputed - s.logprobs).abs().max().item() < 1e-4
    assert (values - s.values).abs().max().item() < 1e-4
    assert values.abs().max().item() == 0.0                            # zero-initialised value head
    ref = scorer.reference_logprobs(s.query_tokens, s.response_tokens, s.trunk_features)
    assert (ref - s.logprobs).abs().max().item() < 1e-4                # KL(pi, rho) = 0 at step 0
    ref_from_tokens = scorer.reference_logprobs(s.query_tokens, s.response_tokens, None)
    assert (ref_from_tokens - s.logprobs).abs().max().item() < 1e-4    # features are an optimisation only


def test_left_padding_changes_nothing(setup):
    cfg, tok, worker, scorer = setup
    policy = worker.policy
    rm = scorer.reward_model
    with torch.no_grad():
        rm.head.weight.normal_(0, 1.0)                                 # a head that reads the features
    ids = tok.encode(TEXTS[0], add_special_tokens=False)
    resp = torch.tensor([tok.encode(" And I am well, I thank thee.", add_special_tokens=False)])
    outs = []
    for extra in (0, 3, 7):
        q = left_pad([ids], len(ids) + extra, len(tok))
        full = concat_tokens(q, resp)
        with torch.no_grad():
            hidden = policy.lm.hidden(full)
            lp, _ = response_logprobs(policy.lm, hidden, resp, 0.7)
            v = response_values(policy.value_head, hidden, resp.shape[1])
            r = rm(full)
        outs.append((lp, v, r))
    for lp, v, r in outs[1:]:
        assert (lp - outs[0][0]).abs().max().item() < 1e-4
        assert (v - outs[0][1]).abs().max().item() < 1e-4
        assert (r - outs[0][2]).abs().max().item() < 1e-4


def test_reward_reads_last_real_token(setup):
    cfg, tok, worker, scorer = setup
    rm = scorer.reward_model
    pad = len(tok)
    q = left_pad([tok.encode("Hark.", add_special_tokens=False)], 4, pad)
    resp = torch.tensor([tok.encode(" I love thee well. More", add_special_tokens=False)])
    cut = resp.clone()
    cut[0, -1] = pad                                                   # truncated: pad after the stop
    with torch.no_grad():
        r_cut = rm(concat_tokens(q, cut))
        r_short = rm(concat_tokens(q, resp[:, :-1]))
        r_full = rm(concat_tokens(q, resp))
    assert (r_cut - r_short).abs().item() < 1e-4                       # the pad position is not read
    assert (r_cut - r_full).abs().item() > 1e-6


def test_reward_head_init():
    cfg = load_config("configs/tiny.yaml")
    rm = build_reward_model(cfg.model, seed=0)
    std = rm.head.weight.std().item()
    assert abs(std - 1 / (cfg.model.tiny_hidden_size + 1) ** 0.5) < 0.03
    assert rm.head.bias.item() == 0.0 and rm.gain.item() == 1.0 and rm.bias.item() == 0.0
    policy = build_policy(cfg.model)
    assert policy.value_head.weight.abs().sum().item() == 0.0
