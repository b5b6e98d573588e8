"""PPO iteration: end-to-end samples/s of the Ray pipeline against a single-process loop doing
the same computation, with the time split by phase; `--actors 1 2 4` adds the scaling table
and a model, fitted from the measured phase costs, of N rollout devices and one learner.

    python -m benchmarks.bench_ppo [--config configs/default.yaml] [--iters 3] [--rounds 2]
                                   [--actors 1 2 4] [overrides]

The two loops are in benchmarks/pipeline.py (what each does is written there). They run
interleaved: after `--warmup` iterations each, `--rounds` rounds of `--iters` iterations of
the single-process loop, then of the Ray pipeline (the order alternates by round), with both
consuming the same query stream. While one runs the other is idle. Figures are medians over
iterations; samples/s = ppo.batch_size / wall time of one iteration.
"""
from __future__ import annotations

from benchmarks import common
from benchmarks.pipeline import PHASES, RayPipeline, SingleProcess

PHASE_FLOPS = {"generate": "generate", "reference": "reference", "reward": "reward",
               "policy_value_forward": "policy_value_forward", "update_backward_adam": "update_backward"}


def run_steps(loop, stream, task, cfg, labeler, n: int, sink: list, label: str) -> None:
    for _ in range(n):
        q = task.pad(stream.next_batch(cfg.ppo.batch_size), cfg.data.query_length)
        step = loop.step(q, labeler)
        sink.append(step)
        common.log(f"{label}: {step.inner['step']:.2f}s ({step.samples / step.inner['step']:.2f} samples/s)")


def summarize(steps: list) -> dict:
    per = {k: common.median([s.inner.get(k) for s in steps]) for k in PHASES + ["adam_step"]}
    outer = {k: common.median([s.outer.get(k) for s in steps]) for k in steps[0].outer}
    sps = [s.samples / s.inner["step"] for s in steps]
    return {"samples_per_s": common.median(sps), "samples_per_s_all": sps, "inner": per, "outer": outer,
            "steps": len(steps)}


def phase_rows(sp: dict, rp: dict, flops: dict, B: int, peak: float) -> list[dict]:
    rows = []
    for k in PHASES:
        f = flops.get(PHASE_FLOPS.get(k, ""), None)
        row = {"phase": k, "sp_s": sp["inner"][k], "ray_driver_s": rp["outer"].get(k, ""), "ray_inner_s": rp["inner"][k]}
        if f is not None:
            row["gflop"] = f / 1e9
            row["sp_peak"] = f * B / sp["inner"][k] / peak if sp["inner"][k] > 0 else ""
            row["ray_peak"] = f * B / rp["inner"][k] / peak if rp["inner"][k] > 0 else ""
        rows.append(row)
    return rows


