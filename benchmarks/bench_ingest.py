"""Ingest service: acknowledged labels/s and ack latency against raw append+fsync, in the
suite's result format.

    python -m benchmarks.bench_ingest [--out benchmarks/results/ingest.json] [-- ingest_bench options]

Runs benchmarks/ingest_bench.py (owned by the ingest service; what it measures is written
there) unchanged, then records its result with the machine facts like the other benchmarks.
Options after `--` go to ingest_bench.py (e.g. `-- --clients 16 --batch 128`).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmarks import common


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(common.RESULTS / "ingest.json"))
    args = p.parse_args(own)

    from benchmarks import ingest_bench

    machine = common.machine_info()
    raw = Path(tempfile.mkdtemp(prefix="bench-ingest-")) / "ingest.json"
    rc = ingest_bench.main(passthrough + ["--json-out", str(raw)])
    if rc:
        return rc
    data = json.loads(raw.read_text())
    rows = data["results"]
    base = {r["phase"].split(" x")[0].replace("baseline ", ""): r for r in rows if r["phase"].startswith("baseline")}
    for r in rows:
        if r["phase"].startswith("server"):
            kind = "batched" if "batched" in r["phase"] else "single"
            match = next((b for k, b in base.items() if k.startswith(kind)), None)
            if match:
                r["vs_baseline"] = r["labels_per_s"] / match["labels_per_s"]
    text = common.table(rows, [("phase", "phase", ""), ("labels_per_s", "labels/s", ".0f"), ("p50_ms", "p50 ms", ".2f"),
                               ("p99_ms", "p99 ms", ".2f"), ("vs_baseline", "vs raw append+fsync", ".2f")])
    common.write_result(args.out, "ingest", None, machine, {**data, "rows": rows}, [text])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
