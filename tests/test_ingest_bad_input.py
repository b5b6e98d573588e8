"""Over 1,000 malformed requests: each gets its exact status code, the server keeps serving,
and the data on disk stays byte-for-byte the same."""
from __future__ import annotations

import math
import random

import grpc
import pytest

from rlhf_dist.ingest import comparisons_pb2 as pb
from rlhf_dist.ingest import convert as C
from rlhf_dist.ingest import validate as V
from rlhf_dist.ingest.client import IngestClient
from rlhf_dist.ingest.schema import Label

try:
    from tests.ingest_helpers import (JOB_TOKEN, LABELER_TOKEN, ServerProcess, dir_digest,
                                      make_task)
except ImportError:
    from ingest_helpers import JOB_TOKEN, LABELER_TOKEN, ServerProcess, dir_digest, make_task

SERVICE = "/rlhf_dist.ingest.ComparisonIngest/"
LIMITS = V.Limits()
ROLE_OF = {"PostTasks": JOB_TOKEN, "ReadLabels": JOB_TOKEN, "Lease": LABELER_TOKEN,
           "SubmitLabels": LABELER_TOKEN, "Nope": JOB_TOKEN}
REQUEST_OF = {"PostTasks": pb.PostTasksRequest, "SubmitLabels": pb.SubmitLabelsRequest,
              "Lease": pb.LeaseRequest, "ReadLabels": pb.ReadLabelsRequest}
STORED = [f"bi-{i:03d}" for i in range(20)]   # posted before the barrage
LABELED = STORED[:10]                          # and labeled (chosen_index 0)


class Case:
    def __init__(self, method: str, payload: bytes, code: str, names: str | None):
        self.method, self.payload, self.code, self.names = method, payload, code, names


def _typed(method: str, request, code: str, names: str | None) -> Case:
    return Case(method, request.SerializeToString(), code, names)


# --- typed requests with random bad field values --------------------------------------------

def _bad_task(rng: random.Random, new_id: str):
    """(task, expected code, field path suffix) for one randomly broken task."""
    t = make_task(new_id)
    big, i = rng.randint(1, 60_000), rng.randrange(4)
    breakers = [  # (how to break it, code, the field the message must name)
        (lambda: setattr(t, "task_id", ""), "INVALID_ARGUMENT", "task_id"),
        (lambda: setattr(t, "task_id", new_id + rng.choice(" \t\né\x00*#?")),
         "INVALID_ARGUMENT", "task_id"),
        (lambda: setattr(t, "task_id", "a" * (LIMITS.max_id_bytes + 1 + big % 5000)),
         "RESOURCE_EXHAUSTED", "task_id"),
        (lambda: setattr(t, "query", ""), "INVALID_ARGUMENT", "query"),
        (lambda: setattr(t, "query", "q" * (LIMITS.max_query_bytes + big)),
         "RESOURCE_EXHAUSTED", "query"),
        (lambda: setattr(t, "samples", ["s"] * rng.choice([0, 1, 2, 3, 5, 6, 8, 16])),
         "INVALID_ARGUMENT", "samples"),
        (lambda: t.samples.__setitem__(i, "s" * (LIMITS.max_sample_bytes + big)),
         "RESOURCE_EXHAUSTED", f"samples[{i}]"),
        (lambda: setattr(t, "policy_version", -rng.randint(1, 2**62)),
         "INVALID_ARGUMENT", "policy_version"),
        (lambda: setattr(t, "metadata", {f"k{n}": "v" for n in range(33 + big % 50)}),
         "RESOURCE_EXHAUSTED", "metadata"),
        (lambda: setattr(t, "metadata", {"": "v"}), "INVALID_ARGUMENT", "metadata key"),
        (lambda: setattr(t, "query_token_ids", [3, -rng.randint(1, 2**31)]),
         "INVALID_ARGUMENT", "query_token_ids"),
        (lambda: setattr(t, "sample_token_ids", [[1]] * rng.choice([1, 2, 3, 5, 7])),
         "INVALID_ARGUMENT", "sample_token_ids"),
        (lambda: setattr(t, "query_token_ids", [1] * (LIMITS.max_token_ids + 1 + big % 9000)),
         "RESOURCE_EXHAUSTED", "query_token_ids"),
        (lambda: setattr(t, "task_id", rng.choice(STORED)) or setattr(t, "query", "changed"),
         "ALREADY_EXISTS", "task_id"),  # a stored id with different content
    ]
    breaker, code, field = rng.choice(breakers)
    breaker()
    return t, code, field


def post_task_cases(rng: random.Random, n: int) -> list[Case]:
    cases = []
    for c in range(n):
        batch = [make_task(f"new-{c}-{i}") for i in range(rng.choice([1, 1, 2, 5, 20]))]
        j = rng.randrange(len(batch))  # the good tasks around the bad one must not be stored
        batch[j], code, field = _bad_task(rng, f"new-{c}-{j}")
        cases.append(_typed("PostTasks", pb.PostTasksRequest(
            tasks=[C.task_to_proto(t) for t in batch]), code, f"tasks[{j}].{field}"))
    cases.append(_typed("PostTasks", pb.PostTasksRequest(), "INVALID_ARGUMENT", "tasks is empty"))
    tiny = [C.task_to_proto(make_task(f"tiny-{i}", text_bytes=0))
            for i in range(LIMITS.max_batch + 1)]
    cases.append(_typed("PostTasks", pb.PostTasksRequest(tasks=tiny), "RESOURCE_EXHAUSTED",
                        "tasks has"))
    return cases


