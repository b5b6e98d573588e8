"""Response post-processing (PAPER.md section 1a): truncation and the -1 penalty."""
from __future__ import annotations

import torch


def truncation_mask(responses: torch.Tensor, stop_ids: torch.Tensor, truncate_after: int) -> torch.Tensor:
    """(B, R) bool, True for kept tokens.

    Cut after the first stop token at index >= truncate_after; the stop token itself is
    kept (lm_tasks.get_mask: cumsum(mask) - mask). Responses without one keep everything.
    """
    is_stop = torch.isin(responses, stop_ids)
    is_stop[:, :truncate_after] = False
    stops_before = torch.cumsum(is_stop.long(), dim=1) - is_stop.long()   # stops strictly before t
    return stops_before == 0


def has_stop(responses: torch.Tensor, stop_ids: torch.Tensor, truncate_after: int) -> torch.Tensor:
    """(B,) bool: a stop token at some index >= truncate_after (lm_tasks.filter)."""
    return torch.isin(responses[:, truncate_after:], stop_ids).any(dim=1)


def apply_penalty(scores: torch.Tensor, valid: torch.Tensor, penalty: float) -> torch.Tensor:
    """Scores of responses without a stop token are replaced by the penalty (-1)."""
    return torch.where(valid, scores, torch.full_like(scores, penalty))


def truncate_responses(responses: torch.Tensor, stop_ids: torch.Tensor, truncate_after: int, pad_id: int) -> torch.Tensor:
    """Responses with pad_id after the truncation point."""
    return responses.masked_fill(~truncation_mask(responses, stop_ids, truncate_after), pad_id)
