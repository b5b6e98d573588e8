"""Crash test: 10,400 labels from concurrent clients while the server is SIGKILLed and restarted.

Afterwards every acknowledged label is stored exactly once, with the sequence it was
acknowledged with, and the torn records real kills left behind were dropped at replay.

Half of the kills come at random moments; the other half wait until the newest segment ends
in a partly written frame, so they land mid-record. The server runs with
--write-chunk-bytes 64 (each frame written in 64-byte pieces, as a slow disk would), which
makes that window wide enough to hit; nothing else about the server is special.
"""
from __future__ import annotations

import os
import random
import threading
import time

import pyarrow.parquet as pq

from rlhf_dist.ingest import log as seglog
from rlhf_dist.ingest.client import IngestClient
from rlhf_dist.ingest.export import export_parquet
from rlhf_dist.ingest.schema import Label, LabelAck

try:
    from tests.ingest_helpers import JOB_TOKEN, LABELER_TOKEN, ServerProcess, make_task
except ImportError:
    from ingest_helpers import JOB_TOKEN, LABELER_TOKEN, ServerProcess, make_task

N_CLIENTS = 4
TASKS_PER_CLIENT = 2600          # 10,400 labels in all
CHUNK = 200                      # tasks posted per request; then labeled
SINGLE_SHARE = 0.2               # of each chunk's labels, sent one per request
MAX_KILLS = 16
SERVER_ARGS = ("--write-chunk-bytes", "64", "--segment-bytes", str(1024 * 1024))


def _client(server: ServerProcess, token: str) -> IngestClient:
    return IngestClient(server.address, token, timeout_s=5.0, max_retries=200,
                        backoff_s=0.05, max_backoff_s=0.5)


def run_client(server: ServerProcess, worker: int, acked: dict, sent: dict, seed: int) -> None:
    rng = random.Random(seed)
    job, labeler = _client(server, JOB_TOKEN), _client(server, LABELER_TOKEN)
    ids = [f"w{worker}-{i:05d}" for i in range(TASKS_PER_CLIENT)]
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start: start + CHUNK]
        job.post_tasks([make_task(t, text_bytes=80) for t in chunk])
        labels = [Label(t, rng.randrange(4), f"labeler-{worker}", note=f"n{rng.random():.6f}")
                  for t in chunk]
        n_single = int(len(labels) * SINGLE_SHARE)
        for label in labels[:n_single]:
            sent[label.task_id] = label
            acked[label.task_id] = labeler.submit_labels([label])[0]
        pos = n_single
        while pos < len(labels):
            batch = labels[pos: pos + rng.randint(10, 100)]
            for label in batch:
                sent[label.task_id] = label
            for ack in labeler.submit_labels(batch):
                acked[ack.task_id] = ack
            pos += len(batch)
    job.close()
    labeler.close()


def _partial_tail(data_dir: str, state: dict) -> bool:
    """True when the newest segment ends inside a frame (a write is under way)."""
    paths = seglog.segment_paths(data_dir)
    if not paths:
        return False
    if state.get("path") != paths[-1]:
        state.update(path=paths[-1], offset=0)
    with open(paths[-1], "rb") as f:
        f.seek(state["offset"])
        data = f.read()
    pos = len(seglog.MAGIC) if state["offset"] == 0 else 0
    if len(data) < pos:
        return bool(data)
    while pos + seglog.HEADER.size <= len(data):
        length = seglog.HEADER.unpack_from(data, pos)[0]
        if pos + seglog.HEADER.size + length > len(data):
            break
        pos += seglog.HEADER.size + length
    state["offset"] += pos
    return pos < len(data)


def kill_loop(server: ServerProcess, done: threading.Event, report: dict) -> None:
    rng = random.Random(7)
    while not done.is_set() and report["kills"] < MAX_KILLS:
        if report["kills"] % 2 == 0:
            time.sleep(rng.uniform(0.3, 1.2))
        else:
            state, deadline = {}, time.monotonic() + 3.0
            while time.monotonic() < deadline and not _partial_tail(str(server.data_dir), state):
                time.sleep(0.0002)  # poll hard, but let the clients' threads run
        if done.is_set():
            return
        server.kill()
        report["kills"] += 1
        server.start()
        with _client(server, JOB_TOKEN) as job:
            report["torn"].append(job.stats()["replay_torn_bytes_dropped"])


def test_acknowledged_labels_survive_sigkill_exactly_once(tmp_path):
    server = ServerProcess(tmp_path / "data", SERVER_ARGS).start()
    acked: dict[str, LabelAck] = {}
    sent: dict[str, Label] = {}
    errors: list[BaseException] = []
    report = {"kills": 0, "torn": []}
    done = threading.Event()

    def guarded(worker: int) -> None:
        try:
            run_client(server, worker, acked, sent, seed=worker)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    clients = [threading.Thread(target=guarded, args=(w,)) for w in range(N_CLIENTS)]
    killer = threading.Thread(target=kill_loop, args=(server, done, report))
    t0 = time.monotonic()
    for t in clients:
        t.start()
    killer.start()
    for t in clients:
        t.join()
    done.set()
    killer.join()
    try:
        assert not errors, errors
        elapsed = time.monotonic() - t0
        n = N_CLIENTS * TASKS_PER_CLIENT
        assert len(acked) == n
        assert report["kills"] >= 6, report
        # Torn records from real kills were found and dropped, and the server came back each time.
        assert sum(1 for b in report["torn"] if b > 0) >= 1, report
        assert "Traceback" not in server.log()

        server.kill()  # one last crash, then read everything back
        server.start()
        job = _client(server, JOB_TOKEN)
        items = list(job.iter_labels(0))
        assert [c.sequence for c in items] == list(range(n))   # contiguous, no gaps
        assert len({c.task.task_id for c in items}) == n        # each exactly once
        for c in items:
            assert c.label == sent[c.task.task_id]
            assert acked[c.task.task_id] == LabelAck(c.task.task_id, c.sequence, c.labeled_at_ms)
            assert c.task == make_task(c.task.task_id, text_bytes=80)
        stats = job.stats()
        assert (stats["tasks_total"], stats["labeled"], stats["pending"]) == (n, n, 0)
        assert stats["segments"] > 1  # rotation happened under fire

        out = str(tmp_path / "labels.parquet")
        assert export_parquet(str(server.data_dir), out)["labels"] == n
        table = pq.read_table(out)
        assert table.num_rows == n and len(set(table.column("task_id").to_pylist())) == n
        log_bytes = sum(os.path.getsize(p) for p in seglog.segment_paths(str(server.data_dir)))
        print(f"\ncrash test: {n} labels, {report['kills']} SIGKILLs, torn tails dropped "
              f"(bytes) {[b for b in report['torn'] if b]}, {elapsed:.1f}s, "
              f"{stats['segments']} segments, {log_bytes} log bytes")
    finally:
        server.kill()
