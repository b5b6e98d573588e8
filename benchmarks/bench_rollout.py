"""Rollout: a rollout actor against plain Hugging Face `generate`, same batch, same settings.

    python -m benchmarks.bench_rollout [--config configs/default.yaml] [--reps 5] [overrides]

Three ways to sample `ppo.batch_size` responses of exactly `sampling.response_length` tokens
for the same left-padded queries, at the same temperature and torch thread count, called in
rotating order `--reps` times after one warm-up each (medians reported):
  hf generate      baseline: `model.generate(do_sample=True, temperature=T, top_k=0,
                   min_new_tokens=R, max_new_tokens=R)` on the whole model, in this process;
  worker, local    our sampler (`RolloutWorker.generate`) in this process, no Ray: it also
                   computes the value head and keeps the frozen trunk's features;
  worker, Ray      the same class as a Ray actor, timed from the driver (`ray.get`), the
                   figure the issue asks for; its in-actor time is shown too.
While one runs the others are idle, so each has both cores.
"""
from __future__ import annotations

import time

import torch

from benchmarks import common


def hf_generate(model, query_tokens: torch.Tensor, pad_id: int, eos_id: int, R: int, T: float):
    mask = query_tokens != pad_id
    ids = query_tokens.masked_fill(~mask, eos_id)
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=mask.long(), do_sample=True, temperature=T,
                              top_k=0, top_p=1.0, min_new_tokens=R, max_new_tokens=R, pad_token_id=eos_id)


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0], "rollout.json")
    p.add_argument("--reps", type=int, default=5, help="timed calls of each way (after 1 warm-up)")
    args = p.parse_args(argv)
    cfg = common.load(args)
    threads = cfg.resources.torch_threads

    from actors.rollout import RolloutWorker
    from rlhf_dist.models import load_causal_lm

    machine, task, queries = common.prepare(cfg)
    B, Q, R, temp = cfg.ppo.batch_size, cfg.data.query_length, cfg.sampling.response_length, cfg.sampling.temperature

    ray = common.start_ray(cfg.resources.rollout_cpus + 1)
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads)}}
    actor = ray.remote(num_cpus=cfg.resources.rollout_cpus, runtime_env=env)(RolloutWorker).remote(
        cfg.model, cfg.sampling, cfg.run.seed, threads)
    local = RolloutWorker(cfg.model, cfg.sampling, cfg.run.seed, threads)
    hf = load_causal_lm(cfg.model)
    eos = task.tokenizer.eos_token_id
    ray.get(actor.ready.remote())
    common.log(f"batch {B} x ({Q} + {R}) tokens, temperature {temp}, {threads} torch threads each")

    def run_hf():
        t0 = time.perf_counter()
        out = hf_generate(hf, queries, task.pad_id, eos, R, temp)
        assert out.shape == (B, Q + R), out.shape
        return time.perf_counter() - t0, None

    def run_local():
        t0 = time.perf_counter()
        batch = local.generate(queries)
        return time.perf_counter() - t0, batch.generate_s

    def run_ray():
        t0 = time.perf_counter()
        batch = ray.get(actor.generate.remote(queries))
        return time.perf_counter() - t0, batch.generate_s

    ways = {"hf generate (baseline)": run_hf, "worker, local (no Ray)": run_local, "worker, Ray actor": run_ray}
    times = {k: [] for k in ways}
    inner = {k: [] for k in ways}
    for fn in ways.values():   # warm-up
        fn()
    names = list(ways)
    for rep in range(args.reps):
        for name in names[rep % 3:] + names[: rep % 3]:   # rotate the order each round
            t, t_in = ways[name]()
            times[name].append(t)
            inner[name].append(t_in)
        common.log(f"round {rep + 1}/{args.reps}: " + ", ".join(f"{k} {times[k][-1]:.2f}s" for k in names))

    shape = common.model_shape(cfg.model)
    gen_flops = common.phase_flops(shape, Q, R, cfg.model.trainable_layers, cfg.ppo.epochs)["generate"]
    hf_flops = common.phase_flops(shape, Q, R, "all", 1)["generate"]   # no features, no trunk pass
    base = common.median(times[names[0]])
    rows = []
    for name in names:
        t = common.median(times[name])
        flops = hf_flops if name == names[0] else gen_flops
        rows.append({"way": name, "seconds": t, "spread": common.spread(times[name]),
                     "in_actor_s": common.median(inner[name]) if inner[name][0] is not None else "",
                     "tokens_per_s": B * R / t, "samples_per_s": B / t, "ratio": base / t,
                     "gflop_per_sample": flops / 1e9,
                     "peak_frac": flops * B / t / (machine["matmul_fp32_gflops"] * 1e9)})
    text = common.table(rows, [("way", "way", ""), ("seconds", "s/batch", ".3f"), ("spread", "min-max", ""),
                               ("in_actor_s", "in-actor s", ".3f"), ("tokens_per_s", "new tokens/s", ".1f"),
                               ("samples_per_s", "samples/s", ".2f"), ("ratio", "vs generate", ".3f"),
                               ("gflop_per_sample", "GFLOP/sample", ".2f"), ("peak_frac", "of matmul peak", ".1%")])
    ratio = rows[2]["ratio"]
    print(f"rollout actor / plain generate: {ratio:.3f}x samples/s (median of {args.reps}); "
          f"matmul peak {machine['matmul_fp32_gflops']:.0f} GFLOP/s")
    common.write_result(args.out, "rollout", cfg, machine,
                        {"rows": rows, "raw_seconds": times, "raw_in_actor_seconds": inner,
                         "ratio_actor_vs_generate": ratio, "batch": B, "query_length": Q, "response_length": R,
                         "reps": args.reps}, [text])
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
