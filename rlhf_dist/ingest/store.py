"""The ingest store: tasks, leases and labels, durable through the segment log.

Write path (post_tasks, submit_labels): validate everything under the lock, assign sequence
numbers, hand one frame per request to the committer thread, wait. The committer writes all
frames queued since its last round, calls fsync once (group commit: concurrent requests share
one fsync), and only then makes the rows visible and releases the waiting requests, so no
acknowledgement can leave before the fsync that makes it durable has returned.

Idempotency: a task or label is keyed by its task_id. A retry with identical content, whether
the first copy is stored or still in flight, waits for that copy and gets its answer; a
different content under the same id is ALREADY_EXISTS. A refused request writes nothing.

Leases live in memory only: after a restart every unlabeled task is pending again.
"""
from __future__ import annotations

import collections
import fcntl
import heapq
import logging
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

from rlhf_dist.ingest import log as seglog
from rlhf_dist.ingest import validate as V
from rlhf_dist.ingest.schema import (ComparisonTask, Label, LabelAck, LabeledComparison,
                                     TaskAck, labeled_from_batch, labeled_to_batch,
                                     tasks_from_batch, tasks_to_batch)

logger = logging.getLogger(__name__)
RATE_WINDOW_S = 60.0  # label_rate_per_s is averaged over this many seconds
LOCK_FILE = "LOCK"


class DataDirBusy(Exception):
    """Another process serves this data directory; two writers would interleave the log."""


