"""Sampling fixed-length responses and re-scoring them (PAPER.md section 0, items 1-2).

Plain categorical sampling from logits / T; exactly `response_length` tokens; EOS is an
ordinary token. The same temperature-scaled log-softmax is used when the learner and the
reference re-score a sequence, so at step 0 the three agree (rows 4-5 of section 7).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from rlhf_dist.models import SplitLM, attention_inputs


@dataclass
class Samples:
    """What a rollout produces. B = samples, Q = query length, R = response length."""
    query_tokens: torch.Tensor             # (B, Q) left-padded with pad_id
    response_tokens: torch.Tensor          # (B, R) sampled ids, never pad_id
    logprobs: torch.Tensor                 # (B, R) log pi(a_t | s_t) at temperature T
    values: Optional[torch.Tensor]         # (B, R) V(s_t), the state before token t
    trunk_features: Optional[torch.Tensor]  # (B, Q + R, C) frozen-block outputs, or None


def _new_cache(model):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


@torch.no_grad()
def sample(lm: SplitLM, query_tokens: torch.Tensor, response_length: int, temperature: float,
           generator: Optional[torch.Generator] = None, value_head: Optional[torch.nn.Module] = None,
           samples_per_query: int = 1, keep_features: bool = True) -> Samples:
    """Sample `samples_per_query` responses per query; the query is run once and its KV
    cache repeated. Returns samples ordered query-major (q0s0, q0s1, ..., q1s0, ...)."""
    ids, mask, positions = attention_inputs(query_tokens, lm.pad_id)
    use_trunk = lm.trunk is not None
    trunk_cache = _new_cache(lm.trunk) if use_trunk else None
    top_cache = _new_cache(lm.top)

    def step(step_ids, attn_mask, pos):
        feats = None
        if use_trunk:
            feats = lm.trunk(input_ids=step_ids, attention_mask=attn_mask, position_ids=pos,
                             cache=trunk_cache, use_cache=True).last_hidden_state
            h = lm.top(inputs_embeds=feats, attention_mask=attn_mask, position_ids=pos,
                       cache=top_cache, use_cache=True).last_hidden_state
        else:
            h = lm.top(input_ids=step_ids, attention_mask=attn_mask, position_ids=pos,
                       cache=top_cache, use_cache=True).last_hidden_state
        return feats, h[:, -1]

    attn = mask.long()
    feats, last_hidden = step(ids, attn, positions)
    k = samples_per_query
    if k > 1:
        for cache in (trunk_cache, top_cache):
            if cache is not None:
                cache.batch_repeat_interleave(k)
        attn, positions, last_hidden = (t.repeat_interleave(k, dim=0) for t in (attn, positions, last_hidden))
        feats = feats.repeat_interleave(k, dim=0) if feats is not None else None
        query_tokens = query_tokens.repeat_interleave(k, dim=0)
    B = query_tokens.shape[0]
    features = [feats] if (use_trunk and keep_features) else None
    next_pos = positions[:, -1:] + 1
    tokens, logprobs, values = [], [], []
    for t in range(response_length):
        logits = lm.logits(last_hidden).float() / temperature            # (B, V)
        logp_all = F.log_softmax(logits, dim=-1)
        token = torch.multinomial(logp_all.exp(), 1, generator=generator)  # (B, 1)
        tokens.append(token)
        logprobs.append(logp_all.gather(1, token))
        if value_head is not None:
            values.append(value_head(last_hidden))
        last_step = t == response_length - 1
        if last_step and not features:
            break
        attn = torch.cat([attn, torch.ones(B, 1, dtype=attn.dtype)], dim=1)
        if last_step:   # features of the final token: the trunk only
            f = lm.trunk(input_ids=token, attention_mask=attn, position_ids=next_pos,
                         cache=trunk_cache, use_cache=True).last_hidden_state
            features.append(f)
            break
        f, last_hidden = step(token, attn, next_pos)
        if features:
            features.append(f)
        next_pos = next_pos + 1
    return Samples(
        query_tokens=query_tokens,
        response_tokens=torch.cat(tokens, dim=1),
        logprobs=torch.cat(logprobs, dim=1),
        values=torch.cat(values, dim=1) if values else None,
        trunk_features=torch.cat(features, dim=1) if features else None,
    )


def response_logprobs(lm: SplitLM, hidden: torch.Tensor, response_tokens: torch.Tensor,
                      temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Log pi(a_t) at temperature T for the response part of full sequences.

    hidden (B, Q + R, C) from `lm.hidden`. Token t of the response is predicted at
    position Q - 1 + t. Returns (logprobs (B, R), entropy per token (B, R)).
    """
    R = response_tokens.shape[1]
    h = hidden[:, -R - 1:-1]                                          # (B, R, C)
    logits = lm.logits(h).float() / temperature                       # (B, R, V)
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(2, response_tokens.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def response_values(value_head: torch.nn.Module, hidden: torch.Tensor, response_length: int) -> torch.Tensor:
    """(B, R) V at the state before each response token (position Q - 1 + t)."""
    return value_head(hidden[:, -response_length - 1:-1]).squeeze(-1)


def concat_tokens(query_tokens: torch.Tensor, response_tokens: torch.Tensor) -> torch.Tensor:
    return torch.cat([query_tokens, response_tokens], dim=1)
