"""Label requester: turns the policy's samples into comparison tasks for the ingest service.

Plain class; the online loop wraps it with ray.remote. The driver never waits on it: a task
that cannot be posted while the service is down stays in the backlog and goes with the next
call (posting is idempotent by task id, so a resend after a lost acknowledgement is safe).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlhf_dist.config import ModelConfig, SamplingConfig
from rlhf_dist.ingest.schema import ComparisonTask
from rlhf_dist.ingest.validate import IngestError
from rlhf_dist.models import load_tokenizer
from rlhf_dist.responses import truncate_responses

@dataclass
class TaskRequest:
    """One comparison to post: a query and k untruncated samples (k = 4)."""
    task_id: str
    kind: str                      # train | heldout | validation (rlhf_dist.online)
    query_tokens: torch.Tensor     # (Q,) left-padded
    response_tokens: torch.Tensor  # (k, R) as sampled; truncated here, as at RL time
    policy_versions: list[int]     # (k,) version that wrote each sample (0 = initial policy)
    current_positions: list[int] = field(default_factory=list)   # validation: where pi's samples sit


class LabelRequester:
    def __init__(self, model_cfg: ModelConfig, sampling_cfg: SamplingConfig, stop_ids: list[int],
                 address: str, token: str, pad_id: int):
        from rlhf_dist.ingest.client import IngestClient

        self.tokenizer = load_tokenizer(model_cfg)
        self.sampling, self.stop_ids, self.pad_id = sampling_cfg, torch.tensor(stop_ids), pad_id
        self.client = IngestClient(address, token, max_retries=3)
        self.backlog: list[ComparisonTask] = []
        self.posted = 0
        self.errors = 0

    def _ids(self, tokens: torch.Tensor) -> list[int]:
        return [t for t in tokens.tolist() if t != self.pad_id]

    def to_task(self, req: TaskRequest) -> ComparisonTask:
        truncated = truncate_responses(req.response_tokens, self.stop_ids, self.sampling.truncate_after, self.pad_id)
        query_ids = self._ids(req.query_tokens)
        sample_ids = [self._ids(r) for r in truncated]
        metadata = {"kind": req.kind, "policy_versions": ",".join(map(str, req.policy_versions))}
        if req.current_positions:
            metadata["current_positions"] = ",".join(map(str, req.current_positions))
        return ComparisonTask(req.task_id, self.tokenizer.decode(query_ids),
                              [self.tokenizer.decode(s) for s in sample_ids], max(req.policy_versions),
                              metadata, query_ids, sample_ids)

    def post(self, requests: list[TaskRequest]) -> dict:
        """Queue the tasks and post the backlog; returns what is posted and still waiting."""
        self.backlog.extend(self.to_task(r) for r in requests)
        return self.flush()

    def flush(self) -> dict:
        if self.backlog:
            try:
                self.client.post_tasks(self.backlog)
                self.posted += len(self.backlog)
                self.backlog = []
            except IngestError as err:
                if not err.retryable:
                    raise
                self.errors += 1   # the service is down: keep them for the next call
        return {"posted": self.posted, "backlog": len(self.backlog), "post_errors": self.errors}

    def ready(self) -> bool:
        return True
