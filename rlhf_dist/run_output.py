"""The run folder a person reads: config, metrics, samples, plots, summary."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path


def make_run_dir(output_dir: str, name: str) -> Path:
    name = name or time.strftime("%Y%m%d-%H%M%S")
    path = Path(output_dir) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _clean(value):
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value


class MetricsLog:
    """One JSON object per line; flushed each step so `tail -f` shows progress."""

    def __init__(self, path: Path):
        self.path = path
        self._fh = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._fh.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def write_summary(path: Path, summary: dict) -> None:
    """summary.json, strict JSON: a rate with nothing to count (NaN) is written as null."""
    path.write_text(json.dumps({k: _clean(v) for k, v in summary.items()}, indent=2))


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_samples(path: Path, title: str, rows: list[dict]) -> None:
    """rows: {query, response, true_score, [reward]} -> a Markdown file and a JSONL twin."""
    lines = [f"# {title}", ""]
    for i, row in enumerate(rows):
        extra = " ".join(f"{k}={row[k]:.3f}" for k in ("true_score", "reward") if k in row)
        lines += [f"## {i}  ({extra})", "", f"> {row['query']}", "", f"**{row['response']}**", ""]
    path.with_suffix(".md").write_text("\n".join(lines), encoding="utf-8")
    with open(path.with_suffix(".jsonl"), "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def plot_metrics(metrics: list[dict], path: Path, kl_target: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in metrics]
    panels = [("objective/score", "reward-model score"), ("true_score", "true labeler score (VADER)"),
              ("objective/kl", "KL(pi || rho), nats per sequence"), ("objective/kl_coef", "beta"),
              ("loss/value", "value loss"), ("samples_per_s", "samples / s")]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (key, title) in zip(axes.flat, panels):
        ax.plot(steps, [m.get(key) for m in metrics], marker=".")
        if key == "objective/kl" and kl_target:
            ax.axhline(kl_target, color="gray", linestyle="--", label="target")
            ax.legend()
        ax.set_title(title)
        ax.set_xlabel("PPO update")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
