"""`rlhf-dist ingest serve | export | label | simulate`, also runnable as `python -m rlhf_dist.ingest.cli`.

Tokens come from --job-token / --labeler-token (repeatable), a --tokens-file with lines
`job TOKEN` / `labeler TOKEN`, or the environment (RLHF_INGEST_JOB_TOKENS and
RLHF_INGEST_LABELER_TOKENS, comma separated; RLHF_INGEST_TOKEN for `label`). A file or the
environment keeps tokens out of `ps`.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

DEFAULT_PORT = 50551


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="run the ingest service until SIGTERM")
    p.add_argument("--data-dir", required=True, help="folder of the log segments")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 lets the OS pick")
    p.add_argument("--port-file", help="write the bound port here once serving")
    p.add_argument("--job-token", action="append", default=[])
    p.add_argument("--labeler-token", action="append", default=[])
    p.add_argument("--tokens-file", help="lines of 'job TOKEN' or 'labeler TOKEN'")
    p.add_argument("--tls-cert", help="PEM certificate chain (TLS when given with --tls-key)")
    p.add_argument("--tls-key", help="PEM private key")
    p.add_argument("--k", type=int, default=4, help="samples per comparison task")
    p.add_argument("--segment-bytes", type=int, default=64 * 1024 * 1024,
                   help="start a new log segment past this size")
    p.add_argument("--max-message-bytes", type=int, default=4 * 1024 * 1024,
                   help="gRPC message size limit, both directions")
    p.add_argument("--grace-s", type=float, default=10.0,
                   help="how long in-flight calls may finish after SIGTERM")
    p.add_argument("--write-chunk-bytes", type=int, default=0,
                   help="crash testing only: split log writes so a kill can land mid-record")
    p.add_argument("--log-level", default="INFO")


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write the labels as Parquet")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", required=True, help="labels .parquet file")
    p.add_argument("--tasks-out", help="also write the posted tasks here")


def _add_label(sub) -> None:
    p = sub.add_parser("label", help="label comparisons in the terminal")
    p.add_argument("--address", default=f"127.0.0.1:{DEFAULT_PORT}")
    p.add_argument("--token", default=os.environ.get("RLHF_INGEST_TOKEN"),
                   help="labeler token (default: $RLHF_INGEST_TOKEN)")
    p.add_argument("--labeler-id", required=True)
    p.add_argument("--tls-root-cert", help="PEM root certificate to trust (TLS)")
    p.add_argument("--lease-seconds", type=float, default=900.0)


def _add_simulate(sub) -> None:
    p = sub.add_parser("simulate", help="the simulated labeler (VADER) as a labeling client, until SIGTERM")
    p.add_argument("--address", default=f"127.0.0.1:{DEFAULT_PORT}")
    p.add_argument("--token", default=os.environ.get("RLHF_INGEST_TOKEN"),
                   help="labeler token (default: $RLHF_INGEST_TOKEN)")
    p.add_argument("--labeler-id", default="sim-vader")
    p.add_argument("--tls-root-cert", help="PEM root certificate to trust (TLS)")
    p.add_argument("--latency-s", type=float, default=0.0, help="delay per label")
    p.add_argument("--batch", type=int, default=16, help="tasks per lease")
    p.add_argument("--lease-seconds", type=float, default=60.0)
    p.add_argument("--max-labels", type=int, default=None, help="exit after this many acknowledged labels")
    p.add_argument("--acks-file", help="append each acknowledgement here (JSON lines)")
    p.add_argument("--tie-margin", type=float, default=0.0)
    p.add_argument("--on-tie", choices=("random", "cant_tell"), default="cant_tell")
    p.add_argument("--noise", type=float, default=0.0, help="probability of a uniformly random pick")
    p.add_argument("--seed", type=int, default=1234)


def read_tokens(args) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(job tokens, labeler tokens) from flags, the tokens file and the environment."""
    job, labeler = list(args.job_token), list(args.labeler_token)
    if args.tokens_file:
        with open(args.tokens_file) as f:
            for n, line in enumerate(f, 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                role, _, token = line.partition(" ")
                if role not in ("job", "labeler") or not token.strip():
                    raise ValueError(f"{args.tokens_file}:{n}: expected 'job TOKEN' or "
                                     "'labeler TOKEN'")
                (job if role == "job" else labeler).append(token.strip())
    for name, tokens in (("RLHF_INGEST_JOB_TOKENS", job),
                         ("RLHF_INGEST_LABELER_TOKENS", labeler)):
        tokens.extend(t for t in os.environ.get(name, "").split(",") if t.strip())
    return tuple(job), tuple(labeler)


def _serve(args) -> int:
    from rlhf_dist.ingest.auth import AccessConfig
    from rlhf_dist.ingest.log import CorruptLog
    from rlhf_dist.ingest.server import ServerConfig, serve
    from rlhf_dist.ingest.store import DataDirBusy, StoreConfig
    from rlhf_dist.ingest.validate import Limits

    job, labeler = read_tokens(args)
    if not job and not labeler:
        print("ingest serve: no tokens configured (--job-token, --labeler-token, "
              "--tokens-file or RLHF_INGEST_*_TOKENS)", file=sys.stderr)
        return 2
    config = ServerConfig(
        store=StoreConfig(args.data_dir, Limits(k=args.k), args.segment_bytes,
                          args.write_chunk_bytes),
        access=AccessConfig(job, labeler), host=args.host, port=args.port,
        port_file=args.port_file, tls_cert=args.tls_cert, tls_key=args.tls_key,
        max_message_bytes=args.max_message_bytes, grace_s=args.grace_s)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        return serve(config, stop)
    except (CorruptLog, DataDirBusy) as err:
        logging.getLogger("rlhf_dist.ingest").error("refusing to start: %s", err)
        return 2


def _export(args) -> int:
    from rlhf_dist.ingest.export import export_parquet

    counts = export_parquet(args.data_dir, args.out, args.tasks_out)
    print(", ".join(f"{n} {what}" for what, n in counts.items()) + f" written to {args.out}")
    return 0


def _label(args) -> int:
    from rlhf_dist.ingest.client import IngestClient
    from rlhf_dist.ingest.terminal import run_labeling

    if not args.token:
        print("ingest label: no token (--token or $RLHF_INGEST_TOKEN)", file=sys.stderr)
        return 2
    with IngestClient(args.address, args.token, tls_root_cert=args.tls_root_cert) as client:
        client.wait_ready(timeout_s=30.0)
        run_labeling(client, args.labeler_id, lease_seconds=args.lease_seconds)
    return 0


def _simulate(args) -> int:
    from rlhf_dist.ingest.client import IngestClient
    from rlhf_dist.ingest.sim_labeler import run_simulated_labeler
    from rlhf_dist.labelers import VaderLabeler

    if not args.token:
        print("ingest simulate: no token (--token or $RLHF_INGEST_TOKEN)", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log = logging.getLogger("rlhf_dist.ingest.simulate")
    labeler = VaderLabeler(args.tie_margin, args.on_tie, args.noise, args.seed)
    with IngestClient(args.address, args.token, tls_root_cert=args.tls_root_cert) as client:
        acked = run_simulated_labeler(client, labeler, args.labeler_id, stop, latency_s=args.latency_s,
                                      batch=args.batch, lease_seconds=args.lease_seconds,
                                      max_labels=args.max_labels, acks_file=args.acks_file, log=log.warning)
    log.info("%s: %d labels acknowledged", args.labeler_id, acked)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-dist ingest",
                                     description="the comparison-ingest service")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_export(sub)
    _add_label(sub)
    _add_simulate(sub)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=getattr(args, "log_level", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = {"serve": _serve, "export": _export, "label": _label, "simulate": _simulate}[args.command]
    from rlhf_dist.ingest.validate import IngestError

    try:
        return command(args)
    except (OSError, ValueError, TimeoutError, IngestError) as err:
        # A missing or bad file, a refused token, a service that does not answer: one line,
        # exit 2 (a refused start), not a traceback.
        print(f"rlhf-dist ingest {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
