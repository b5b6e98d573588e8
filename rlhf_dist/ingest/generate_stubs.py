"""Regenerate the committed gRPC stubs from comparisons.proto.

Run from anywhere; protoc is pointed at the repository root so the generated files import
`from rlhf_dist.ingest import comparisons_pb2` (a bare `import comparisons_pb2` breaks
inside a package):

    python rlhf_dist/ingest/generate_stubs.py            # rewrite the committed stubs
    python rlhf_dist/ingest/generate_stubs.py --out DIR  # write them under DIR instead

tests/test_ingest_schema.py regenerates into a temporary folder and compares byte for byte.
"""
from __future__ import annotations

import argparse
import os
import sys

PROTO = "rlhf_dist/ingest/comparisons.proto"  # relative to the repository root
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GENERATED = ("comparisons_pb2.py", "comparisons_pb2.pyi", "comparisons_pb2_grpc.py")


def generate(out_root: str = REPO_ROOT) -> list[str]:
    """Run protoc; return the paths written (under out_root/rlhf_dist/ingest/)."""
    from grpc_tools import protoc  # dev-only dependency, so imported here
    import importlib.resources

    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    os.makedirs(os.path.join(out_root, "rlhf_dist", "ingest"), exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{REPO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        os.path.join(REPO_ROOT, PROTO),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    return [os.path.join(out_root, "rlhf_dist", "ingest", name) for name in GENERATED]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=REPO_ROOT, help="root to write rlhf_dist/ingest/ under")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
