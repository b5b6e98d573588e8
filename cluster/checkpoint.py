"""Checkpoints that a stop or a kill at any moment cannot leave half-written.

A checkpoint is written into a temporary folder, every file fsync'd, and then renamed to
`checkpoints/step-NNNNNNNN` in one atomic step; a folder with that name is therefore
always complete. Resume takes the highest such step and never looks at `.tmp-*` folders.
Older checkpoints beyond `keep`, and temporary folders left by a killed writer, are removed
after the new one is in place.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Optional

import torch

_NAME = re.compile(r"^step-(\d{8})$")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir: Path, step: int, state: dict, keep: int = 2) -> Path:
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with open(tmp / "state.pt", "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if final.exists():   # the same step written again (a resumed run): replace it whole
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    for old in sorted(p for p in root.iterdir() if _NAME.match(p.name))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    # Temporary folders of writers killed mid-checkpoint (`ray job stop` past its grace period):
    # never read, so remove them once a newer checkpoint is in place.
    for stale in root.glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = sorted(p for p in root.iterdir() if _NAME.match(p.name) and (p / "state.pt").exists())
    return done[-1] if done else None


def load_checkpoint(path: Path) -> dict:
    return torch.load(Path(path) / "state.pt", weights_only=False)


def checkpoint_step(path: Path) -> int:
    return int(_NAME.match(Path(path).name).group(1))
