"""The proto, its committed stubs, the dataclasses and the Arrow schema stay in step."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from rlhf_dist.ingest import generate_stubs
from rlhf_dist.ingest.schema import (LABEL_SCHEMA, TASK_SCHEMA, ComparisonTask, Label,
                                     LabeledComparison, TaskAck, labeled_from_batch,
                                     labeled_to_batch, tasks_from_batch, tasks_to_batch)

REPO = Path(__file__).resolve().parents[1]

# proto scalar type -> the Arrow type that holds it at rest
_FD = __import__("google.protobuf.descriptor", fromlist=["FieldDescriptor"]).FieldDescriptor
_ARROW_OF = {_FD.TYPE_STRING: pa.string(), _FD.TYPE_INT64: pa.int64(),
             _FD.TYPE_INT32: pa.int32(), _FD.TYPE_BOOL: pa.bool_()}


def test_committed_stubs_match_a_fresh_generation(tmp_path):
    import importlib.metadata
    import re

    stub = (REPO / "rlhf_dist/ingest/comparisons_pb2_grpc.py").read_text()
    generated_with = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", stub).group(1)
    installed = importlib.metadata.version("grpcio-tools")
    if installed != generated_with:  # another protoc writes other bytes for the same proto
        pytest.skip(f"stubs were generated with grpcio-tools {generated_with}, "
                    f"{installed} is installed")
    written = generate_stubs.generate(str(tmp_path))
    for path in written:
        committed = REPO / "rlhf_dist" / "ingest" / Path(path).name
        assert Path(path).read_bytes() == committed.read_bytes(), (
            f"{committed.name} is stale: run python rlhf_dist/ingest/generate_stubs.py")


def test_stubs_import_package_relative():
    grpc_stub = (REPO / "rlhf_dist/ingest/comparisons_pb2_grpc.py").read_text()
    assert "from rlhf_dist.ingest import comparisons_pb2" in grpc_stub
    assert "\nimport comparisons_pb2" not in grpc_stub


def _arrow_type(field) -> pa.DataType:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return pa.map_(pa.string(), pa.string())
    if field.type == _FD.TYPE_MESSAGE and field.message_type.name == "TokenIds":
        return pa.list_(pa.list_(pa.int32()))
    base = _ARROW_OF[field.type]
    return pa.list_(base) if field.is_repeated else base


def test_proto_and_arrow_label_schema_in_step():
    from rlhf_dist.ingest import comparisons_pb2 as pb

    expected = {}
    for f in pb.LabeledComparison.DESCRIPTOR.fields:
        if f.name in ("task", "label"):
            for sub in f.message_type.fields:  # flattened; label.task_id is task.task_id
                expected[sub.name] = _arrow_type(sub)
        else:
            expected[f.name] = _arrow_type(f)
    actual = {f.name: f.type for f in LABEL_SCHEMA}
    assert actual == expected


def test_task_schema_and_dataclasses_match_proto():
    from rlhf_dist.ingest import comparisons_pb2 as pb

    task_fields = [f.name for f in pb.ComparisonTask.DESCRIPTOR.fields]
    assert list(ComparisonTask.__dataclass_fields__) == task_fields
    assert list(Label.__dataclass_fields__) == [f.name for f in pb.Label.DESCRIPTOR.fields]
    assert list(LabeledComparison.__dataclass_fields__) == [
        f.name for f in pb.LabeledComparison.DESCRIPTOR.fields]
    assert list(TaskAck.__dataclass_fields__) == [f.name for f in pb.TaskAck.DESCRIPTOR.fields]
    assert TASK_SCHEMA.names == ["task_sequence", *task_fields, "posted_at_ms"]


def test_arrow_round_trip_is_exact():
    task = ComparisonTask("t-1", "q ü", ["a", "", "c", "d"], 7, {"k": "v", "e": ""},
                          [5, 6], [[1], [], [2, 3], [4]])
    got = tasks_from_batch(tasks_to_batch([task], [TaskAck("t-1", 3, 99)]))
    assert got == [(task, TaskAck("t-1", 3, 99))]
    item = LabeledComparison(4, task, Label("t-1", -1, "ann", True, "no idea"), 1234)
    assert labeled_from_batch(labeled_to_batch([item])) == [item]


def test_light_imports():
    code = ("import sys, rlhf_dist.ingest; assert 'pyarrow' not in sys.modules;"
            "import rlhf_dist.ingest.schema, rlhf_dist.ingest.store;"
            "assert 'grpc' not in sys.modules, 'schema/store must not import grpc'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
