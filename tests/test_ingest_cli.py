"""The command line: export to Parquet, the terminal labeling client, start-up refusals."""
from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from rlhf_dist.ingest import cli
from rlhf_dist.ingest import log as seglog
from rlhf_dist.ingest.client import IngestClient
from rlhf_dist.ingest.schema import LABEL_SCHEMA, Label
from rlhf_dist.ingest.terminal import parse_answer

try:
    from tests.ingest_helpers import JOB_TOKEN, LABELER_TOKEN, REPO, ServerProcess, make_task
except ImportError:
    from ingest_helpers import JOB_TOKEN, LABELER_TOKEN, REPO, ServerProcess, make_task


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


def test_terminal_labeling_and_export(tmp_path):
    server = ServerProcess(tmp_path / "data").start()
    try:
        job = IngestClient(server.address, JOB_TOKEN)
        job.post_tasks([make_task(f"tui-{i}") for i in range(4)])
        script = "2 the others ramble\nc\ns\nwhat\n9\n4\nq\n"
        out = subprocess.run(
            [sys.executable, "-m", "rlhf_dist.ingest.cli", "label", "--address", server.address,
             "--labeler-id", "ann"], input=script, capture_output=True, text=True, timeout=60,
            env=_env() | {"RLHF_INGEST_TOKEN": LABELER_TOKEN}, cwd=REPO)
        assert out.returncode == 0, out.stderr
        assert "Query:" in out.stdout and "[4]" in out.stdout and "sample 3 of tui-0" in out.stdout
        assert "ann has labeled 1 comparisons" in out.stdout
        assert "ann has labeled 3 comparisons (3 this session)" in out.stdout
        assert "Skipped." in out.stdout and "Not understood: 'what'" in out.stdout
        labels = [(c.task.task_id, c.label) for c in job.iter_labels(0)]
        assert labels == [("tui-0", Label("tui-0", 1, "ann", note="the others ramble")),
                          ("tui-1", Label("tui-1", -1, "ann", cant_tell=True)),
                          ("tui-3", Label("tui-3", 3, "ann"))]  # tui-2 was skipped

        out_file = tmp_path / "labels.parquet"
        tasks_file = tmp_path / "tasks.parquet"
        assert cli.main(["export", "--data-dir", str(server.data_dir), "--out", str(out_file),
                         "--tasks-out", str(tasks_file)]) == 0  # beside the live server
        table = pq.read_table(out_file)
        assert table.schema.equals(LABEL_SCHEMA, check_metadata=False)
        assert table.column("task_id").to_pylist() == ["tui-0", "tui-1", "tui-3"]
        assert table.column("sample_token_ids").to_pylist()[0] == [
            [10, 20], [11, 21], [12, 22], [13, 23]]
        assert pq.read_table(tasks_file).num_rows == 4
    finally:
        server.kill()


@pytest.mark.parametrize("line,expected", [
    ("1", ("pick", 0, "")), (" 4  fine ", ("pick", 3, "fine")), ("c", ("cant_tell", -1, "")),
    ("? same", ("cant_tell", -1, "same")), ("s", ("skip", -1, "")), ("Q", ("quit", -1, "")),
    ("0", None), ("5", None), ("", None), ("one", None)])
def test_parse_answer(line, expected):
    assert parse_answer(line, 4) == expected


def _serve(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf_dist.ingest.cli", "serve",
                           "--data-dir", str(tmp_path / "data"), "--port", "0", *args],
                          capture_output=True, text=True, timeout=60, env=_env(), cwd=REPO)


def test_serve_refuses_without_tokens(tmp_path):
    out = _serve([], tmp_path)
    assert out.returncode == 2 and "no tokens configured" in out.stderr


def test_bad_files_and_refused_tokens_are_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "tokens"
    bad.write_text("bogus line\n")
    out = _serve(["--tokens-file", str(bad)], tmp_path)
    assert out.returncode == 2 and f"{bad}:1: expected 'job TOKEN' or 'labeler TOKEN'" in out.stderr
    assert "Traceback" not in out.stderr
    out = _serve(["--tokens-file", str(tmp_path / "missing")], tmp_path)
    assert out.returncode == 2 and "No such file or directory" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "rlhf_dist.ingest.cli", "export", "--data-dir",
                          str(tmp_path / "nope"), "--out", str(tmp_path / "l.parquet")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "rlhf-dist ingest export:" in out.stderr and "Traceback" not in out.stderr
    server = ServerProcess(tmp_path / "data").start()
    try:
        out = subprocess.run([sys.executable, "-m", "rlhf_dist.ingest.cli", "label", "--address", server.address,
                              "--labeler-id", "ann"],
                             capture_output=True, text=True, timeout=60, input="q\n",
                             env={**os.environ, "RLHF_INGEST_TOKEN": "wrong"})
    finally:
        server.terminate()
    assert out.returncode == 2 and "UNAUTHENTICATED" in out.stderr and "Traceback" not in out.stderr


def test_serve_refuses_a_damaged_closed_segment(tmp_path):
    from rlhf_dist.ingest.store import IngestStore, StoreConfig

    store = IngestStore(StoreConfig(str(tmp_path / "data"), segment_bytes=2048))
    store.post_tasks([make_task(f"d-{i}") for i in range(20)])
    store.close()
    first = seglog.segment_paths(str(tmp_path / "data"))[0]
    with open(first, "r+b") as f:
        f.seek(os.path.getsize(first) - 3)
        f.write(b"\x00\x00\x00")
    out = _serve(["--job-token", "j"], tmp_path)
    assert out.returncode == 2 and "refusing to start" in out.stderr


def test_serve_refuses_a_data_dir_in_use(tmp_path):
    server = ServerProcess(tmp_path / "data").start()
    try:
        out = _serve(["--job-token", "j"], tmp_path)
        assert out.returncode == 2 and "in use by another ingest server" in out.stderr
    finally:
        server.kill()


def test_tokens_from_file_and_environment(tmp_path, monkeypatch):
    path = tmp_path / "tokens"
    path.write_text("# roles\njob jt1\nlabeler  lt1 \n\njob jt2  # second job\n")
    monkeypatch.setenv("RLHF_INGEST_LABELER_TOKENS", "lt2,lt3")
    args = SimpleNamespace(job_token=["jt0"], labeler_token=[], tokens_file=str(path))
    assert cli.read_tokens(args) == (("jt0", "jt1", "jt2"), ("lt1", "lt2", "lt3"))
    path.write_text("admin x\n")
    with pytest.raises(ValueError, match="tokens:1"):
        cli.read_tokens(args)
