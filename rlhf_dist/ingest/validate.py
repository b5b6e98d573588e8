"""Input checks for the ingest service: pure functions over the schema dataclasses.

Each refusal is an IngestError carrying a gRPC status code name and a message that names the
field (`tasks[3].samples[1]`), so the servicer can pass it straight on. The mapping:
  - INVALID_ARGUMENT: empty, malformed or out-of-range values (wrong K, wrong index, ...);
  - RESOURCE_EXHAUSTED: a field, batch or queue over its size limit (gRPC itself uses this
    code for a whole message over the size limit);
  - NOT_FOUND / ALREADY_EXISTS: raised by the store, which knows what is stored.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from rlhf_dist.ingest.schema import CANT_TELL_INDEX, DEFAULT_K, ComparisonTask, Label

# Ids end up in file names of exports, terminal output and logs: keep them to a safe alphabet.
_ID_RE = re.compile(r"[A-Za-z0-9._:/@+=-]+")  # fullmatch: "$" would let a trailing \n in


# A server restart looks like UNAVAILABLE; a slow fsync like DEADLINE_EXCEEDED; a call that
# reached a server already shutting down, before any handler took it, is CANCELLED
# (grpc/grpc#41785; the client never cancels its own calls). All are worth another try;
# every other code means the request itself is wrong.
RETRYABLE_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"})


class IngestError(Exception):
    """A refused request: `code` is a grpc.StatusCode name, `message` names the field."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def retryable(self) -> bool:
        """The service could not be reached or answer in time: the same request may succeed
        later (submission is idempotent, so a resend is safe)."""
        return self.code in RETRYABLE_CODES


@dataclass(frozen=True)
class Limits:
    """What the service accepts. Sizes are UTF-8 bytes; counts are list lengths."""
    k: int = DEFAULT_K                   # samples per task
    max_id_bytes: int = 128              # task_id, labeler_id, metadata keys
    max_query_bytes: int = 32 * 1024
    max_sample_bytes: int = 32 * 1024
    max_note_bytes: int = 4 * 1024
    max_metadata_entries: int = 32
    max_metadata_value_bytes: int = 1024
    max_token_ids: int = 8192            # per query and per sample
    max_batch: int = 1000                # tasks or labels per request
    max_lease_tasks: int = 100
    max_lease_seconds: float = 24 * 3600.0
    max_read_labels: int = 10_000
    max_open_tasks: int = 1_000_000      # posted and not yet labeled


def _invalid(message: str) -> IngestError:
    return IngestError("INVALID_ARGUMENT", message)


def _too_big(message: str) -> IngestError:
    return IngestError("RESOURCE_EXHAUSTED", message)


def check_text(name: str, value: str, max_bytes: int, allow_empty: bool = False) -> None:
    if not value and not allow_empty:
        raise _invalid(f"{name} is empty")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise _too_big(f"{name} is {size} bytes, over the limit of {max_bytes}")


def check_id(name: str, value: str, limits: Limits) -> None:
    check_text(name, value, limits.max_id_bytes)
    if not _ID_RE.fullmatch(value):
        raise _invalid(f"{name} has characters outside [A-Za-z0-9._:/@+=-]")


def check_batch(name: str, n: int, limits: Limits) -> None:
    if n == 0:
        raise _invalid(f"{name} is empty")
    if n > limits.max_batch:
        raise _too_big(f"{name} has {n} entries, over the limit of {limits.max_batch}")


def _check_token_ids(name: str, ids: list[int], limits: Limits) -> None:
    if len(ids) > limits.max_token_ids:
        raise _too_big(f"{name} has {len(ids)} ids, over the limit of {limits.max_token_ids}")
    if any(i < 0 for i in ids):
        raise _invalid(f"{name} has a negative token id")


def check_task(name: str, task: ComparisonTask, limits: Limits) -> None:
    check_id(f"{name}.task_id", task.task_id, limits)
    check_text(f"{name}.query", task.query, limits.max_query_bytes)
    if len(task.samples) != limits.k:
        raise _invalid(f"{name}.samples has {len(task.samples)} samples, expected K={limits.k}")
    for i, sample in enumerate(task.samples):
        # A policy may stop at once, so an empty continuation is a legitimate sample.
        check_text(f"{name}.samples[{i}]", sample, limits.max_sample_bytes, allow_empty=True)
    if task.policy_version < 0:
        raise _invalid(f"{name}.policy_version is negative ({task.policy_version})")
    if len(task.metadata) > limits.max_metadata_entries:
        raise _too_big(f"{name}.metadata has {len(task.metadata)} entries, "
                       f"over the limit of {limits.max_metadata_entries}")
    for key, value in task.metadata.items():
        check_text(f"{name}.metadata key", key, limits.max_id_bytes)
        check_text(f"{name}.metadata[{key!r}]", value, limits.max_metadata_value_bytes,
                   allow_empty=True)
    _check_token_ids(f"{name}.query_token_ids", task.query_token_ids, limits)
    if task.sample_token_ids and len(task.sample_token_ids) != limits.k:
        raise _invalid(f"{name}.sample_token_ids has {len(task.sample_token_ids)} lists, "
                       f"expected 0 or K={limits.k}")
    for i, ids in enumerate(task.sample_token_ids):
        _check_token_ids(f"{name}.sample_token_ids[{i}]", ids, limits)


def check_label(name: str, label: Label, limits: Limits) -> None:
    """Checks that need no stored state; the store checks the task exists (NOT_FOUND)."""
    check_id(f"{name}.task_id", label.task_id, limits)
    check_id(f"{name}.labeler_id", label.labeler_id, limits)
    if label.cant_tell:
        if label.chosen_index != CANT_TELL_INDEX:
            raise _invalid(f"{name}.chosen_index must be {CANT_TELL_INDEX} when cant_tell "
                           f"is set, got {label.chosen_index}")
    elif not 0 <= label.chosen_index < limits.k:
        raise _invalid(f"{name}.chosen_index {label.chosen_index} is outside 0..{limits.k - 1}")
    check_text(f"{name}.note", label.note, limits.max_note_bytes, allow_empty=True)


def check_lease(labeler_id: str, max_tasks: int, lease_seconds: float, limits: Limits) -> None:
    check_id("labeler_id", labeler_id, limits)
    if max_tasks <= 0:
        raise _invalid(f"max_tasks must be positive, got {max_tasks}")
    if max_tasks > limits.max_lease_tasks:
        raise _too_big(f"max_tasks {max_tasks} is over the limit of {limits.max_lease_tasks}")
    if not math.isfinite(lease_seconds) or lease_seconds <= 0:
        raise _invalid(f"lease_seconds must be positive and finite, got {lease_seconds}")
    if lease_seconds > limits.max_lease_seconds:
        raise _invalid(f"lease_seconds {lease_seconds} is over the limit of "
                       f"{limits.max_lease_seconds}")


def check_read(cursor: int, max_labels: int, limits: Limits) -> None:
    if cursor < 0:
        raise _invalid(f"cursor must be >= 0, got {cursor}")
    if max_labels <= 0:
        raise _invalid(f"max_labels must be positive, got {max_labels}")
    if max_labels > limits.max_read_labels:
        raise _too_big(f"max_labels {max_labels} is over the limit of {limits.max_read_labels}")
