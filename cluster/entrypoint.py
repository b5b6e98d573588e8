"""Job entrypoint: `python -m cluster.entrypoint --config FILE [overrides]`.

The same command runs locally (it starts a Ray instance) and under
`ray job submit --working-dir . -- python -m cluster.entrypoint ...` (it joins the cluster).
"""
import sys

from cluster.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:]))
