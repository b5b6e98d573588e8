"""Access: no token, a wrong token, and a token beyond its rights are refused; nothing stored."""
from __future__ import annotations

import grpc
import pytest

from rlhf_dist.ingest import comparisons_pb2 as pb
from rlhf_dist.ingest import comparisons_pb2_grpc as pb_grpc
from rlhf_dist.ingest import convert as C
from rlhf_dist.ingest.client import IngestClient
from rlhf_dist.ingest.schema import Label

try:
    from tests.ingest_helpers import (JOB_TOKEN, LABELER_TOKEN, ServerProcess, dir_digest,
                                      make_task)
except ImportError:
    from ingest_helpers import JOB_TOKEN, LABELER_TOKEN, ServerProcess, dir_digest, make_task

UNAUTH, DENIED, OK = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                      grpc.StatusCode.OK)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    server = ServerProcess(tmp_path_factory.mktemp("access") / "data").start()
    job = IngestClient(server.address, JOB_TOKEN)
    job.wait_ready(10)
    job.post_tasks([make_task("acc-1"), make_task("acc-2")])
    IngestClient(server.address, LABELER_TOKEN).submit_labels([Label("acc-1", 0, "ann")])
    channel = grpc.insecure_channel(server.address)
    yield server, pb_grpc.ComparisonIngestStub(channel)
    channel.close()
    server.kill()


def requests():
    """Each method with a request that would succeed for a token with the right role."""
    return {
        "PostTasks": pb.PostTasksRequest(tasks=[C.task_to_proto(make_task("acc-1"))]),
        "ReadLabels": pb.ReadLabelsRequest(cursor=0, max_labels=10),
        "Lease": pb.LeaseRequest(labeler_id="ann", max_tasks=1, lease_seconds=0.001),
        "SubmitLabels": pb.SubmitLabelsRequest(labels=[C.label_to_proto(Label("acc-1", 0,
                                                                              "ann"))]),
        "Stats": pb.StatsRequest(),
    }


def code_of(stub, method: str, metadata) -> grpc.StatusCode:
    try:
        getattr(stub, method)(requests()[method], metadata=metadata, timeout=10)
        return OK
    except grpc.RpcError as err:
        return err.code()


def bearer(token):
    return (("authorization", f"Bearer {token}"),)


EXPECTED = {
    # method:        no token, wrong token, job token, labeler token
    "PostTasks":    (UNAUTH, UNAUTH, OK, DENIED),
    "ReadLabels":   (UNAUTH, UNAUTH, OK, DENIED),
    "Lease":        (UNAUTH, UNAUTH, DENIED, OK),
    "SubmitLabels": (UNAUTH, UNAUTH, DENIED, OK),
    "Stats":        (UNAUTH, UNAUTH, OK, DENIED),
}


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_each_method_each_caller(served, method):
    server, stub = served
    before = dir_digest(server.data_dir)
    callers = [None, bearer("not-a-token"), bearer(JOB_TOKEN), bearer(LABELER_TOKEN)]
    got = tuple(code_of(stub, method, metadata) for metadata in callers)
    assert got == EXPECTED[method]
    assert dir_digest(server.data_dir) == before  # the allowed calls here are all retries


@pytest.mark.parametrize("header", ["", "Bearer ", JOB_TOKEN, f"Basic {JOB_TOKEN}",
                                    f"Bearer {JOB_TOKEN}x", f"Bearer {JOB_TOKEN[:-1]}"])
def test_malformed_or_near_miss_tokens(served, header):
    _, stub = served
    assert code_of(stub, "Stats", (("authorization", header),)) == UNAUTH


def test_refusal_names_the_problem(served):
    _, stub = served
    with pytest.raises(grpc.RpcError) as err:
        stub.PostTasks(requests()["PostTasks"], metadata=bearer(LABELER_TOKEN), timeout=10)
    assert "labeler token may not call PostTasks" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.Stats(pb.StatsRequest(), timeout=10)
    assert "no bearer token" in err.value.details()
