"""A peer: the same PPO workload through Hugging Face TRL's PPO trainer, as a ratio.

    python -m benchmarks.bench_trl [--config configs/default.yaml] [--trl-python .venv-trl/bin/python]
                                   [--iters 2] [--trl-updates 3] [overrides]

Workload, both sides: the embedded SmolLM2-135M, 16 rollouts per iteration of 32 query +
24 response tokens, 4 PPO epochs x 4 minibatches of 4, whitened rewards off (TRL's default;
our whitening asserts minibatches of >= 8), temperature 0.7, fp32, the same torch thread
count, full fine-tuning. Our side is the Ray pipeline (benchmarks/pipeline.py RayPipeline);
TRL runs in its own venv (benchmarks/trl_peer.py) on the same queries, left-padded to 32
with its pad token. The rows run in one sitting: ours (full) -> TRL -> ours (full) again ->
ours with the default partial fine-tuning (top 4 blocks), the extra row.

What differs by design, not by setting: TRL trains a separate value model (a second full
backbone, forward and backward) where ours puts the value head on the policy; TRL's
reward model runs the whole backbone where ours reuses the frozen trunk's features (with
full fine-tuning nothing is frozen, so both run the whole backbone).
"""
from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from benchmarks import common
from benchmarks.pipeline import RayPipeline

WORKLOAD = ["data.query_length=32", "sampling.response_length=24", "ppo.batch_size=16", "ppo.epochs=4",
            "ppo.num_minibatches=4", "ppo.whiten_rewards=false", "resources.num_rollout_actors=1"]


def run_ours(ray, cfg, task, labeler, warmup: int, iters: int, pipe=None):
    from rlhf_dist.data import QueryStream

    pipe = pipe or RayPipeline(ray, cfg, task, 100)
    stream = QueryStream(task.queries.train, cfg.data.seed)
    steps = []
    for i in range(warmup + iters):
        step = pipe.step(task.pad(stream.next_batch(cfg.ppo.batch_size), cfg.data.query_length), labeler)
        common.log(f"ours trainable_layers={cfg.model.trainable_layers} iteration {i + 1}: {step.inner['step']:.2f}s")
        if i >= warmup:
            steps.append(step)
    return pipe, steps


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0], "trl.json")
    p.add_argument("--trl-python", default=".venv-trl/bin/python")
    p.add_argument("--iters", type=int, default=2, help="timed iterations of ours per block (after 1 warm-up)")
    p.add_argument("--trl-updates", type=int, default=3, help="TRL PPO updates (the first is a warm-up)")
    args = p.parse_args(argv)
    full = common.load(args, WORKLOAD + ["model.trainable_layers=all"])
    partial = common.load(args, WORKLOAD + ["model.trainable_layers=4"])

    from cluster.train import prepare_task
    from rlhf_dist.labelers import make_labeler
    from rlhf_dist.models import resolve_model_dir, set_torch_threads

    threads = full.resources.torch_threads
    set_torch_threads(threads)
    machine = common.machine_info(threads)
    task = prepare_task(full)
    labeler = make_labeler(full.labeler)
    B, Q = full.ppo.batch_size, full.data.query_length
    eos = task.tokenizer.pad_token_id if task.tokenizer.pad_token_id is not None else task.tokenizer.eos_token_id
    qfile = Path(tempfile.mkdtemp(prefix="bench-trl-")) / "queries.json"
    qfile.write_text(json.dumps([[eos] * (Q - len(q)) + q for q in task.queries.train[: B * 8]]))
    ray = common.start_ray(common.cpus_needed(full.resources))

    pipe, ours_a = run_ours(ray, full, task, labeler, 1, args.iters)
    common.log(f"TRL: {args.trl_updates} updates in {args.trl_python}")
    cmd = [args.trl_python, str(Path(__file__).with_name("trl_peer.py")), "--model", str(resolve_model_dir(full.model)),
           "--queries", str(qfile), "--response-length", str(full.sampling.response_length), "--batch", str(B),
           "--epochs", str(full.ppo.epochs), "--minibatches", str(full.ppo.num_minibatches),
           "--updates", str(args.trl_updates), "--threads", str(threads),
           "--temperature", str(full.sampling.temperature)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    trl = None
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            trl = json.loads(line)
            break
    if trl is None:
        print(proc.stdout[-3000:], proc.stderr[-6000:])
        raise SystemExit("TRL run failed (output above)")
    common.log(f"TRL: steps {[round(s, 1) for s in trl['step_s']]} s")
    _, ours_b = run_ours(ray, full, task, labeler, 0, args.iters, pipe)
    pipe.shutdown()
    pipe_p, ours_p = run_ours(ray, partial, task, labeler, 1, args.iters)
    pipe_p.shutdown()

    def sps(steps):
        return common.median([s.samples / s.inner["step"] for s in steps])

    def phases(steps):
        return {k: common.median([s.inner.get(k) for s in steps]) for k in (
            "generate", "reference", "reward", "score", "policy_value_forward", "update_backward_adam", "adam_step",
            "update", "broadcast", "waiting", "step")}

    full_sps = sps(ours_a + ours_b)
    rows = [{"system": "TRL 1.12.0 PPOTrainer, full fine-tuning", "samples_per_s": trl["samples_per_s"],
             "step_s": trl["median_step_s"], "ratio": 1.0, "n": len(trl["step_s"]) - 1},
            {"system": "rlhf_dist Ray pipeline, full fine-tuning", "samples_per_s": full_sps,
             "step_s": B / full_sps, "ratio": full_sps / trl["samples_per_s"], "n": len(ours_a) + len(ours_b),
             "before_after_trl": f"{sps(ours_a):.3f} / {sps(ours_b):.3f}"},
            {"system": "rlhf_dist Ray pipeline, top 4 of 30 blocks (our default)", "samples_per_s": sps(ours_p),
             "step_s": B / sps(ours_p), "ratio": sps(ours_p) / trl["samples_per_s"], "n": len(ours_p)}]
    text = common.table(rows, [("system", "system", ""), ("samples_per_s", "samples/s", ".3f"),
                               ("step_s", "s/iteration", ".1f"), ("ratio", "vs TRL", ".2f"), ("n", "timed iterations", ""),
                               ("before_after_trl", "ours before / after TRL", "")])
    print(f"ours / TRL at full fine-tuning: {rows[1]['ratio']:.2f}x (same sitting; {threads} torch threads each)")
    common.write_result(args.out, "trl", full, machine, {
        "rows": rows, "trl": trl, "ours_full_phases": phases(ours_a + ours_b), "ours_partial_phases": phases(ours_p),
        "ratio_full": rows[1]["ratio"], "ratio_partial": rows[2]["ratio"], "workload_overrides": WORKLOAD,
        "minibatching": "both: 4 epochs x 4 minibatches of 4 samples; whitening off on both"}, [text])
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