def _lock_data_dir(data_dir: str) -> int:
    """An exclusive flock for the life of the store; the kernel drops it if the process dies."""
    fd = os.open(os.path.join(data_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirBusy(f"{data_dir} is in use by another ingest server") from None
    return fd


@dataclass
class StoreConfig:
    data_dir: str
    limits: V.Limits = V.Limits()
    segment_bytes: int = 64 * 1024 * 1024  # rotate to a new segment past this size
    write_chunk_bytes: int = 0             # >0 splits writes, so crash tests land mid-frame


@dataclass
class _InFlight:
    """A task or label accepted and queued, not yet durable."""
    value: object                # the ComparisonTask or Label
    ack: object                  # the TaskAck or LabelAck it will be answered with
    done: Future


class _Committer(threading.Thread):
    """Single writer: batches queued frames into one write + fsync, then runs their commits."""

    def __init__(self, writer: seglog.SegmentWriter, on_fatal: Callable[[BaseException], None]):
        super().__init__(name="ingest-committer", daemon=True)
        self._writer = writer
        self._on_fatal = on_fatal
        self._cv = threading.Condition()
        self._queue: list[tuple[bytes, Callable[[], None], Future]] = []
        self._closing = False
        self.fsyncs = 0

    def enqueue(self, frame: bytes, commit: Callable[[], None]) -> Future:
        done: Future = Future()
        with self._cv:
            if self._closing:
                raise V.IngestError("UNAVAILABLE", "the store is shutting down")
            self._queue.append((frame, commit, done))
            self._cv.notify()
        return done

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        self.join()
        self._writer.close()

    def run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    self._cv.wait()
                group, self._queue = self._queue, []
                if not group and self._closing:
                    return
            try:
                self._writer.append([frame for frame, _, _ in group])
                self._writer.sync()
                self.fsyncs += 1
            except BaseException as exc:  # disk full, I/O error: the state on disk is unknown
                for _, _, done in group:
                    done.set_exception(exc)
                self._on_fatal(exc)
                return
            for _, commit, done in group:
                commit()
                done.set_result(None)


class IngestStore:
    def __init__(self, config: StoreConfig, fsync: Callable[[int], None] = os.fsync,
                 clock: Callable[[], float] = time.time,
                 on_fatal: Callable[[BaseException], None] | None = None):
        self.config, self.limits = config, config.limits
        self._clock = clock
        self._lock = threading.Lock()
        self._failed: BaseException | None = None
        self._on_fatal_cb = on_fatal
        # Durable state.
        self._tasks: dict[str, tuple[ComparisonTask, TaskAck]] = {}
        self._labels: list[LabeledComparison] = []         # index == sequence
        self._label_of_task: dict[str, int] = {}           # task_id -> sequence
        self._per_labeler: collections.Counter = collections.Counter()
        self._cant_tell = 0
        # Queue state (memory only).
        self._pending: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._leases: dict[str, float] = {}                 # task_id -> expiry (clock seconds)
        self._lease_heap: list[tuple[float, str]] = []
        # Accepted, not yet durable.
        self._inflight_tasks: dict[str, _InFlight] = {}
        self._inflight_labels: dict[str, _InFlight] = {}
        self._next_task_seq = 0
        self._next_label_seq = 0

        os.makedirs(config.data_dir, exist_ok=True)
        self._lock_fd = _lock_data_dir(config.data_dir)
        try:
            writer = self._replay(config, fsync)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._committer = _Committer(writer, self._on_fatal)
        self._committer.start()

    # --- replay ---------------------------------------------------------------------------

    def _replay(self, config: StoreConfig, fsync) -> seglog.SegmentWriter:
        """Rebuild the state from the log, cut a torn tail, and open the log for appends."""
        batches, self.replay_report = seglog.replay(config.data_dir, repair=True)
        for kind, batch in batches:
            self._apply_replayed(kind, batch)
        if self.replay_report.torn_bytes_dropped:
            logger.warning("replay: dropped a torn tail of %d bytes from %s",
                           self.replay_report.torn_bytes_dropped, self.replay_report.torn_segment)
        return seglog.SegmentWriter(config.data_dir, config.segment_bytes,
                                    config.write_chunk_bytes, fsync)

    def _apply_replayed(self, kind: int, batch) -> None:
        if kind == seglog.KIND_TASKS:
            for task, ack in tasks_from_batch(batch):
                if ack.task_sequence != self._next_task_seq or task.task_id in self._tasks:
                    raise seglog.CorruptLog(f"task {task.task_id!r} out of sequence in the log")
                self._commit_task(task, ack)
        elif kind == seglog.KIND_LABELS:
            for item in labeled_from_batch(batch):
                if item.sequence != self._next_label_seq or item.task.task_id not in self._tasks:
                    raise seglog.CorruptLog(f"label {item.sequence} out of sequence in the log")
                self._commit_label(item)

    # --- commits: run with the lock held, once the rows are durable -------------------------

    def _commit_task(self, task: ComparisonTask, ack: TaskAck) -> None:
        self._tasks[task.task_id] = (task, ack)
        self._next_task_seq = max(self._next_task_seq, ack.task_sequence + 1)
        self._pending[task.task_id] = None

    def _commit_label(self, item: LabeledComparison) -> None:
        assert item.sequence == len(self._labels), "labels must commit in sequence order"
        self._labels.append(item)
        self._label_of_task[item.task.task_id] = item.sequence
        self._next_label_seq = max(self._next_label_seq, item.sequence + 1)
        self._per_labeler[item.label.labeler_id] += 1
        self._cant_tell += int(item.label.cant_tell)
        self._pending.pop(item.task.task_id, None)
        self._leases.pop(item.task.task_id, None)

    def _locked(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            with self._lock:
                fn()
        return run

    def _on_fatal(self, exc: BaseException) -> None:
        logger.critical("log write failed; refusing all writes from now on: %r", exc)
        with self._lock:
            self._failed = exc
        if self._on_fatal_cb:
            self._on_fatal_cb(exc)

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise V.IngestError("UNAVAILABLE", f"store failed: {self._failed!r}")

    @staticmethod
    def _wait(futures: list[Future]) -> None:
        for done in futures:
            exc = done.exception()
            if exc is not None:
                raise V.IngestError("UNAVAILABLE", f"log write failed: {exc!r}")

    # --- the API ---------------------------------------------------------------------------

    def post_tasks(self, tasks: list[ComparisonTask]) -> list[TaskAck]:
        """Store new tasks durably; retries of stored ones get their first answer."""
        V.check_batch("tasks", len(tasks), self.limits)
        for i, task in enumerate(tasks):
            V.check_task(f"tasks[{i}]", task, self.limits)
        with self._lock:
            self._check_usable()
            acks, waits, new = self._plan_tasks(tasks)
            if new:
                acks_new = [ack for _, ack in new]
                frame = seglog.encode_frame(seglog.KIND_TASKS, _ipc(
                    tasks_to_batch([t for t, _ in new], acks_new)))
                done = self._committer.enqueue(frame, self._locked(
                    lambda: self._finish_tasks(new)))
                for task, ack in new:
                    self._inflight_tasks[task.task_id] = _InFlight(task, ack, done)
                waits.append(done)
        self._wait(waits)
        return acks

    def _plan_tasks(self, tasks: list[ComparisonTask]):
        """Answers for every task, futures to wait for, and the (task, ack) pairs to write."""
        acks, waits, new, seen = [], [], [], {}
        open_tasks = len(self._tasks) + len(self._inflight_tasks) - len(self._labels)
        now_ms = int(self._clock() * 1000)
        for i, task in enumerate(tasks):
            prior = self._prior_task(task.task_id, seen)
            if prior is not None:
                value, ack, done = prior
                if value != task:
                    raise V.IngestError("ALREADY_EXISTS", f"tasks[{i}].task_id {task.task_id!r} "
                                        "is already stored with different content")
                acks.append(ack)
                if done is not None:
                    waits.append(done)
                continue
            ack = TaskAck(task.task_id, self._next_task_seq + len(new), now_ms)
            new.append((task, ack))
            seen[task.task_id] = (task, ack, None)
            acks.append(ack)
        if new and open_tasks + len(new) > self.limits.max_open_tasks:
            raise V.IngestError("RESOURCE_EXHAUSTED", f"tasks: {open_tasks} tasks are open, "
                                f"the limit is {self.limits.max_open_tasks}")
        self._next_task_seq += len(new)
        return acks, waits, new

    def _prior_task(self, task_id: str, seen: dict):
        if task_id in seen:
            return seen[task_id]
        if task_id in self._tasks:
            task, ack = self._tasks[task_id]
            return task, ack, None
        if task_id in self._inflight_tasks:
            f = self._inflight_tasks[task_id]
            return f.value, f.ack, f.done
        return None

    def _finish_tasks(self, new: list[tuple[ComparisonTask, TaskAck]]) -> None:
        for task, ack in new:
            del self._inflight_tasks[task.task_id]
            self._commit_task(task, ack)

    def submit_labels(self, labels: list[Label]) -> list[LabelAck]:
        """Store labels durably, each for a stored task; retries get their first answer."""
        V.check_batch("labels", len(labels), self.limits)
        for i, label in enumerate(labels):
            V.check_label(f"labels[{i}]", label, self.limits)
        with self._lock:
            self._check_usable()
            acks, waits, new = self._plan_labels(labels)
            if new:
                frame = seglog.encode_frame(seglog.KIND_LABELS, _ipc(labeled_to_batch(new)))
                done = self._committer.enqueue(frame, self._locked(
                    lambda: self._finish_labels(new)))
                for item in new:
                    ack = LabelAck(item.task.task_id, item.sequence, item.labeled_at_ms)
                    self._inflight_labels[item.task.task_id] = _InFlight(item.label, ack, done)
                waits.append(done)
        self._wait(waits)
        return acks

    def _plan_labels(self, labels: list[Label]):
        acks, waits, new, seen = [], [], [], {}
        now_ms = int(self._clock() * 1000)
        for i, label in enumerate(labels):
            if label.task_id not in self._tasks:
                raise V.IngestError("NOT_FOUND", f"labels[{i}].task_id {label.task_id!r} "
                                    "is not a stored task")
            prior = self._prior_label(label.task_id, seen)
            if prior is not None:
                value, ack, done = prior
                if value != label:
                    raise V.IngestError("ALREADY_EXISTS", f"labels[{i}].task_id "
                                        f"{label.task_id!r} is already labeled differently")
                acks.append(ack)
                if done is not None:
                    waits.append(done)
                continue
            item = LabeledComparison(self._next_label_seq + len(new),
                                     self._tasks[label.task_id][0], label, now_ms)
            ack = LabelAck(label.task_id, item.sequence, now_ms)
            new.append(item)
            seen[label.task_id] = (label, ack, None)
            acks.append(ack)
        self._next_label_seq += len(new)
        return acks, waits, new

    def _prior_label(self, task_id: str, seen: dict):
        if task_id in seen:
            return seen[task_id]
        if task_id in self._label_of_task:
            item = self._labels[self._label_of_task[task_id]]
            return item.label, LabelAck(task_id, item.sequence, item.labeled_at_ms), None
        if task_id in self._inflight_labels:
            f = self._inflight_labels[task_id]
            return f.value, f.ack, f.done
        return None

    def _finish_labels(self, new: list[LabeledComparison]) -> None:
        for item in new:
            del self._inflight_labels[item.task.task_id]
            self._commit_label(item)

    def lease(self, labeler_id: str, max_tasks: int, lease_seconds: float,
              max_bytes: int = 1 << 62) -> tuple[list[ComparisonTask], int, int]:
        """Up to max_tasks pending tasks, oldest first; when their lease expires (unix ms);
        and how many labels this labeler has stored so far.

        Stops early (after at least one task) before the tasks would exceed max_bytes, so the
        response fits the message size limit.
        """
        V.check_lease(labeler_id, max_tasks, lease_seconds, self.limits)
        with self._lock:
            now = self._clock()
            self._reclaim_expired(now)
            expiry = now + lease_seconds
            task_ids, size = [], 0
            for task_id in self._pending:
                if len(task_ids) == max_tasks:
                    break
                if task_id in self._inflight_labels:
                    continue
                size += approx_bytes(self._tasks[task_id][0])
                if task_ids and size > max_bytes:
                    break
                task_ids.append(task_id)
            for task_id in task_ids:
                del self._pending[task_id]
                self._leases[task_id] = expiry
                heapq.heappush(self._lease_heap, (expiry, task_id))
            return ([self._tasks[t][0] for t in task_ids], int(expiry * 1000),
                    self._per_labeler[labeler_id])

    def _reclaim_expired(self, now: float) -> None:
        """Expired, unlabeled leases go back to the front of the queue."""
        back = []
        while self._lease_heap and self._lease_heap[0][0] <= now:
            expiry, task_id = heapq.heappop(self._lease_heap)
            if self._leases.get(task_id) == expiry:  # not relabeled or re-leased since
                del self._leases[task_id]
                back.append(task_id)
        for task_id in reversed(back):
            self._pending[task_id] = None
            self._pending.move_to_end(task_id, last=False)

    def read_labels(self, cursor: int, max_labels: int,
                    max_bytes: int = 1 << 62) -> tuple[list[LabeledComparison], int]:
        """Durable labels with sequence >= cursor, in order, and the cursor after them.

        Stops early (after at least one label) before the labels would exceed max_bytes.
        """
        V.check_read(cursor, max_labels, self.limits)
        with self._lock:
            if cursor > len(self._labels):
                raise V.IngestError("OUT_OF_RANGE", f"cursor {cursor} is past the end of the "
                                    f"label log ({len(self._labels)} labels)")
            candidates = self._labels[cursor: cursor + max_labels]
        items, size = [], 0
        for item in candidates:
            size += approx_bytes(item.task) + 64 + len(item.label.note.encode())
            if items and size > max_bytes:
                break
            items.append(item)
        return items, cursor + len(items)

    def stats(self) -> dict:
        with self._lock:
            now = self._clock()
            self._reclaim_expired(now)
            since_ms = (now - RATE_WINDOW_S) * 1000
            recent = 0
            for item in reversed(self._labels):
                if item.labeled_at_ms < since_ms:
                    break
                recent += 1
            return {
                "tasks_total": len(self._tasks),
                "pending": len(self._pending),
                "leased": len(self._leases),
                "labeled": len(self._labels),
                "cant_tell": self._cant_tell,
                "per_labeler": dict(self._per_labeler),
                "label_rate_per_s": recent / RATE_WINDOW_S,
                "rate_window_s": RATE_WINDOW_S,
                "replay_segments": self.replay_report.segments,
                "replay_torn_bytes_dropped": self.replay_report.torn_bytes_dropped,
                "segments": len(seglog.segment_paths(self.config.data_dir)),
                "fsyncs": self._committer.fsyncs,
            }

    def close(self) -> None:
        """Finish queued writes (they are fsync'd and committed), then close the log."""
        self._committer.close()
        os.close(self._lock_fd)


def approx_bytes(task: ComparisonTask) -> int:
    """An upper bound on the task's size as a proto (varints take at most 5 bytes + tags)."""
    text = len(task.query.encode()) + sum(len(s.encode()) + 8 for s in task.samples)
    meta = sum(len(k.encode()) + len(v.encode()) + 16 for k, v in task.metadata.items())
    ids = len(task.query_token_ids) + sum(len(s) + 2 for s in task.sample_token_ids)
    return 64 + len(task.task_id.encode()) + text + meta + 6 * ids


def _ipc(batch) -> bytes:
    return batch.serialize().to_pybytes()
