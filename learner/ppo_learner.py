"""The PPO learner (PAPER.md section 3): value head on the policy's own trunk, per-token
KL penalty against the frozen initial policy, GAE, whitening, clipped losses, TF Adam,
linear LR decay by update, and the KL controller stepped after each update."""
from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import torch

from actors.rollout import load_policy_state, policy_state
from rlhf_dist import ppo
from rlhf_dist.config import KLConfig, ModelConfig, PPOConfig, SamplingConfig
from rlhf_dist.experience import ScoredBatch, Weights
from rlhf_dist.models import build_policy, set_torch_threads
from rlhf_dist.optim import linear_anneal, make_optimizer, set_lr
from rlhf_dist.sampling import concat_tokens, response_logprobs, response_values


class PPOLearner:
    def __init__(self, model_cfg: ModelConfig, ppo_cfg: PPOConfig, kl_cfg: KLConfig,
                 sampling_cfg: SamplingConfig, num_updates: int, seed: int, torch_threads: int):
        set_torch_threads(torch_threads)
        torch.manual_seed(seed)
        self.cfg, self.temperature, self.num_updates = ppo_cfg, sampling_cfg.temperature, num_updates
        self.policy = build_policy(model_cfg)
        params = self.policy.lm.trainable_parameters() + list(self.policy.value_head.parameters())
        self.optimizer = make_optimizer(params, ppo_cfg.lr, ppo_cfg.adam_eps, ppo_cfg.tf_adam)
        self.kl_ctl = (ppo.AdaptiveKLController(kl_cfg.init_beta, kl_cfg.target, kl_cfg.horizon)
                       if kl_cfg.adaptive else ppo.FixedKLController(kl_cfg.init_beta))
        self.generator = torch.Generator().manual_seed(seed)
        self.policy_version = 0
        self.samples_consumed = 0

    def update(self, batch: ScoredBatch) -> dict:
        start = time.perf_counter()
        s = batch.rollout.samples
        B, R = s.response_tokens.shape
        tokens = concat_tokens(s.query_tokens, s.response_tokens)
        old_logprobs, old_values = s.logprobs, s.values
        beta = self.kl_ctl.value   # the pre-update beta shapes this batch's rewards
        rewards, kl = ppo.kl_penalised_rewards(batch.scores, old_logprobs, batch.ref_logprobs, beta)
        lr = linear_anneal(self.cfg.lr, self.policy_version, self.num_updates)
        set_lr(self.optimizer, lr)

        mb_size = B // self.cfg.num_minibatches
        stats = defaultdict(list)
        for epoch in range(self.cfg.epochs):
            order = torch.randperm(B, generator=self.generator)
            for mb in order.split(mb_size):
                features = s.trunk_features[mb] if s.trunk_features is not None else None
                hidden = self.policy.lm.hidden(tokens[mb], features)
                logprobs, entropy = response_logprobs(self.policy.lm, hidden, s.response_tokens[mb], self.temperature)
                vpred = response_values(self.policy.value_head, hidden, R)
                mb_rewards = ppo.whiten(rewards[mb], shift_mean=False) if self.cfg.whiten_rewards else rewards[mb]
                advantages, returns = ppo.gae_advantages(mb_rewards, old_values[mb], self.cfg.gamma, self.cfg.lam)
                advantages = ppo.whiten(advantages)
                pg_loss, pg_stats = ppo.policy_loss(logprobs, old_logprobs[mb], advantages, self.cfg.cliprange)
                vf_loss, vf_stats = ppo.value_loss(vpred, old_values[mb], returns, self.cfg.cliprange_value)
                loss = pg_loss + self.cfg.vf_coef * vf_loss
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                if epoch == 0 and not stats["first_mb_max_logprob_diff"]:
                    # Rollout and learner must agree before the first step (PAPER.md row 4).
                    stats["first_mb_max_logprob_diff"].append((logprobs - old_logprobs[mb]).abs().max().item())
                    stats["first_mb_ratio"].append(pg_stats["ratio_mean"])
                stats["loss/policy"].append(pg_loss.item())
                stats["loss/value"].append(vf_loss.item())
                stats["policy/clipfrac"].append(pg_stats["clipfrac"])
                stats["policy/approxkl"].append(pg_stats["approxkl"])
                stats["policy/entropy"].append(entropy.mean().item())
                stats["val/clipfrac"].append(vf_stats["clipfrac"])
                stats["val/error"].append(vf_stats["error"])
                stats["val/var_explained"].append(ppo.explained_variance(vpred.detach(), returns))
        mean_kl = kl.sum(dim=1).mean().item()   # objective/kl: mean over the batch of sum_t kl_t
        self.samples_consumed += B
        new_beta = self.kl_ctl.update(mean_kl, B)
        self.policy_version += 1
        out = {k: sum(v) / len(v) for k, v in stats.items()}
        out.update({
            "objective/kl": mean_kl,
            "objective/kl_coef": beta,
            "objective/kl_coef_next": new_beta,
            "objective/score": batch.scores.mean().item(),
            "objective/score_total": (batch.scores - beta * kl.sum(1)).mean().item(),
            "objective/entropy": (-old_logprobs).sum(1).mean().item(),
            "objective/has_stop": batch.has_stop.float().mean().item(),
            "val/vpred": old_values.mean().item(),
            "ppo/lr": lr,
            "policy_version": self.policy_version,
            "samples_consumed": self.samples_consumed,
            "time/update_in_learner_s": time.perf_counter() - start,
        })
        return out

    def state_dict(self) -> dict:
        """Everything a resume needs: trainable weights, optimizer, KL controller, counters, RNG."""
        return {"policy": {k: v.detach().clone() for k, v in policy_state(self.policy).items()},
                "optimizer": self.optimizer.state_dict(), "kl_coef": self.kl_ctl.value,
                "policy_version": self.policy_version, "samples_consumed": self.samples_consumed,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> int:
        load_policy_state(self.policy, state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_ctl.value = state["kl_coef"]
        self.policy_version, self.samples_consumed = state["policy_version"], state["samples_consumed"]
        self.generator.set_state(state["generator"])
        return self.policy_version

    def weights(self) -> Weights:
        return Weights.from_torch(self.policy_version, policy_state(self.policy))

    def save(self, folder: str) -> str:
        """The policy as a Hugging Face folder, the value head beside it."""
        folder = Path(folder)
        self.policy.lm.full.save_pretrained(folder)
        torch.save(self.policy.value_head.state_dict(), folder / "value_head.pt")
        return str(folder)

    def ready(self) -> bool:
        return True
