"""Weight broadcast: time against the size of what trains, the bytes moved, and one PPO update.

    python -m benchmarks.bench_broadcast [--config configs/default.yaml] [--layers 1 4 16 all]
                                         [--actors 1 2] [--reps 5] [overrides]

For each `model.trainable_layers` value a learner actor and the rollout actors start with
that split; the broadcast is what cluster/train.py does after every update: one
`learner.weights.remote()` (tensors copied to numpy, put in the object store once) read by
every rollout actor's `set_weights` (zero-copy numpy view, copied to torch, loaded into the
module). Measured from the driver, median of `--reps`, with the two halves timed inside the
actors. Baseline in the same run: one in-process memcpy of the same bytes (`np.copyto` into
preallocated arrays), the floor for moving the weights once. Reference: one PPO update of
the same split (in the learner actor, on a real rollout batch with a synthetic score), so the
broadcast can be read as a fraction of the work it follows.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from benchmarks import common
from benchmarks.pipeline import TimedPPOLearner, TimedRolloutWorker


def memcpy_baseline(tensors: dict, reps: int) -> float:
    dst = {k: np.empty_like(v) for k, v in tensors.items()}
    times = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        for k, v in tensors.items():
            np.copyto(dst[k], v)
        times.append(time.perf_counter() - t0)
    return common.median(times[1:])


def fake_scores(batch):
    """A scored batch with the rollout's own shapes; update cost does not depend on the values."""
    from rlhf_dist.experience import ScoredBatch

    s = batch.samples
    B = s.response_tokens.shape[0]
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(B, generator=g)
    return ScoredBatch(batch, s.logprobs.clone(), scores, scores.clone(), torch.ones(B, dtype=torch.bool),
                       s.response_tokens.clone(), 0)


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0], "broadcast.json")
    p.add_argument("--layers", nargs="+", default=["1", "4", "16", "all"], help="model.trainable_layers values")
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="rollout actors reading the weights")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    cfg = common.load(args)

    from cluster.topology import _ENV

    threads = cfg.resources.torch_threads
    machine, task, q = common.prepare(cfg)
    max_actors = max(args.actors)
    ray = common.start_ray(max_actors * cfg.resources.rollout_cpus + cfg.resources.learner_cpus)
    env = {"runtime_env": {"env_vars": {**_ENV, "OMP_NUM_THREADS": str(threads)}}}
    rows = []
    for layers in args.layers:
        c = common.load(args, [f"model.trainable_layers={layers}"])
        learner = ray.remote(num_cpus=c.resources.learner_cpus, **env)(TimedPPOLearner).remote(
            c.model, c.ppo, c.kl, c.sampling, 100, c.run.seed, threads)
        workers = [ray.remote(num_cpus=c.resources.rollout_cpus, **env)(TimedRolloutWorker).remote(
            c.model, c.sampling, c.run.seed + 100003 * i, threads) for i in range(max_actors)]
        ray.get([learner.ready.remote()] + [w.ready.remote() for w in workers])
        # one PPO update of this split, after one warm-up
        scored = fake_scores(ray.get(workers[0].generate.remote(q)))
        update_s = []
        for _ in range(2):
            update_s.append(ray.get(learner.update.remote(scored))["time/update_in_learner_s"])
        weights = ray.get(learner.weights.remote())
        nbytes, n_tensors = weights.nbytes, len(weights.tensors)
        copy_s = memcpy_baseline(weights.tensors, args.reps)
        del weights
        for n in args.actors:
            readers = workers[:n]
            times, t_out, t_in = [], [], []
            for rep in range(args.reps + 1):
                ray.get(learner.take_times.remote())
                ray.get([w.take_times.remote() for w in readers])
                t0 = time.perf_counter()
                ref = learner.weights.remote()
                ray.get([w.set_weights.remote(ref) for w in readers])
                dt = time.perf_counter() - t0
                del ref
                if rep == 0:
                    continue   # warm-up
                times.append(dt)
                t_out.append(ray.get(learner.take_times.remote()).get("weights_out", 0.0))
                t_in.append(max(t.get("weights_in", 0.0) for t in ray.get([w.take_times.remote() for w in readers])))
            t = common.median(times)
            rows.append({"trainable_layers": layers, "readers": n, "mib": nbytes / 2 ** 20, "tensors": n_tensors,
                         "moved_mib": nbytes * (n + 1) / 2 ** 20, "broadcast_s": t, "spread": common.spread(times),
                         "weights_out_s": common.median(t_out), "set_weights_s": common.median(t_in),
                         "memcpy_s": copy_s, "vs_memcpy": t / copy_s, "gib_per_s": nbytes * n / t / 2 ** 30,
                         "update_s": update_s[-1], "of_update": t / update_s[-1]})
            common.log(f"trainable_layers={layers} readers={n}: {nbytes / 2 ** 20:.1f} MiB in {t:.3f}s "
                       f"(update {update_s[-1]:.2f}s)")
        for h in workers + [learner]:
            ray.kill(h)
    text = common.table(rows, [("trainable_layers", "trainable layers", ""), ("readers", "readers", ""),
                               ("mib", "MiB", ".1f"), ("moved_mib", "MiB moved", ".0f"),
                               ("broadcast_s", "broadcast s", ".3f"), ("spread", "min-max", ""),
                               ("weights_out_s", "weights() s", ".3f"), ("set_weights_s", "set_weights s", ".3f"),
                               ("memcpy_s", "1 memcpy s", ".3f"), ("vs_memcpy", "x memcpy", ".1f"),
                               ("update_s", "PPO update s", ".2f"), ("of_update", "of update", ".1%")])
    print("MiB moved = size x (1 put into the object store + 1 copy out per reader).")
    common.write_result(args.out, "broadcast", cfg, machine, {"rows": rows, "reps": args.reps}, [text])
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
