"""Shared helpers for the ingest tests: a real server process, tasks, directory digests."""
from __future__ import annotations

import hashlib
from pathlib import Path

from rlhf_dist.ingest.process import LocalIngestServer

REPO = Path(__file__).resolve().parents[1]
JOB_TOKEN = "job-token-7f3a9c"
LABELER_TOKEN = "labeler-token-51be02"


class ServerProcess(LocalIngestServer):
    """The real server process with the test tokens; `terminate` is SIGTERM + wait."""

    def __init__(self, data_dir: Path, extra_args: tuple[str, ...] = (), port: int = 0):
        super().__init__(data_dir, [JOB_TOKEN], [LABELER_TOKEN], port=port,
                         extra_args=("--grace-s", "5", *extra_args))

    def terminate(self, timeout_s: float = 20.0) -> int:
        return self.stop(timeout_s)


def make_task(task_id: str, k: int = 4, text_bytes: int = 40, version: int = 1):
    from rlhf_dist.ingest.schema import ComparisonTask

    pad = "x" * max(0, text_bytes - 10)
    return ComparisonTask(
        task_id=task_id,
        query=f"query {task_id} {pad}",
        samples=[f"sample {i} of {task_id} {pad}" for i in range(k)],
        policy_version=version,
        metadata={"source": "test", "n": task_id[-3:]},
        query_token_ids=[1, 2, 3],
        sample_token_ids=[[10 + i, 20 + i] for i in range(k)],
    )


def dir_digest(path: Path) -> dict[str, str]:
    """File name -> sha256 of every file under path (the byte-for-byte state on disk)."""
    out = {}
    for p in sorted(Path(path).rglob("*")):
        if p.is_file():
            out[str(p.relative_to(path))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
