"""The simulated labeler as its own process: it leases tasks and submits labels through the
ingest service exactly as a person's terminal client does, picking by a real sentiment
scorer (VADER) instead of a person's judgement.

    RLHF_INGEST_TOKEN=... rlhf-dist ingest simulate --address 127.0.0.1:50551 --labeler-id sim

It runs until SIGTERM (or --max-labels). A server that goes away is waited for: the client
retries, and a label whose acknowledgement was lost is resent, which the service answers as
it did the first time (submission is idempotent). Every acknowledgement can be appended to
--acks-file, one JSON line each, so a test can compare what was acknowledged with what the
reward-model trainer read.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Optional

from rlhf_dist.ingest.schema import CANT_TELL_INDEX, Label
from rlhf_dist.ingest.validate import IngestError

def label_task(labeler, task, labeler_id: str) -> Label:
    pick = labeler.pick(task.samples)
    if pick.best is None:
        return Label(task.task_id, CANT_TELL_INDEX, labeler_id, cant_tell=True, note="tie")
    return Label(task.task_id, pick.best, labeler_id)


def run_simulated_labeler(client, labeler, labeler_id: str, stop: threading.Event, *,
                          latency_s: float = 0.0, batch: int = 16, lease_seconds: float = 60.0,
                          idle_sleep_s: float = 0.2, max_labels: Optional[int] = None,
                          acks_file: Optional[str] = None, log=print) -> int:
    """Lease, label, submit until `stop` is set; returns the labels acknowledged."""
    acked = 0
    acks = open(acks_file, "a", encoding="utf-8") if acks_file else None
    try:
        while not stop.is_set() and (max_labels is None or acked < max_labels):
            try:
                tasks = client.lease(labeler_id, batch, lease_seconds)
            except IngestError as err:
                if not err.retryable:
                    raise
                log(f"ingest service unreachable ({err.code}); waiting")
                stop.wait(1.0)
                continue
            if not tasks:
                stop.wait(idle_sleep_s)
                continue
            labels = []
            for task in tasks:
                if latency_s:
                    stop.wait(latency_s)   # a person reads 4 samples before answering
                labels.append(label_task(labeler, task, labeler_id))
            while True:   # a lost acknowledgement is resent: the service stores each label once
                try:
                    for ack in client.submit_labels(labels):
                        acked += 1
                        if acks:
                            acks.write(json.dumps({"task_id": ack.task_id, "sequence": ack.sequence}) + "\n")
                    if acks:
                        acks.flush()
                    break
                except IngestError as err:
                    if not err.retryable or stop.is_set():
                        raise
                    log(f"submit failed ({err.code}); resending {len(labels)} labels")
                    time.sleep(1.0)
    finally:
        if acks:
            acks.close()
    return acked