def _bad_label(rng: random.Random) -> tuple[Label, str, str]:
    task_id = rng.choice(STORED[10:])  # stored, not yet labeled
    index = rng.choice([rng.randint(-10**6, -1), rng.randint(LIMITS.k, 10**6)])
    options = [  # (label, code, the field the message must name)
        (Label(f"unknown-{rng.randrange(10**9)}", 0, "ann"), "NOT_FOUND", "task_id"),
        (Label(task_id, index, "ann"), "INVALID_ARGUMENT", "chosen_index"),
        (Label(task_id, rng.randint(0, 3), "ann", cant_tell=True),
         "INVALID_ARGUMENT", "chosen_index"),
        (Label(task_id, 0, ""), "INVALID_ARGUMENT", "labeler_id"),
        (Label(task_id, 0, "l" * rng.randint(129, 5000)), "RESOURCE_EXHAUSTED", "labeler_id"),
        (Label(task_id, 0, "ann smith"), "INVALID_ARGUMENT", "labeler_id"),
        (Label("", 0, "ann"), "INVALID_ARGUMENT", "task_id"),
        (Label(task_id, 0, "ann", note="n" * rng.randint(4097, 100_000)),
         "RESOURCE_EXHAUSTED", "note"),
        (Label(rng.choice(LABELED), rng.randint(1, 3), "ann"), "ALREADY_EXISTS", "task_id"),
    ]
    return rng.choice(options)


def submit_label_cases(rng: random.Random, n: int) -> list[Case]:
    cases = []
    for _ in range(n):
        batch = [Label(t, 1, "ann") for t in rng.sample(STORED[10:], rng.choice([1, 1, 3]))]
        j = rng.randrange(len(batch))
        batch[j], code, field = _bad_label(rng)
        cases.append(_typed("SubmitLabels", pb.SubmitLabelsRequest(
            labels=[C.label_to_proto(x) for x in batch]), code, f"labels[{j}].{field}"))
    cases.append(_typed("SubmitLabels", pb.SubmitLabelsRequest(), "INVALID_ARGUMENT",
                        "labels is empty"))
    return cases


def lease_and_read_cases(rng: random.Random, n: int) -> list[Case]:
    bad_leases = [
        (dict(max_tasks=0), "INVALID_ARGUMENT", "max_tasks"),
        (dict(max_tasks=-5), "INVALID_ARGUMENT", "max_tasks"),
        (dict(max_tasks=LIMITS.max_lease_tasks + 1), "RESOURCE_EXHAUSTED", "max_tasks"),
        (dict(lease_seconds=0.0), "INVALID_ARGUMENT", "lease_seconds"),
        (dict(lease_seconds=-1.0), "INVALID_ARGUMENT", "lease_seconds"),
        (dict(lease_seconds=math.nan), "INVALID_ARGUMENT", "lease_seconds"),
        (dict(lease_seconds=math.inf), "INVALID_ARGUMENT", "lease_seconds"),
        (dict(lease_seconds=LIMITS.max_lease_seconds * 2), "INVALID_ARGUMENT", "lease_seconds"),
        (dict(labeler_id=""), "INVALID_ARGUMENT", "labeler_id"),
        (dict(labeler_id="x" * 500), "RESOURCE_EXHAUSTED", "labeler_id"),
    ]
    bad_reads = [
        (dict(cursor=-rng.randint(1, 10**9)), "INVALID_ARGUMENT", "cursor"),
        (dict(max_labels=0), "INVALID_ARGUMENT", "max_labels"),
        (dict(max_labels=-3), "INVALID_ARGUMENT", "max_labels"),
        (dict(max_labels=LIMITS.max_read_labels + 1), "RESOURCE_EXHAUSTED", "max_labels"),
        (dict(cursor=len(LABELED) + 1 + rng.randint(0, 10**6)), "OUT_OF_RANGE", "cursor"),
    ]
    cases = []
    for _ in range(n):
        fields, code, name = rng.choice(bad_leases)
        request = dict(labeler_id="ann", max_tasks=1, lease_seconds=30.0) | fields
        cases.append(_typed("Lease", pb.LeaseRequest(**request), code, name))
        fields, code, name = rng.choice(bad_reads)
        request = dict(cursor=0, max_labels=10) | fields
        cases.append(_typed("ReadLabels", pb.ReadLabelsRequest(**request), code, name))
    return cases


# --- raw bytes, sent without the typed stubs -------------------------------------------------

