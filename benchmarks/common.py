"""What every benchmark shares: command line, machine facts, a measured matmul rate, a FLOP
model per phase, tables and the JSON record.

Every benchmark prints a table and writes one JSON file holding the machine (CPU model,
cores, load average before and after, package versions, torch threads, measured fp32 matmul
GFLOP/s), the resolved config and the command line, so a figure can be traced to its inputs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


# ---------------------------------------------------------------------------------------
# command line and config


def parser(description: str, default_out: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", default="configs/default.yaml", help="YAML config (default: the embedded default)")
    p.add_argument("--out", default=str(RESULTS / default_out), help="JSON result file")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. ppo.epochs=2")
    return p


def load(args, extra_overrides: Optional[list[str]] = None):
    from rlhf_dist.config import load_config

    return load_config(args.config, list(extra_overrides or []) + list(args.overrides))


def ray_env() -> None:
    """Settings every Ray benchmark needs on this machine (local, loopback only)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Ray starts worker processes at nice 15 (raylet setting worker_niceness). The baselines run
    # in this process at nice 0, so on a machine shared with other jobs the actors would lose
    # every contended time slice to them: give the actors the driver's priority.
    os.environ.setdefault("RAY_worker_niceness", "0")


def start_ray(num_cpus: float):
    """A local Ray instance on 127.0.0.1 with `num_cpus` logical CPUs (a scheduling count:
    thread counts are set per actor from resources.torch_threads)."""
    import math

    import ray

    ray_env()
    if not ray.is_initialized():
        ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(num_cpus)), include_dashboard=False,
                 _node_ip_address="127.0.0.1", log_to_driver=False,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    return ray


def cpus_needed(res) -> float:
    return res.num_rollout_actors * res.rollout_cpus + 2 * res.reward_cpus + res.learner_cpus


# ---------------------------------------------------------------------------------------
# machine facts


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "ray", "numpy", "trl", "accelerate"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def matmul_gflops(n: int = 1024, repeats: int = 20, threads: Optional[int] = None) -> float:
    """Best-of fp32 GFLOP/s of an n x n matmul on `threads` threads: the machine's practical
    dense peak that the phase fractions are measured against."""
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    for _ in range(3):
        torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    torch.set_num_threads(old)
    return 2 * n ** 3 / best / 1e9


def machine_info(threads: Optional[int] = None) -> dict:
    import torch

    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1),
        "platform": platform.platform(),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "torch_threads": threads or torch.get_num_threads(),
        "matmul_fp32_gflops": round(matmul_gflops(threads=threads), 1),
        "versions": versions(),
    }


def prepare(cfg):
    """Threads set deliberately, machine facts, the task, and one PPO batch of padded queries."""
    from cluster.train import prepare_task
    from rlhf_dist.models import set_torch_threads

    threads = cfg.resources.torch_threads
    set_torch_threads(threads)
    machine = machine_info(threads)
    task = prepare_task(cfg)
    queries = task.pad(task.queries.train[: cfg.ppo.batch_size], cfg.data.query_length)
    return machine, task, queries


# ---------------------------------------------------------------------------------------
# FLOPs per sample, from the model's shape


def model_shape(model_cfg) -> dict:
    """Sizes of the backbone from its config.json (no weights loaded)."""
    from rlhf_dist.models import resolve_model_dir

    cfg = json.loads((Path(resolve_model_dir(model_cfg)) / "config.json").read_text())
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    d, ff = cfg["hidden_size"], cfg["intermediate_size"]
    block = d * heads * head_dim * 2 + d * kv * head_dim * 2 + 3 * d * ff   # q,o + k,v + gate/up/down
    return {"hidden": d, "layers": cfg["num_hidden_layers"], "vocab": cfg["vocab_size"],
            "attn_width": heads * head_dim, "block_params": block}


def phase_flops(shape: dict, query_length: int, response_length: int, trainable_layers, epochs: int) -> dict:
    """Forward FLOPs (2 per multiply-add) per sample of each phase, as this code runs them.

    generate: the whole stack over Q + R - 1 positions (prefill, then one token per step with
      a KV cache), the trunk once more for the last token's features, the LM head at R positions;
    reference, reward: the trainable top over Q + R positions from cached trunk features
      (the whole stack when nothing is frozen), LM head at R positions for the reference;
    policy/value forward: the same as the reference, once per epoch;
    update: backward taken as 2x the forward, once per epoch (Adam's few FLOPs/parameter left out).
    Attention scores count 4 * T * width per token and block (T = positions attended).
    """
    Q, R, L = query_length, response_length, shape["layers"]
    top = L if trainable_layers == "all" else min(int(trainable_layers), L)
    frozen = L - top
    T = Q + R
    per_tok_block = 2 * shape["block_params"]
    head = 2 * shape["hidden"] * shape["vocab"]

    def stack(blocks: int, tokens: int, ctx: float) -> float:
        return blocks * tokens * (per_tok_block + 4 * ctx * shape["attn_width"])

    gen = stack(L, T - 1, T / 2) + stack(frozen, 1, T) + head * R
    top_fwd = stack(top, T, T) + head * R     # full-sequence forward attends the T x T mask
    reward = stack(top, T, T) + 2 * shape["hidden"]
    return {"generate": gen, "reference": top_fwd, "reward": reward,
            "policy_value_forward": epochs * top_fwd, "update_backward": epochs * 2 * top_fwd}


# ---------------------------------------------------------------------------------------
# statistics, tables, JSON


def median(xs) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def spread(xs) -> str:
    xs = sorted(xs)
    return f"{xs[0]:.3g}-{xs[-1]:.3g}" if xs else "-"


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """columns: (key, header, format spec). Returns the printed text."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        line = []
        for key, _, fmt in columns:
            v = r.get(key, "")
            line.append(format(v, fmt) if isinstance(v, (int, float)) and fmt else str(v))
        cells.append(line)
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) + " |"
             for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def command_line() -> str:
    return "python -m " + Path(sys.argv[0]).with_suffix("").relative_to(REPO).as_posix().replace("/", ".") \
        + "".join(" " + a for a in sys.argv[1:]) if Path(sys.argv[0]).resolve().is_relative_to(REPO) \
        else " ".join(sys.argv)


def write_result(path: str, name: str, cfg, machine: dict, results: dict, tables: list[str]) -> None:
    from rlhf_dist.config import to_dict

    machine = dict(machine, load_avg_1_5_15_end=[round(x, 2) for x in os.getloadavg()])
    record = {"benchmark": name, "command": command_line(), "when": time.strftime("%Y-%m-%d %H:%M:%S"),
              "machine": machine, "config": to_dict(cfg) if cfg is not None else None,
              "results": results, "tables": tables}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=2, default=float))
    print(f"wrote {path}", flush=True)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)
