"""The store in-process: replay, idempotency, torn tails, rotation, fsync before ack, leases."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from rlhf_dist.ingest import log as seglog
from rlhf_dist.ingest.schema import Label, LabelAck
from rlhf_dist.ingest.store import DataDirBusy, IngestStore, StoreConfig
from rlhf_dist.ingest.validate import IngestError

try:
    from tests.ingest_helpers import dir_digest, make_task
except ImportError:
    from ingest_helpers import dir_digest, make_task


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def open_store(path: Path, **kw) -> IngestStore:
    cfg = StoreConfig(str(path), segment_bytes=kw.pop("segment_bytes", 64 * 1024 * 1024))
    return IngestStore(cfg, **kw)


def fill(store: IngestStore, n: int, prefix: str = "t") -> list[LabelAck]:
    tasks = [make_task(f"{prefix}{i:04d}") for i in range(n)]
    store.post_tasks(tasks)
    return store.submit_labels([Label(t.task_id, i % 4, "ann") for i, t in enumerate(tasks)])


def test_replay_restores_everything_and_retries_get_first_answer(tmp_path):
    store = open_store(tmp_path)
    task_acks = store.post_tasks([make_task("a"), make_task("b")])
    label_acks = store.submit_labels([Label("a", 2, "ann", note="clear")])
    store.close()

    again = open_store(tmp_path)
    assert again.post_tasks([make_task("b"), make_task("a")]) == task_acks[::-1]
    assert again.submit_labels([Label("a", 2, "ann", note="clear")]) == label_acks
    items, cursor = again.read_labels(0, 10)
    assert cursor == 1 and items[0].task == make_task("a") and items[0].label.chosen_index == 2
    s = again.stats()
    assert (s["tasks_total"], s["labeled"], s["pending"], s["per_labeler"]) == (2, 1, 1, {"ann": 1})
    again.close()


def test_retries_write_nothing_and_conflicts_are_refused(tmp_path):
    store = open_store(tmp_path)
    store.post_tasks([make_task("a")])
    store.submit_labels([Label("a", 1, "ann")])
    before = dir_digest(tmp_path)
    store.post_tasks([make_task("a")])
    store.submit_labels([Label("a", 1, "ann")])
    changed = make_task("a")
    changed.query += "!"
    with pytest.raises(IngestError) as err:
        store.post_tasks([make_task("new"), changed])
    assert err.value.code == "ALREADY_EXISTS" and "tasks[1].task_id" in err.value.message
    with pytest.raises(IngestError) as err:
        store.submit_labels([Label("a", 3, "ann")])
    assert err.value.code == "ALREADY_EXISTS"
    with pytest.raises(IngestError) as err:
        store.submit_labels([Label("nope", 0, "ann")])
    assert err.value.code == "NOT_FOUND" and "labels[0].task_id" in err.value.message
    assert dir_digest(tmp_path) == before
    assert store.stats()["tasks_total"] == 1  # "new" was refused with its batch
    store.close()


def test_duplicates_within_one_batch_are_stored_once(tmp_path):
    store = open_store(tmp_path)
    acks = store.post_tasks([make_task("a"), make_task("a")])
    assert acks[0] == acks[1]
    label_acks = store.submit_labels([Label("a", 0, "ann"), Label("a", 0, "ann")])
    assert label_acks[0] == label_acks[1]
    assert store.stats()["labeled"] == 1
    store.close()


def _last_segment(path: Path) -> str:
    return seglog.segment_paths(str(path))[-1]


@pytest.mark.parametrize("damage", ["half_header", "half_payload", "bad_crc", "zeros"])
def test_torn_tail_is_dropped_and_truncated(tmp_path, damage):
    store = open_store(tmp_path)
    fill(store, 5, "keep")
    store.close()
    seg = _last_segment(tmp_path)
    good_size = os.path.getsize(seg)
    frame = seglog.encode_frame(seglog.KIND_LABELS, b"p" * 300)
    tail = {"half_header": frame[:5], "half_payload": frame[:150],
            "bad_crc": frame[:5] + bytes([frame[5] ^ 0xFF]) + frame[6:], "zeros": bytes(64)}
    with open(seg, "ab") as f:
        f.write(tail[damage])

    again = open_store(tmp_path)
    assert again.replay_report.torn_bytes_dropped == len(tail[damage])
    assert os.path.getsize(seg) == good_size
    assert again.stats()["labeled"] == 5
    fill(again, 3, "after")  # appends cleanly after the cut
    again.close()
    third = open_store(tmp_path)
    assert third.replay_report.torn_bytes_dropped == 0
    assert [i.sequence for i in third.read_labels(0, 100)[0]] == list(range(8))
    third.close()


def test_segment_torn_while_its_header_was_written_is_restarted(tmp_path):
    store = open_store(tmp_path)
    fill(store, 3)
    store.close()
    torn = tmp_path / "segment-00000002.log"
    torn.write_bytes(seglog.MAGIC[:5])  # a rotation killed mid-header
    again = open_store(tmp_path)
    assert again.stats()["labeled"] == 3
    fill(again, 2, "more")
    again.close()
    third = open_store(tmp_path)
    assert third.stats()["labeled"] == 5 and third.replay_report.segments == 2
    third.close()


def test_damage_in_a_closed_segment_refuses_to_start(tmp_path):
    store = open_store(tmp_path, segment_bytes=4096)
    fill(store, 40)
    store.close()
    first = seglog.segment_paths(str(tmp_path))[0]
    data = bytearray(Path(first).read_bytes())
    data[len(data) // 2] ^= 0x01
    Path(first).write_bytes(bytes(data))
    with pytest.raises(seglog.CorruptLog):
        open_store(tmp_path)


def test_rotation_and_replay_across_segments(tmp_path):
    store = open_store(tmp_path, segment_bytes=8192)
    acks = [a for b in range(10) for a in fill(store, 10, f"b{b}-")]
    assert store.stats()["segments"] >= 5
    store.close()
    again = open_store(tmp_path, segment_bytes=8192)
    items, _ = again.read_labels(0, 1000)
    assert [LabelAck(i.task.task_id, i.sequence, i.labeled_at_ms) for i in items] == acks
    assert again.replay_report.segments == len(seglog.segment_paths(str(tmp_path)))
    again.close()


def test_no_ack_before_fsync_returns(tmp_path):
    gate, entered = threading.Event(), threading.Event()

    def held_fsync(fd: int) -> None:
        if threading.current_thread().name == "ingest-committer":
            entered.set()
            assert gate.wait(10)
        os.fsync(fd)

    store = open_store(tmp_path, fsync=held_fsync)
    gate.set()
    store.post_tasks([make_task("a")])
    gate.clear()
    entered.clear()
    result = []
    submitter = threading.Thread(target=lambda: result.append(
        store.submit_labels([Label("a", 0, "ann")])))
    submitter.start()
    assert entered.wait(5), "the committer never reached fsync"
    submitter.join(0.5)
    assert submitter.is_alive() and not result, "acknowledged while fsync had not returned"
    assert store.read_labels(0, 10)[0] == [], "visible to readers before it was durable"
    gate.set()
    submitter.join(5)
    assert result and result[0][0].sequence == 0
    store.close()


def test_group_commit_shares_fsyncs(tmp_path):
    store = open_store(tmp_path)
    store.post_tasks([make_task(f"t{i}") for i in range(200)])
    base = store.stats()["fsyncs"]
    threads = [threading.Thread(target=lambda j=j: [store.submit_labels([Label(f"t{i}", 0, "a")])
                                                    for i in range(j, 200, 8)])
               for j in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = store.stats()
    assert s["labeled"] == 200 and s["fsyncs"] - base <= 200
    store.close()


def test_leases_expire_back_to_the_queue(tmp_path):
    clock = Clock()
    store = open_store(tmp_path, clock=clock)
    store.post_tasks([make_task(f"t{i}") for i in range(3)])
    got, expires_ms, labeled = store.lease("ann", 2, 30.0)
    assert [t.task_id for t in got] == ["t0", "t1"] and expires_ms == int((clock.t + 30) * 1000)
    assert labeled == 0
    assert [t.task_id for t in store.lease("bob", 5, 30.0)[0]] == ["t2"]
    assert store.lease("bob", 5, 30.0)[0] == []
    store.submit_labels([Label("t0", 1, "ann")])
    s = store.stats()
    assert (s["pending"], s["leased"], s["labeled"]) == (0, 2, 1)
    clock.t += 31
    assert [t.task_id for t in store.lease("cat", 5, 30.0)[0]] == ["t1", "t2"]  # not t0
    assert store.lease("ann", 1, 30.0)[2] == 1
    store.close()


def test_one_store_per_data_dir(tmp_path):
    store = open_store(tmp_path)
    with pytest.raises(DataDirBusy):
        open_store(tmp_path)
    store.close()
    open_store(tmp_path).close()  # free again once closed


def test_read_cursor_resumes_and_refuses_past_end(tmp_path):
    store = open_store(tmp_path)
    fill(store, 7)
    first, cursor = store.read_labels(0, 3)
    rest, end = store.read_labels(cursor, 100)
    assert [i.sequence for i in first + rest] == list(range(7)) and end == 7
    assert store.read_labels(7, 10) == ([], 7)
    with pytest.raises(IngestError) as err:
        store.read_labels(8, 10)
    assert err.value.code == "OUT_OF_RANGE"
    store.close()


def test_failed_write_refuses_later_writes(tmp_path):
    def broken_fsync(fd: int) -> None:
        if threading.current_thread().name == "ingest-committer":
            raise OSError(5, "Input/output error")
        os.fsync(fd)

    store = open_store(tmp_path, fsync=broken_fsync)
    for _ in range(2):
        with pytest.raises(IngestError) as err:
            store.post_tasks([make_task("a")])
        assert err.value.code == "UNAVAILABLE"
    assert store.stats()["tasks_total"] == 0
    store.close()