def expected_for_parsed(method: str, msg) -> str | None:
    """What the server must answer a request that did parse; None if it would succeed."""
    try:
        if method == "PostTasks":
            V.check_batch("tasks", len(msg.tasks), LIMITS)
            for i, t in enumerate(msg.tasks):
                V.check_task(f"tasks[{i}]", C.task_from_proto(t), LIMITS)
        elif method == "SubmitLabels":
            V.check_batch("labels", len(msg.labels), LIMITS)
            for i, label in enumerate(msg.labels):
                V.check_label(f"labels[{i}]", C.label_from_proto(label), LIMITS)
            return "NOT_FOUND" if any(x.task_id not in STORED for x in msg.labels) else None
        elif method == "Lease":
            V.check_lease(msg.labeler_id, msg.max_tasks, msg.lease_seconds, LIMITS)
        else:
            V.check_read(msg.cursor, msg.max_labels, LIMITS)
            return "OUT_OF_RANGE" if msg.cursor > len(LABELED) else "OK"
    except V.IngestError as err:
        return err.code
    return None


def raw_cases(rng: random.Random, n: int) -> list[Case]:
    valid = pb.PostTasksRequest(tasks=[C.task_to_proto(make_task("raw-1"))]).SerializeToString()
    crafted = [
        b"\x0a\x04\x0a\x02\xff\xfe",   # tasks[0].task_id is not UTF-8
        b"\x08\x01",                   # field 1 (tasks, a message) sent as a varint
        b"\x0a\xff\xff\xff\xff\x0f",   # a length far past the end
        b"\x0a",                       # a tag and nothing else
    ] + [valid[:rng.randrange(1, len(valid))] for _ in range(20)]
    cases = []
    while len(cases) < n:
        method = rng.choice(sorted(REQUEST_OF))
        payload = rng.randbytes(rng.randint(1, 300))
        if crafted:
            method, payload = "PostTasks", crafted.pop()
        try:
            msg = REQUEST_OF[method].FromString(payload)
        except Exception:
            cases.append(Case(method, payload, "INTERNAL", None))  # gRPC's own refusal
            continue
        code = expected_for_parsed(method, msg)
        if code is not None:  # the rare payload that would be accepted is not a bad input
            cases.append(Case(method, payload, code, None))
    cases += [Case("Nope", rng.randbytes(20), "UNIMPLEMENTED", None) for _ in range(5)]
    return cases


def huge_message_cases() -> list[Case]:
    """Whole messages over the server's 4 MiB limit: gRPC's RESOURCE_EXHAUSTED."""
    task = make_task("huge")
    task.query = "h" * (5 * 1024 * 1024)
    post = pb.PostTasksRequest(tasks=[C.task_to_proto(task)]).SerializeToString()
    note = pb.SubmitLabelsRequest(labels=[C.label_to_proto(Label(STORED[15], 0, "ann",
                                                                 note="n" * 6_000_000))])
    return [Case("PostTasks", post, "RESOURCE_EXHAUSTED", None) for _ in range(3)] + [
        Case("SubmitLabels", note.SerializeToString(), "RESOURCE_EXHAUSTED", None)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc = ServerProcess(tmp_path_factory.mktemp("bad") / "data").start()
    job, labeler = IngestClient(proc.address, JOB_TOKEN), IngestClient(proc.address, LABELER_TOKEN)
    job.wait_ready(10)
    job.post_tasks([make_task(t) for t in STORED])
    labeler.submit_labels([Label(t, 0, "ann") for t in LABELED])
    yield proc
    proc.kill()


def _durable_view(job: IngestClient) -> tuple:
    s = job.stats()
    counts = tuple(s[k] for k in ("tasks_total", "pending", "leased", "labeled", "segments"))
    return counts, s["per_labeler"], list(job.iter_labels(0))


def test_malformed_requests_get_exact_codes_and_change_nothing(server):
    rng = random.Random(20191018)
    cases = (post_task_cases(rng, 450) + submit_label_cases(rng, 300)
             + lease_and_read_cases(rng, 60) + raw_cases(rng, 300) + huge_message_cases())
    assert len(cases) >= 1000
    job = IngestClient(server.address, JOB_TOKEN)
    before_disk, before_view = dir_digest(server.data_dir), _durable_view(job)

    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]  # to send oversized ones
    wrong = []
    with grpc.insecure_channel(server.address, options=options) as channel:
        for case in cases:
            call = channel.unary_unary(SERVICE + case.method)  # raw bytes in and out
            metadata = (("authorization", f"Bearer {ROLE_OF[case.method]}"),)
            try:
                call(case.payload, metadata=metadata, timeout=30)
                code, details = "OK", ""
            except grpc.RpcError as err:
                code, details = err.code().name, err.details() or ""
            if code != case.code or (case.names and case.names not in details):
                wrong.append((case.method, case.code, case.names, code, details[:200]))
    assert not wrong, f"{len(wrong)} of {len(cases)} wrong, e.g. {wrong[:5]}"

    assert dir_digest(server.data_dir) == before_disk
    assert _durable_view(job) == before_view
    # ... and it still serves.
    assert job.post_tasks([make_task("after-1")])[0].task_sequence == len(STORED)
    ack = IngestClient(server.address, LABELER_TOKEN).submit_labels([Label("after-1", 2, "ann")])
    assert ack[0].sequence == len(LABELED)
