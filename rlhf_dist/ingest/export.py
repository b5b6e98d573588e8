"""`rlhf-dist ingest export`: the label log (and optionally the task log) as Parquet.

Reads the segments without repairing them, so it is safe beside a running server: a record
still being written at the tail is simply not exported.
"""
from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from rlhf_dist.ingest import log as seglog
from rlhf_dist.ingest.schema import LABEL_SCHEMA, TASK_SCHEMA


def _write(batches: list[pa.RecordBatch], schema: pa.Schema, out: str) -> int:
    table = pa.Table.from_batches(batches, schema=schema)
    tmp = f"{out}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, out)  # never a half-written Parquet file under the final name
    return table.num_rows


def export_parquet(data_dir: str, out: str, tasks_out: str | None = None) -> dict:
    """Write labels (LABEL_SCHEMA rows, in sequence order) to `out`; counts written."""
    if not seglog.segment_paths(data_dir):
        raise FileNotFoundError(f"no log segments in {data_dir}")
    batches, _ = seglog.replay(data_dir, repair=False)
    counts = {"labels": _write([b for k, b in batches if k == seglog.KIND_LABELS],
                               LABEL_SCHEMA, out)}
    if tasks_out:
        counts["tasks"] = _write([b for k, b in batches if k == seglog.KIND_TASKS],
                                 TASK_SCHEMA, tasks_out)
    return counts
