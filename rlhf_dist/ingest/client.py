"""Python client of the ingest service, for the training job and the simulated labeler.

Retries are safe because submission is idempotent: a task or label resent after a lost
acknowledgement is stored once and answered as the first copy was. Calls that cannot succeed
by retrying (bad input, bad token) raise IngestError at once, with the server's status code
name and message.
"""
from __future__ import annotations

import random
import time
from typing import Callable, Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rlhf_dist.ingest import auth
from rlhf_dist.ingest import comparisons_pb2 as pb
from rlhf_dist.ingest import comparisons_pb2_grpc as pb_grpc
from rlhf_dist.ingest import convert as C
from rlhf_dist.ingest.schema import (ComparisonTask, Label, LabelAck, LabeledComparison,
                                     LeaseGrant, TaskAck)
from rlhf_dist.ingest.server import DEFAULT_MAX_MESSAGE_BYTES, SERVICE_NAME
from rlhf_dist.ingest.validate import RETRYABLE_CODES, IngestError

RETRYABLE = {grpc.StatusCode[name] for name in RETRYABLE_CODES}   # which and why: see validate.py
REQUEST_MARGIN_BYTES = 64 * 1024


class IngestClient:
    def __init__(self, address: str, token: str, *, timeout_s: float = 10.0,
                 max_retries: int = 10, tls_root_cert: str | bytes | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, max_batch: int = 500,
                 backoff_s: float = 0.05, max_backoff_s: float = 2.0):
        """address "host:port"; tls_root_cert a PEM path or bytes (None: plaintext)."""
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.max_batch = max_batch
        self.max_request_bytes = max_message_bytes - REQUEST_MARGIN_BYTES
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # Reconnect quickly after a server restart (gRPC's default backoff grows to 120s).
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        if tls_root_cert is None:
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            if isinstance(tls_root_cert, str):
                with open(tls_root_cert, "rb") as f:
                    tls_root_cert = f.read()
            creds = grpc.ssl_channel_credentials(root_certificates=tls_root_cert)
            self._channel = grpc.secure_channel(address, creds, options=options)
        self._stub = pb_grpc.ComparisonIngestStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = auth.bearer(token)

    # --- plumbing -------------------------------------------------------------------------

    def _call(self, rpc: Callable, request):
        """One RPC with retries on UNAVAILABLE / DEADLINE_EXCEEDED, jittered backoff."""
        for attempt in range(self.max_retries + 1):
            try:
                return rpc(request, timeout=self.timeout_s, metadata=self._metadata,
                           wait_for_ready=True)
            except grpc.RpcError as err:
                if err.code() not in RETRYABLE or attempt == self.max_retries:
                    raise IngestError(err.code().name, err.details() or "") from err
            delay = min(self.max_backoff_s, self.backoff_s * 2 ** attempt)
            time.sleep(delay * random.uniform(0.5, 1.0))

    def _chunks(self, messages: list) -> Iterator[list]:
        """Split a long list into requests under the batch and message size limits."""
        chunk, size = [], 0
        for msg in messages:
            n = msg.ByteSize() + 8
            if chunk and (len(chunk) == self.max_batch or size + n > self.max_request_bytes):
                yield chunk
                chunk, size = [], 0
            chunk.append(msg)
            size += n
        if chunk:
            yield chunk

    # --- the API ----------------------------------------------------------------------------

    def post_tasks(self, tasks: list[ComparisonTask]) -> list[TaskAck]:
        """Store tasks for labeling (job token). Idempotent per task_id."""
        acks = []
        for chunk in self._chunks([C.task_to_proto(t) for t in tasks]):
            response = self._call(self._stub.PostTasks, pb.PostTasksRequest(tasks=chunk))
            acks.extend(C.task_ack_from_proto(a) for a in response.acks)
        return acks

    def lease(self, labeler_id: str, max_tasks: int = 1,
              lease_seconds: float = 600.0) -> list[ComparisonTask]:
        """Take up to max_tasks pending tasks (labeler token); unlabeled ones return after
        lease_seconds. A retried lease may strand the first lease's tasks until it expires."""
        return self.lease_grant(labeler_id, max_tasks, lease_seconds).tasks

    def lease_grant(self, labeler_id: str, max_tasks: int = 1,
                    lease_seconds: float = 600.0) -> LeaseGrant:
        """lease(), plus the expiry and the labeler's own label count."""
        request = pb.LeaseRequest(labeler_id=labeler_id, max_tasks=max_tasks,
                                  lease_seconds=lease_seconds)
        response = self._call(self._stub.Lease, request)
        return LeaseGrant([C.task_from_proto(t) for t in response.tasks],
                          response.lease_expires_at_ms, response.labeler_labeled)

    def submit_labels(self, labels: list[Label]) -> list[LabelAck]:
        """Store labels (labeler token); returns once each is on disk. Idempotent per task_id."""
        acks = []
        for chunk in self._chunks([C.label_to_proto(label) for label in labels]):
            response = self._call(self._stub.SubmitLabels, pb.SubmitLabelsRequest(labels=chunk))
            acks.extend(C.label_ack_from_proto(a) for a in response.acks)
        return acks

    def read_labels(self, cursor: int = 0,
                    max_labels: int = 1000) -> tuple[list[LabeledComparison], int]:
        """Labels with sequence >= cursor, and the cursor to pass next time (job token)."""
        response = self._call(self._stub.ReadLabels,
                              pb.ReadLabelsRequest(cursor=cursor, max_labels=max_labels))
        return [C.labeled_from_proto(m) for m in response.labels], response.next_cursor

    def iter_labels(self, cursor: int = 0, page: int = 1000) -> Iterator[LabeledComparison]:
        """Every label from cursor up to the end of the log as it is now."""
        while True:
            items, cursor = self.read_labels(cursor, page)
            if not items:
                return
            yield from items

    def stats(self) -> dict:
        """pending, leased, labeled, per_labeler, label_rate_per_s, ... (job token)."""
        response = self._call(self._stub.Stats, pb.StatsRequest())
        out = {f.name: getattr(response, f.name) for f in pb.StatsResponse.DESCRIPTOR.fields}
        out["per_labeler"] = dict(response.per_labeler)
        return out

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until the health service reports SERVING; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout_s
        request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"ingest service not serving after {timeout_s}s")
            try:
                reply = self._health.Check(request, timeout=min(left, 2.0), wait_for_ready=True)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "IngestClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
