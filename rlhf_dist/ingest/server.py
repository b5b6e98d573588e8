"""The gRPC server: a thin servicer over IngestStore, auth, health, graceful shutdown."""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from rlhf_dist.ingest import comparisons_pb2 as pb
from rlhf_dist.ingest import comparisons_pb2_grpc as pb_grpc
from rlhf_dist.ingest import convert as C
from rlhf_dist.ingest.auth import AccessConfig, AuthInterceptor
from rlhf_dist.ingest.store import IngestStore, StoreConfig
from rlhf_dist.ingest.validate import IngestError

logger = logging.getLogger(__name__)
SERVICE_NAME = "rlhf_dist.ingest.ComparisonIngest"
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
RESPONSE_MARGIN_BYTES = 64 * 1024  # room for envelope fields beyond the per-item estimate


@dataclass
class ServerConfig:
    store: StoreConfig
    access: AccessConfig
    host: str = "127.0.0.1"
    port: int = 0                      # 0: the OS picks; see port_file
    port_file: str | None = None       # the bound port is written here once serving
    tls_cert: str | None = None        # PEM files; both or neither
    tls_key: str | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES  # either direction
    workers: int = 16
    grace_s: float = 10.0              # how long in-flight calls get on SIGTERM


def _guard(context, fn, *args):
    """Run a store call; a refusal becomes its status code, nothing else leaks out."""
    try:
        return fn(*args)
    except IngestError as err:
        context.abort(grpc.StatusCode[err.code], err.message)


class IngestServicer(pb_grpc.ComparisonIngestServicer):
    def __init__(self, store: IngestStore, max_response_bytes: int):
        self.store = store
        self.max_response_bytes = max_response_bytes

    def PostTasks(self, request, context):
        tasks = [C.task_from_proto(t) for t in request.tasks]
        acks = _guard(context, self.store.post_tasks, tasks)
        return pb.PostTasksResponse(acks=[C.task_ack_to_proto(a) for a in acks])

    def SubmitLabels(self, request, context):
        labels = [C.label_from_proto(m) for m in request.labels]
        acks = _guard(context, self.store.submit_labels, labels)
        return pb.SubmitLabelsResponse(acks=[C.label_ack_to_proto(a) for a in acks])

    def Lease(self, request, context):
        tasks, expires_ms, labeled = _guard(context, self.store.lease, request.labeler_id,
                                            request.max_tasks, request.lease_seconds,
                                            self.max_response_bytes)
        return pb.LeaseResponse(tasks=[C.task_to_proto(t) for t in tasks],
                                lease_expires_at_ms=expires_ms, labeler_labeled=labeled)

    def ReadLabels(self, request, context):
        items, next_cursor = _guard(context, self.store.read_labels, request.cursor,
                                    request.max_labels, self.max_response_bytes)
        return pb.ReadLabelsResponse(labels=[C.labeled_to_proto(i) for i in items],
                                     next_cursor=next_cursor)

    def Stats(self, request, context):
        s = self.store.stats()
        return pb.StatsResponse(**{f.name: s[f.name] for f in pb.StatsResponse.DESCRIPTOR.fields})


def _write_port_file(path: str, port: int) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)  # readers never see a half-written file


def _bind(server: grpc.Server, config: ServerConfig) -> int:
    address = f"{config.host}:{config.port}"
    if bool(config.tls_cert) != bool(config.tls_key):
        raise ValueError("TLS needs both a certificate and a key")
    if config.tls_cert:
        with open(config.tls_key, "rb") as k, open(config.tls_cert, "rb") as c:
            creds = grpc.ssl_server_credentials([(k.read(), c.read())])
        return server.add_secure_port(address, creds)
    return server.add_insecure_port(address)


def build_server(config: ServerConfig, store: IngestStore):
    """A started gRPC server with the ingest and health services; returns (server, health, port)."""
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
    ]
    server = grpc.server(ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="rpc"),
                         interceptors=[AuthInterceptor(config.access)], options=options)
    pb_grpc.add_ComparisonIngestServicer_to_server(
        IngestServicer(store, config.max_message_bytes - RESPONSE_MARGIN_BYTES), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = _bind(server, config)
    if port == 0:
        raise OSError(f"could not bind {config.host}:{config.port}")
    server.start()
    for service in ("", SERVICE_NAME):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return server, health_servicer, port


def serve(config: ServerConfig, stop: threading.Event) -> int:
    """Serve until `stop` is set, then drain in-flight calls and close the log. Exit code."""
    fatal: list[BaseException] = []

    def on_fatal(exc: BaseException) -> None:
        fatal.append(exc)
        stop.set()

    store = IngestStore(config.store, on_fatal=on_fatal)
    r = store.replay_report
    logger.info("replayed %d segments: %d tasks, %d labels, torn tail dropped: %d bytes",
                r.segments, store.stats()["tasks_total"], store.stats()["labeled"],
                r.torn_bytes_dropped)
    server, health_servicer, port = build_server(config, store)
    if config.port_file:
        _write_port_file(config.port_file, port)
    logger.info("serving on %s:%d (%s)", config.host, port, "tls" if config.tls_cert else "plain")
    while not stop.wait(0.5):
        pass
    logger.info("shutting down: draining in-flight calls (grace %.1fs)", config.grace_s)
    health_servicer.enter_graceful_shutdown()
    server.stop(config.grace_s).wait()
    store.close()
    logger.info("stopped %s", "after a fatal log error" if fatal else "cleanly")
    return 1 if fatal else 0
