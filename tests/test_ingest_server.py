"""The service end to end, as a real process: API, health, restart, SIGTERM, TLS."""
from __future__ import annotations

import shutil
import subprocess
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rlhf_dist.ingest.client import IngestClient
from rlhf_dist.ingest.schema import Label
from rlhf_dist.ingest.validate import IngestError

try:
    from tests.ingest_helpers import JOB_TOKEN, LABELER_TOKEN, ServerProcess, make_task
except ImportError:
    from ingest_helpers import JOB_TOKEN, LABELER_TOKEN, ServerProcess, make_task


@pytest.fixture()
def server(tmp_path):
    proc = ServerProcess(tmp_path / "data").start()
    yield proc
    proc.kill()


def clients(server, **kw):
    return (IngestClient(server.address, JOB_TOKEN, **kw),
            IngestClient(server.address, LABELER_TOKEN, **kw))


def test_post_lease_label_read_stats(server):
    job, labeler = clients(server)
    job.wait_ready(10)
    tasks = [make_task(f"e2e-{i:03d}") for i in range(10)]
    acks = job.post_tasks(tasks)
    assert [a.task_sequence for a in acks] == list(range(10))
    assert job.post_tasks(tasks[3:5]) == acks[3:5]  # a retry is answered as the first time

    leased = labeler.lease("ann", 4, 60.0)
    assert leased == tasks[:4]  # whole tasks, token ids included, oldest first
    label_acks = labeler.submit_labels(
        [Label(t.task_id, i, "ann") for i, t in enumerate(leased[:3])]
        + [Label(leased[3].task_id, -1, "ann", cant_tell=True, note="all the same")])
    assert [a.sequence for a in label_acks] == [0, 1, 2, 3]
    assert labeler.submit_labels([Label(leased[0].task_id, 0, "ann")]) == label_acks[:1]
    labeler.submit_labels([Label(tasks[4].task_id, 3, "bob")])  # no lease needed to label

    first, cursor = job.read_labels(0, 2)
    rest, end = job.read_labels(cursor, 100)
    assert [c.sequence for c in first + rest] == [0, 1, 2, 3, 4] and end == 5
    assert rest[1].label.cant_tell and rest[1].label.note == "all the same"
    assert first[0].task == tasks[0] and first[0].label == Label(tasks[0].task_id, 0, "ann")
    assert job.read_labels(end, 100) == ([], end)

    stats = job.stats()
    assert (stats["tasks_total"], stats["pending"], stats["leased"], stats["labeled"],
            stats["cant_tell"]) == (10, 5, 0, 5, 1)
    assert stats["per_labeler"] == {"ann": 4, "bob": 1}
    assert stats["label_rate_per_s"] == pytest.approx(5 / stats["rate_window_s"])
    assert labeler.lease_grant("ann", 1, 60.0).labeler_labeled == 4  # a labeler's own count


def test_health_needs_no_token(server):
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "rlhf_dist.ingest.ComparisonIngest"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10,
                               wait_for_ready=True)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_lease_expires_and_the_task_returns(server):
    job, labeler = clients(server)
    job.post_tasks([make_task("exp-1")])
    assert [t.task_id for t in labeler.lease("ann", 1, 0.3)] == ["exp-1"]
    assert labeler.lease("bob", 1, 0.3) == []
    time.sleep(0.5)
    assert [t.task_id for t in labeler.lease("bob", 1, 60)] == ["exp-1"]


def test_restart_replays_and_a_reader_resumes(server):
    job, labeler = clients(server)
    job.post_tasks([make_task(f"r-{i}") for i in range(6)])
    acks = labeler.submit_labels([Label(f"r-{i}", i % 4, "ann") for i in range(4)])
    items, cursor = job.read_labels(0, 2)
    assert server.terminate() == 0 and "stopped cleanly" in server.log()

    server.start()
    job, labeler = clients(server)
    job.wait_ready(10)
    assert labeler.submit_labels([Label("r-1", 1, "ann")]) == acks[1:2]
    rest, end = job.read_labels(cursor, 100)  # the restarted reader picks up at its cursor
    assert [c.sequence for c in rest] == [2, 3] and end == 4
    assert job.stats()["pending"] == 2  # leases do not survive; unlabeled tasks wait again


def test_sigterm_finishes_in_flight_calls(server):
    job, _ = clients(server)
    job.post_tasks([make_task(f"g-{i:04d}") for i in range(1200)])
    acked: list = []
    errors: list = []
    started = threading.Event()

    def submit(worker: int) -> None:
        labeler = IngestClient(server.address, LABELER_TOKEN, max_retries=0, timeout_s=3)
        for b in range(worker, 60, 6):
            batch = [Label(f"g-{b * 20 + i:04d}", i % 4, f"w{worker}") for i in range(20)]
            try:
                acked.extend(labeler.submit_labels(batch))
                started.set()
            except IngestError as err:
                errors.append(err.code)
                return

    threads = [threading.Thread(target=submit, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    assert started.wait(10)
    assert server.terminate() == 0
    for t in threads:
        t.join()
    assert "stopped cleanly" in server.log()

    server.start()
    job, _ = clients(server)
    stored = {(c.task.task_id, c.sequence) for c in job.iter_labels(0)}
    # Every stored label was acknowledged: no call was cut off between its write and reply.
    assert stored == {(a.task_id, a.sequence) for a in acked}, errors
    # Calls that reach the server once it stopped taking new ones are refused, never run:
    # UNAVAILABLE / DEADLINE_EXCEEDED once it is gone, CANCELLED while it drains
    # (grpc/grpc#41785). The client retries all three.
    assert set(errors) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"}, errors


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    server = ServerProcess(tmp_path / "data", ("--tls-cert", str(cert), "--tls-key", str(key)))
    server.start()
    try:
        job = IngestClient(server.address, JOB_TOKEN, tls_root_cert=str(cert))
        job.wait_ready(10)
        assert job.post_tasks([make_task("tls-1")])[0].task_sequence == 0
        plain = IngestClient(server.address, JOB_TOKEN, max_retries=0, timeout_s=1)
        with pytest.raises(IngestError) as err:
            plain.stats()
        assert err.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    finally:
        server.kill()