def fitted_model(inner: dict, B: int, ns=(1, 2, 4, 8, 16, 32)) -> tuple[list[dict], dict]:
    """Per-iteration time for N rollout devices and one learner device, from measured costs.

    g: generation of the whole batch on one device; it splits evenly over N devices.
    c: the learner device's serial work per batch: reference + reward scoring, PPO epochs,
       the weight copy out and in (a broadcast: one send read by all, constant in N), and
       the driver's labelling; w: per-iteration call and transfer overhead.
    synchronous (staleness 0): T(N) = g/N + c + w;  one batch ahead (staleness 1): T(N) = max(g/N, c) + w.
    """
    g = inner["generate"]
    c = inner["score"] + inner["update"] + inner["broadcast"] + inner["driver_labeler"]
    w = max(0.0, inner["waiting"])
    rows = []
    for n in ns:
        sync = g / n + c + w
        ahead = max(g / n, c) + w
        rows.append({"N": n, "sync_samples_per_s": B / sync, "ahead_samples_per_s": B / ahead,
                     "bound": "rollout" if g / n > c else "learner"})
    return rows, {"g_s": g, "c_s": c, "w_s": w, "asymptote_samples_per_s": B / (c + w)}


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0], "ppo.json")
    p.add_argument("--iters", type=int, default=3, help="timed iterations per loop per round")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations per loop first")
    p.add_argument("--actors", type=int, nargs="+", default=[1], help="rollout actor counts to measure")
    args = p.parse_args(argv)
    cfg = common.load(args)
    cfgs = {n: common.load(args, [f"resources.num_rollout_actors={n}"]) for n in args.actors}

    from cluster.train import prepare_task
    from rlhf_dist.config import derived
    from rlhf_dist.data import QueryStream
    from rlhf_dist.labelers import make_labeler
    from rlhf_dist.models import set_torch_threads

    threads = cfg.resources.torch_threads
    set_torch_threads(threads)
    machine = common.machine_info(threads)
    peak = machine["matmul_fp32_gflops"] * 1e9
    task = prepare_task(cfg)
    labeler = make_labeler(cfg.labeler)
    num_updates = derived(cfg).num_updates
    B = cfg.ppo.batch_size
    common.log(f"model {cfg.model.name}, trainable_layers={cfg.model.trainable_layers}, batch {B}, "
               f"{cfg.data.query_length}+{cfg.sampling.response_length} tokens, {cfg.ppo.epochs} epochs x "
               f"{cfg.ppo.num_minibatches} minibatches, {threads} torch threads; load {machine['load_avg_1_5_15']}")
    sp = SingleProcess(cfg, task, num_updates)
    ray = common.start_ray(max(common.cpus_needed(c.resources) for c in cfgs.values()))
    flops = common.phase_flops(common.model_shape(cfg.model), cfg.data.query_length, cfg.sampling.response_length,
                               cfg.model.trainable_layers, cfg.ppo.epochs)

    sp_stream, ray_stream = QueryStream(task.queries.train, cfg.data.seed), QueryStream(task.queries.train, cfg.data.seed)
    per_n, tables = {}, []
    for i, n in enumerate(args.actors):
        pipe = RayPipeline(ray, cfgs[n], task, num_updates)
        common.log(f"{n} rollout actor(s) up")
        sp_steps, ray_steps, junk = [], [], []
        if i == 0:
            run_steps(sp, sp_stream, task, cfg, labeler, args.warmup, junk, "warm-up single-process")
        run_steps(pipe, ray_stream, task, cfgs[n], labeler, args.warmup, junk, f"warm-up ray x{n}")
        for r in range(args.rounds):
            order = [("sp", sp, sp_stream, cfg, sp_steps), ("ray", pipe, ray_stream, cfgs[n], ray_steps)]
            for name, loop, stream, c, sink in (order if r % 2 == 0 else order[::-1]):
                run_steps(loop, stream, task, c, labeler, args.iters, sink,
                          f"round {r + 1} {'single-process' if name == 'sp' else f'ray x{n}'}")
        pipe.shutdown()
        s_sp, s_ray = summarize(sp_steps), summarize(ray_steps)
        per_n[n] = {"single_process": s_sp, "ray": s_ray, "ratio": s_ray["samples_per_s"] / s_sp["samples_per_s"],
                    "load_avg_after": [round(x, 2) for x in __import__("os").getloadavg()]}
        print(f"\n== {n} rollout actor(s): Ray {s_ray['samples_per_s']:.3f} samples/s vs single-process "
              f"{s_sp['samples_per_s']:.3f} -> ratio {per_n[n]['ratio']:.3f} "
              f"({len(ray_steps)} + {len(sp_steps)} iterations)")
        tables.append(common.table(phase_rows(s_sp, s_ray, flops, B, peak), [
            ("phase", "phase (s per iteration)", ""), ("sp_s", "single-process", ".3f"),
            ("ray_driver_s", "Ray, seen by driver", ".3f"), ("ray_inner_s", "Ray, inside actors", ".3f"),
            ("gflop", "GFLOP/sample", ".2f"), ("sp_peak", "SP of peak", ".1%"), ("ray_peak", "Ray of peak", ".1%")]))

    print("\n== scaling on this machine (2 cores shared by all actors)")
    scale_rows = [{"actors": n, "ray": v["ray"]["samples_per_s"], "sp": v["single_process"]["samples_per_s"],
                   "ratio": v["ratio"], "gen": v["ray"]["inner"]["generate"], "gen_driver": v["ray"]["outer"]["generate"]}
                  for n, v in per_n.items()]
    tables.append(common.table(scale_rows, [("actors", "rollout actors", ""), ("ray", "Ray samples/s", ".3f"),
                                            ("sp", "single-process samples/s", ".3f"), ("ratio", "ratio", ".3f"),
                                            ("gen", "generate in actors s", ".2f"),
                                            ("gen_driver", "generate seen by driver s", ".2f")]))
    base_n = args.actors[0]
    model_rows, model_params = fitted_model(per_n[base_n]["ray"]["inner"], B)
    print(f"\n== fitted model from the {base_n}-actor phase costs (units: this machine's speed per device): "
          f"g={model_params['g_s']:.2f}s c={model_params['c_s']:.2f}s w={model_params['w_s']:.2f}s")
    tables.append(common.table(model_rows, [("N", "rollout devices", ""), ("sync_samples_per_s", "sync samples/s", ".2f"),
                                            ("ahead_samples_per_s", "1 batch ahead samples/s", ".2f"),
                                            ("bound", "bound by", "")]))
    first = per_n[base_n]
    update_s = first["ray"]["inner"]["update"]
    bcast_s = first["ray"]["outer"]["broadcast"]
    print(f"Ray / single-process at {base_n} actor(s): {first['ratio']:.3f}x; broadcast {bcast_s:.3f}s "
          f"vs update {update_s:.2f}s ({bcast_s / update_s:.1%})")
    common.write_result(args.out, "ppo", cfg, machine, {
        "per_actors": {str(k): v for k, v in per_n.items()}, "ratio_ray_vs_single_process": first["ratio"],
        "broadcast_s": bcast_s, "update_s": update_s, "flops_per_sample": flops,
        "fitted_model": {"rows": model_rows, **model_params, "doc": fitted_model.__doc__},
        "args": {k: v for k, v in vars(args).items() if k != "overrides"}}, tables)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
