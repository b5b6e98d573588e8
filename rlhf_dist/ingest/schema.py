"""Comparison records as plain dataclasses, and the one Arrow schema for them at rest.

Importable with only the standard library and pyarrow (no gRPC): the training job, the
reward-model trainer and the store all speak these types. On the wire the same fields are the
messages of comparisons.proto; tests/test_ingest_schema.py keeps the two in step.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

CANT_TELL_INDEX = -1  # chosen_index of a "can't tell" label
DEFAULT_K = 4         # samples per comparison (Ziegler et al. 2019, section 2.1: best of 4)


@dataclass
class ComparisonTask:
    """One query with K continuations for a labeler to compare."""
    task_id: str                    # chosen by the poster; the idempotency key
    query: str                      # text shown to the labeler
    samples: list[str]              # (K,) continuations
    policy_version: int             # version of the policy that wrote the samples
    metadata: dict[str, str] = field(default_factory=dict)  # free form
    query_token_ids: list[int] = field(default_factory=list)  # (Tq,) optional exact tokens
    sample_token_ids: list[list[int]] = field(default_factory=list)  # [] or (K, Ts_k)


@dataclass
class Label:
    """A labeler's answer to one task."""
    task_id: str
    chosen_index: int               # 0..K-1, or CANT_TELL_INDEX when cant_tell
    labeler_id: str
    cant_tell: bool = False         # no sample was better; the reward trainer skips these
    note: str = ""


@dataclass
class LabeledComparison:
    """A stored label with its whole task: what the reward-model trainer reads."""
    sequence: int                   # position in the label log; read cursors count these
    task: ComparisonTask
    label: Label
    labeled_at_ms: int = 0          # server wall clock when stored (unix ms)


@dataclass(frozen=True)
class TaskAck:
    """The answer to posting one task; a retry gets the very same answer."""
    task_id: str
    task_sequence: int              # position in the task log
    posted_at_ms: int


@dataclass(frozen=True)
class LabelAck:
    """The answer to submitting one label; a retry gets the very same answer."""
    task_id: str
    sequence: int                   # the label's position in the label log
    labeled_at_ms: int


@dataclass
class LeaseGrant:
    """What a lease hands a labeler."""
    tasks: list[ComparisonTask]     # oldest pending first; may be fewer than asked, or none
    expires_at_ms: int              # unlabeled tasks return to the queue after this (unix ms)
    labeler_labeled: int            # labels stored so far under this labeler_id


# --- At rest: Arrow schemas of the log segments and of the Parquet export -------------------

_TASK_FIELDS = [
    pa.field("task_id", pa.string(), nullable=False),
    pa.field("query", pa.string(), nullable=False),
    pa.field("samples", pa.list_(pa.string()), nullable=False),
    pa.field("policy_version", pa.int64(), nullable=False),
    pa.field("metadata", pa.map_(pa.string(), pa.string()), nullable=False),
    pa.field("query_token_ids", pa.list_(pa.int32()), nullable=False),
    pa.field("sample_token_ids", pa.list_(pa.list_(pa.int32())), nullable=False),
]

# The one schema for labels at rest: one row per LabeledComparison, the task denormalised in,
# so the label log alone answers a reader and an export. Label.task_id is the task_id column.
LABEL_SCHEMA = pa.schema(
    [pa.field("sequence", pa.int64(), nullable=False)]
    + _TASK_FIELDS
    + [
        pa.field("chosen_index", pa.int32(), nullable=False),
        pa.field("labeler_id", pa.string(), nullable=False),
        pa.field("cant_tell", pa.bool_(), nullable=False),
        pa.field("note", pa.string(), nullable=False),
        pa.field("labeled_at_ms", pa.int64(), nullable=False),
    ]
)

# Posted tasks at rest (needed to validate labels and to answer task retries after a restart).
TASK_SCHEMA = pa.schema(
    [pa.field("task_sequence", pa.int64(), nullable=False)]
    + _TASK_FIELDS
    + [pa.field("posted_at_ms", pa.int64(), nullable=False)]
)


def _task_columns(tasks: list[ComparisonTask]) -> dict[str, list]:
    return {
        "task_id": [t.task_id for t in tasks],
        "query": [t.query for t in tasks],
        "samples": [list(t.samples) for t in tasks],
        "policy_version": [t.policy_version for t in tasks],
        "metadata": [sorted(t.metadata.items()) for t in tasks],
        "query_token_ids": [list(t.query_token_ids) for t in tasks],
        "sample_token_ids": [[list(s) for s in t.sample_token_ids] for t in tasks],
    }


def _task_from_row(row: dict) -> ComparisonTask:
    return ComparisonTask(
        task_id=row["task_id"],
        query=row["query"],
        samples=list(row["samples"]),
        policy_version=row["policy_version"],
        metadata=dict(row["metadata"]),
        query_token_ids=list(row["query_token_ids"]),
        sample_token_ids=[list(s) for s in row["sample_token_ids"]],
    )


def tasks_to_batch(tasks: list[ComparisonTask], acks: list[TaskAck]) -> pa.RecordBatch:
    columns = {"task_sequence": [a.task_sequence for a in acks], **_task_columns(tasks)}
    columns["posted_at_ms"] = [a.posted_at_ms for a in acks]
    return pa.RecordBatch.from_pydict(columns, schema=TASK_SCHEMA)


def tasks_from_batch(batch: pa.RecordBatch) -> list[tuple[ComparisonTask, TaskAck]]:
    out = []
    for row in batch.to_pylist():
        ack = TaskAck(row["task_id"], row["task_sequence"], row["posted_at_ms"])
        out.append((_task_from_row(row), ack))
    return out


def labeled_to_batch(items: list[LabeledComparison]) -> pa.RecordBatch:
    columns = {"sequence": [c.sequence for c in items], **_task_columns([c.task for c in items])}
    columns["chosen_index"] = [c.label.chosen_index for c in items]
    columns["labeler_id"] = [c.label.labeler_id for c in items]
    columns["cant_tell"] = [c.label.cant_tell for c in items]
    columns["note"] = [c.label.note for c in items]
    columns["labeled_at_ms"] = [c.labeled_at_ms for c in items]
    return pa.RecordBatch.from_pydict(columns, schema=LABEL_SCHEMA)


def labeled_from_batch(batch: pa.RecordBatch) -> list[LabeledComparison]:
    out = []
    for row in batch.to_pylist():
        label = Label(row["task_id"], row["chosen_index"], row["labeler_id"],
                      row["cant_tell"], row["note"])
        out.append(LabeledComparison(row["sequence"], _task_from_row(row), label,
                                     row["labeled_at_ms"]))
    return out
