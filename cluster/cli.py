"""`rlhf-dist`: the command line. It sits at the top of the dependency graph.

  rlhf-dist train --config configs/default.yaml [section.key=value ...]
  rlhf-dist ingest serve|export|label|simulate ...   (the comparison-ingest service)
"""
from __future__ import annotations

import argparse
import sys


def train_main(argv: list[str]) -> int:
    from rlhf_dist.config import ConfigError, load_config

    parser = argparse.ArgumentParser(prog="rlhf-dist train", description="Run the training job.")
    parser.add_argument("--config", default=None, help="YAML config (defaults are the embedded CPU job)")
    parser.add_argument("--resume", action="store_true", help="continue run.name from its latest checkpoint")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. ppo.lr=1e-5 run.name=try1")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides + (["run.resume=true"] if args.resume else []))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    from cluster.stopping import EXIT_STOPPED
    from cluster.topology import ResourceError
    from cluster.train import run

    try:
        summary = run(cfg)
    except (ConfigError, FileNotFoundError, ResourceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # A run stopped by SIGTERM is checkpointed but not finished: say so to scripts.
    return EXIT_STOPPED if "stopped_after_step" in summary else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        return train_main(rest)
    if command == "ingest":
        from rlhf_dist.ingest.cli import main as ingest_main

        return ingest_main(rest)
    print(f"unknown command {command!r}; see rlhf-dist --help", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
