"""Ingest benchmark: acknowledged labels/sec and ack latency, against the raw disk in the same run.

    python benchmarks/ingest_bench.py                       # defaults: 8 clients, batch 64
    python benchmarks/ingest_bench.py --json-out bench.json

Phases, all writing to the same folder (so the same disk):
  baseline single   append one single-label log frame + fsync, in a loop (no server, no gRPC)
  baseline batched  the same with one frame of `--batch` labels
  server single     a real server process; `--clients` threads each submit one label per call
  server batched    the same, `--batch` labels per call
The baselines use the exact frame bytes the server writes, so they are what a design with one
fsync per request could reach at best; group commit lets concurrent requests share an fsync.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from ingest_helpers import JOB_TOKEN, LABELER_TOKEN, ServerProcess, make_task  # noqa: E402

from rlhf_dist.ingest import log as seglog  # noqa: E402
from rlhf_dist.ingest.client import IngestClient  # noqa: E402
from rlhf_dist.ingest.schema import Label, LabeledComparison, labeled_to_batch  # noqa: E402


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def summarize(name: str, labels: int, seconds: float, latencies: list[float], **extra) -> dict:
    lat = sorted(latencies)
    return {"phase": name, "labels": labels, "seconds": round(seconds, 3),
            "labels_per_s": round(labels / seconds, 1), "requests": len(lat),
            "p50_ms": round(1000 * percentile(lat, 0.50), 3),
            "p99_ms": round(1000 * percentile(lat, 0.99), 3), **extra}


def frame_for(n_labels: int, text_bytes: int) -> bytes:
    """The exact bytes the server appends for one request of n_labels labels."""
    items = [LabeledComparison(i, make_task(f"bench-{i:07d}", text_bytes=text_bytes),
                               Label(f"bench-{i:07d}", i % 4, "labeler-0"), 1_700_000_000_000)
             for i in range(n_labels)]
    return seglog.encode_frame(seglog.KIND_LABELS, labeled_to_batch(items).serialize().to_pybytes())


def baseline(folder: Path, frame: bytes, labels_per_frame: int, total_labels: int, name: str):
    path = folder / "baseline.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    latencies, n = [], 0
    t0 = time.perf_counter()
    while n < total_labels:
        start = time.perf_counter()
        os.write(fd, frame)
        os.fsync(fd)
        latencies.append(time.perf_counter() - start)
        n += labels_per_frame
    elapsed = time.perf_counter() - t0
    os.close(fd)
    path.unlink()
    return summarize(name, n, elapsed, latencies, frame_bytes=len(frame))


def post_tasks(address: str, ids: list[str], text_bytes: int) -> float:
    job = IngestClient(address, JOB_TOKEN, timeout_s=60)
    t0 = time.perf_counter()
    for start in range(0, len(ids), 500):
        job.post_tasks([make_task(t, text_bytes=text_bytes) for t in ids[start: start + 500]])
    elapsed = time.perf_counter() - t0
    job.close()
    return len(ids) / elapsed


def server_phase(address: str, ids: list[str], clients: int, batch: int, name: str) -> dict:
    """`clients` threads submit the labels for ids, `batch` per call; every call is acked."""
    shards = [ids[i::clients] for i in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stats_client = IngestClient(address, JOB_TOKEN)
    fsyncs0 = stats_client.stats()["fsyncs"]

    def work(w: int) -> None:
        labeler = IngestClient(address, LABELER_TOKEN, timeout_s=60)
        mine = shards[w]
        for start in range(0, len(mine), batch):
            labels = [Label(t, 1, f"labeler-{w}") for t in mine[start: start + batch]]
            t = time.perf_counter()
            labeler.submit_labels(labels)
            latencies[w].append(time.perf_counter() - t)
        labeler.close()

    threads = [threading.Thread(target=work, args=(w,)) for w in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    fsyncs = stats_client.stats()["fsyncs"] - fsyncs0
    stats_client.close()
    return summarize(name, len(ids), elapsed, [x for lat in latencies for x in lat],
                     clients=clients, batch=batch, fsyncs=fsyncs,
                     labels_per_fsync=round(len(ids) / max(1, fsyncs), 1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", help="folder on the disk to measure (default: a temp folder)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--single-labels", type=int, default=4000)
    p.add_argument("--batched-labels", type=int, default=32000)
    p.add_argument("--text-bytes", type=int, default=200, help="size of query and each sample")
    p.add_argument("--json-out")
    args = p.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="ingest-bench-", dir=args.dir))
    results = []
    try:
        results.append(baseline(folder, frame_for(1, args.text_bytes), 1, args.single_labels,
                                "baseline single (append+fsync)"))
        results.append(baseline(folder, frame_for(args.batch, args.text_bytes), args.batch,
                                args.batched_labels, f"baseline batched x{args.batch}"))
        server = ServerProcess(folder / "data").start()
        try:
            n = args.single_labels + args.batched_labels
            ids = [f"bench-{i:07d}" for i in range(n)]
            tasks_per_s = post_tasks(server.address, ids, args.text_bytes)
            results.append(server_phase(server.address, ids[: args.single_labels], args.clients,
                                        1, "server single"))
            results.append(server_phase(server.address, ids[args.single_labels:], args.clients,
                                        args.batch, f"server batched x{args.batch}"))
        finally:
            server.terminate()
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    print(f"{'phase':34} {'labels/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'labels/fsync':>13}")
    for r in results:
        print(f"{r['phase']:34} {r['labels_per_s']:>10.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}"
              f" {r.get('labels_per_fsync', r['labels'] / r['requests']):>13.1f}")
    print(f"(tasks posted at {tasks_per_s:.0f}/s in batches of 500; {args.clients} client "
          f"threads in one process; {os.cpu_count()} CPUs)")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"results": results, "tasks_posted_per_s": round(tasks_per_s, 1),
                       "cpus": os.cpu_count(), "args": vars(args)}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
