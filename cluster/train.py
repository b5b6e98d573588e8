"""The training job: reward learning from best-of-k labels, then PPO against it.

Reads as the paper does: collect comparisons from the initial policy, train and normalise
the reward model, then loop sample -> score -> update -> broadcast, and evaluate the
final policy against the initial one on held-out queries with the true labeler.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch

from cluster.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from cluster.online import OnlineLabels, check_ingest_service
from cluster.stopping import Stopped, StopRequest
from cluster.supervision import Fleet
from cluster.topology import check_resources, connect, describe_placement, start_actors, stop_actors
from rlhf_dist import data as data_lib
from rlhf_dist.config import Config, ConfigError, derived, dump_yaml
from rlhf_dist.experience import Comparison
from rlhf_dist.labelers import make_labeler
from rlhf_dist.models import check_model_name, load_tokenizer
from rlhf_dist.responses import truncate_responses
from rlhf_dist.run_output import MetricsLog, make_run_dir, plot_metrics, read_metrics, write_samples, write_summary


def log(msg: str) -> None:
    print(f"[rlhf_dist {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Task:
    """What the driver knows about text: tokenizer, stop tokens, query sets."""
    tokenizer: object
    stop_ids: list[int]
    pad_id: int
    queries: data_lib.QuerySet

    def pad(self, queries: list[list[int]], length: int) -> torch.Tensor:
        return data_lib.left_pad(queries, length, self.pad_id)

    def decode(self, tokens: torch.Tensor) -> str:
        return self.tokenizer.decode([t for t in tokens.tolist() if t != self.pad_id])


def prepare_task(cfg: Config) -> Task:
    """Everything that can fail cheaply, before any model is loaded."""
    check_model_name(cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    stop_ids = data_lib.stop_token_ids(tokenizer, cfg.data.sentence_end_texts)
    texts = data_lib.load_texts(cfg.data.source)
    queries = data_lib.build_queries(texts, tokenizer, set(stop_ids), cfg.data.query_length,
                                     cfg.data.min_query_length, cfg.data.eval_fraction)
    need_train = max(cfg.reward.num_labels, cfg.ppo.batch_size)
    if len(queries.train) < need_train:
        raise ConfigError(f"data.source={cfg.data.source} gives {len(queries.train)} train queries; "
                          f"reward.num_labels/ppo.batch_size need {need_train}")
    need_eval = max(cfg.run.eval_queries, cfg.reward.num_eval_labels)
    if len(queries.eval) < need_eval:
        raise ConfigError(f"data.source={cfg.data.source} gives {len(queries.eval)} held-out queries; "
                          f"run.eval_queries/reward.num_eval_labels need {need_eval} "
                          f"(raise data.eval_fraction or use more text)")
    return Task(tokenizer, stop_ids, len(tokenizer), queries)


# ---------------------------------------------------------------------------------------
# reward learning


def collect_comparisons(fleet: Fleet, task: Task, cfg: Config, queries: list[list[int]], labeler, what: str):
    """k samples of the current policy per query, truncated as at RL time, labelled best-of-k.
    Returns (comparisons, untruncated sample tokens, their trunk features)."""
    k, chunk = cfg.reward.k, 16 * len(fleet.actors.rollout)   # 64 samples per actor call
    stop = torch.tensor(task.stop_ids)
    comparisons, tokens, features, cant_tell = [], [], [], 0
    for i in range(0, len(queries), chunk):
        batch = fleet.gather(fleet.dispatch(task.pad(queries[i:i + chunk], cfg.data.query_length), k))
        s = batch.samples
        truncated = truncate_responses(s.response_tokens, stop, cfg.sampling.truncate_after, task.pad_id)
        tokens.append(torch.cat([s.query_tokens, s.response_tokens], 1))
        features.append(s.trunk_features)
        for j in range(s.query_tokens.shape[0] // k):
            rows = slice(j * k, (j + 1) * k)
            pick = labeler.pick([task.decode(r) for r in truncated[rows]])
            if pick.best is None:
                cant_tell += 1
                continue
            strict = sum(score == max(pick.scores) for score in pick.scores) == 1
            comparisons.append(Comparison(s.query_tokens[j * k], truncated[rows], pick.best,
                                          None if s.trunk_features is None else s.trunk_features[rows],
                                          int(batch.policy_versions[j * k]), strict))
        done = min(i + chunk, len(queries))
        if done == len(queries) or (i // chunk) % 4 == 3:
            log(f"labels ({what}): {done}/{len(queries)} queries, {len(comparisons)} usable")
    feats = None if features[0] is None else torch.cat(features)
    return comparisons, torch.cat(tokens), feats, cant_tell


def learn_reward(ray, fleet: Fleet, task, cfg, labeler) -> dict:
    train_q = task.queries.train[: cfg.reward.num_labels]
    eval_q = task.queries.eval[: cfg.reward.num_eval_labels]
    train_c, norm_tokens, norm_feats, ct = collect_comparisons(fleet, task, cfg, train_q, labeler, "train")
    eval_c, *_ = collect_comparisons(fleet, task, cfg, eval_q, labeler, "held-out")
    # Normalisation samples: untruncated samples of the initial policy (x ~ D, y ~ rho), as
    # the paper; the label collection's own samples serve, so none are drawn twice.
    n = min(cfg.reward.normalize_samples, norm_tokens.shape[0])
    norm_tokens, norm_feats = norm_tokens[:n], None if norm_feats is None else norm_feats[:n]
    trainer = fleet.actors.reward_trainer
    before = ray.get(trainer.normalise.remote(norm_tokens, norm_feats))
    if len(train_c) < cfg.reward.batch_size:
        raise RuntimeError(f"only {len(train_c)} of {len(train_q)} comparisons are usable ({ct} can't tell); "
                           f"raise reward.num_labels or set labeler.on_tie=random")
    log(f"reward model: training on {len(train_c)} comparisons ({ct} can't tell)")
    stats = ray.get(trainer.train.remote(train_c))
    after = ray.get(trainer.normalise.remote(norm_tokens, norm_feats))
    # Accuracy on held-out comparisons whose pick is strictly best (chance 1/k).
    stats.update(ray.get(trainer.evaluate.remote([c for c in eval_c if c.strict])))
    fleet.set_reward(trainer.weights.remote())
    stats.update({"reward/gain": after["gain"], "reward/bias": after["bias"], "reward/norm_samples": n,
                  "reward/gain_before": before["gain"], "reward/cant_tell": ct})
    log(f"reward model: loss {stats['reward/loss_first']:.3f} -> {stats['reward/loss_last']:.3f}, "
        f"held-out accuracy {stats['reward/eval_acc']:.3f} on {stats['reward/eval_n']} comparisons (chance {1 / cfg.reward.k:.2f})")
    return stats


# ---------------------------------------------------------------------------------------
# evaluation with the true labeler


def evaluate_policy(fleet: Fleet, task, cfg, labeler, queries) -> list[dict]:
    stop = torch.tensor(task.stop_ids)
    q = task.pad(queries, cfg.data.query_length)
    rows = []
    for i in range(0, q.shape[0], 32):
        batch = fleet.gather(fleet.dispatch(q[i:i + 32]))
        s = batch.samples
        truncated = truncate_responses(s.response_tokens, stop, cfg.sampling.truncate_after, task.pad_id)
        rewards = fleet.rewards(s.query_tokens, truncated, s.trunk_features)
        texts = [task.decode(r) for r in truncated]
        for qt, text, score, rw in zip(s.query_tokens, texts, labeler.score(texts), rewards.tolist()):
            rows.append({"query": task.decode(qt), "response": text, "true_score": score, "reward": rw})
    return rows


def mean_se(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def compare(before: list[dict], after: list[dict]) -> dict:
    b, a = [r["true_score"] for r in before], [r["true_score"] for r in after]
    wins = sum(1.0 if y > x else 0.5 if y == x else 0.0 for x, y in zip(b, a))
    (mb, sb), (ma, sa) = mean_se(b), mean_se(a)
    diffs = [y - x for x, y in zip(b, a)]
    md, sd = mean_se(diffs)
    return {"eval/true_score_initial": mb, "eval/true_score_initial_se": sb, "eval/true_score_final": ma,
            "eval/true_score_final_se": sa, "eval/true_score_gain": md, "eval/true_score_gain_se": sd,
            "eval/win_rate": wins / len(b), "eval/n": len(b)}


# ---------------------------------------------------------------------------------------
# PPO


def checkpoint(ray, fleet: Fleet, run_dir: Path, step: int, data_position: int, reward_stats: dict,
               online_labels=None) -> None:
    """Learner (weights, optimizer, KL, RNG), reward model, rollout RNGs, data position, and
    in online mode the label cursor, posting counters and fits."""
    state = {"step": step, "data_position": data_position, "reward_stats": reward_stats,
             "learner": ray.get(fleet.actors.learner.state_dict.remote()),
             # the scorer's weights: an online fit still running is not part of this step
             "reward_weights": fleet.reward_weights_now(),
             "rollout_rng": ray.get([a.rng_state.remote() for a in fleet.actors.rollout]),
             "online": online_labels.state() if online_labels else None}
    save_checkpoint(run_dir, step, state)


def restore(ray, fleet: Fleet, state: dict) -> None:
    """Put a checkpoint back into every actor; the rollout actors get the resumed weights."""
    actors = fleet.actors
    ray.get(actors.learner.load_state_dict.remote(state["learner"]))
    reward = ray.put(state["reward_weights"])
    ray.get(actors.reward_trainer.load_weights.remote(reward))
    fleet.set_reward(reward)
    fleet.broadcast(actors.learner.weights.remote(), state["learner"]["policy_version"], wait=True)
    if len(state["rollout_rng"]) == len(actors.rollout):
        ray.get([a.set_rng_state.remote(rng) for a, rng in zip(actors.rollout, state["rollout_rng"])])


def ppo_loop(ray, fleet: Fleet, task, cfg, labeler, metrics: MetricsLog, reward_stats: dict, run_dir: Path,
             start_step: int = 1, data_position: int = 0, stop: StopRequest | None = None,
             online_labels=None) -> None:
    num_updates = derived(cfg).num_updates
    stream = data_lib.QueryStream(task.queries.train, cfg.data.seed, position=data_position)
    inflight: deque = deque()   # (rollout refs, stream position after that batch)
    for step in range(start_step, num_updates + 1):
        t_step = time.perf_counter()
        # Sample: up to `staleness` batches run ahead of the learner (0 = synchronous).
        while len(inflight) < 1 + cfg.ppo.staleness:
            queries = task.pad(stream.next_batch(cfg.ppo.batch_size), cfg.data.query_length)
            inflight.append((fleet.dispatch(queries), stream.position))
        t0 = time.perf_counter()
        pending, consumed_position = inflight.popleft()
        batch = fleet.gather(pending)
        t_generate = time.perf_counter() - t0
        # Score: reference logprobs and r(x, y) with truncation and penalty.
        t0 = time.perf_counter()
        scored = fleet.score(batch)
        t_score = time.perf_counter() - t0
        # Update: PPO epochs on the learner.
        t0 = time.perf_counter()
        version_before = step - 1
        stats = ray.get(fleet.actors.learner.update.remote(scored))
        t_update = time.perf_counter() - t0
        # Broadcast: one object, read by every rollout actor.
        t0 = time.perf_counter()
        # With staleness > 0 the acks are not awaited: a rollout already queued on an actor
        # runs first, and the new weights apply to the one after it.
        fleet.broadcast(fleet.actors.learner.weights.remote(), stats["policy_version"], wait=cfg.ppo.staleness == 0)
        t_broadcast = time.perf_counter() - t0
        # Online: post the schedule's label tasks, start or collect reward-model fits.
        t0 = time.perf_counter()
        online_record = online_labels.after_update(step) if online_labels else {}
        t_online = time.perf_counter() - t0
        texts = [task.decode(r) for r in scored.truncated_responses]
        true_scores = labeler.score(texts)
        elapsed = time.perf_counter() - t_step
        record = {"step": step, **stats, "true_score": statistics.fmean(true_scores),
                  "policy_version_lag": version_before - int(batch.policy_versions.min()),
                  "reward_version": scored.reward_version, "samples_per_s": cfg.ppo.batch_size / elapsed,
                  "time/generate_s": t_generate, "time/generate_in_actor_s": batch.generate_s,
                  "time/score_s": t_score, "time/score_in_scorer_s": scored.score_s,
                  "time/update_s": t_update, "time/broadcast_s": t_broadcast,
                  "time/step_s": elapsed, "data_position": consumed_position,
                  "first_rollout_policy_version": int(batch.policy_versions.min()),
                  "faults/recovered": fleet.recovered}
        if online_labels:
            record.update({**online_record, "time/online_s": t_online})
        metrics.write(record)
        stopping = stop is not None and stop.requested
        if step % cfg.run.checkpoint_every == 0 or step == num_updates or stopping:
            # Prefetched batches are not consumed yet: the checkpoint's data position is
            # that of the last batch the learner used, so a resume regenerates them.
            checkpoint(ray, fleet, run_dir, step, consumed_position, reward_stats, online_labels)
        if stopping:
            raise Stopped(step)
        if step % cfg.run.log_every == 0 or step == num_updates:
            log(f"step {step}/{num_updates} | score {record['objective/score']:+.3f} | true {record['true_score']:+.3f} | "
                f"kl {record['objective/kl']:.2f} | beta {record['objective/kl_coef']:.4f} | "
                f"clipfrac {record['policy/clipfrac']:.3f} | lag {record['policy_version_lag']} | "
                f"{elapsed:.1f}s ({record['samples_per_s']:.2f} samples/s)")
        if online_labels and (step % cfg.run.log_every == 0 or step == num_updates):
            log(f"  labels {record['labels/read']}/{record['labels/posted'] + record['labels/validation_posted']} "
                f"read/posted (schedule: {record['labels/posted']}/{record['labels/due']} posted/due) | "
                f"reward v{record['reward_version']} | current beats initial "
                f"{record['online/current_beats_initial']:.2f} on {record['online/validation_n']}")
        if step == start_step:
            log(f"sample: {texts[0]!r}")


# ---------------------------------------------------------------------------------------


def _step_of(line: str):
    try:
        return json.loads(line)["step"]
    except ValueError:   # a line cut short by a kill mid-write
        return None


def keep_metrics_until(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint (and a torn last line), so no step
    appears twice and the file parses."""
    rows = [line for line in path.read_text().splitlines() if (n := _step_of(line)) is not None and n <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in rows))
    os.replace(tmp, path)


def train_and_evaluate(ray, fleet: Fleet, task: Task, cfg: Config, run_dir: Path, stop: StopRequest):
    """Reward learning (or a checkpoint), PPO, evaluation and the saved models."""
    labeler = make_labeler(cfg.labeler)
    eval_queries = task.queries.eval[: cfg.run.eval_queries]
    ckpt = latest_checkpoint(run_dir) if cfg.run.resume else None
    if cfg.run.resume and ckpt is None:
        raise ConfigError(f"run.resume: no complete checkpoint under {run_dir / 'checkpoints'}")
    online_labels = OnlineLabels(ray, fleet, task, cfg, run_dir, log) if cfg.online.enabled else None
    try:
        return _train_and_evaluate(ray, fleet, task, cfg, run_dir, stop, labeler, eval_queries, ckpt, online_labels)
    finally:
        if online_labels:
            online_labels.close()


def _train_and_evaluate(ray, fleet, task, cfg, run_dir, stop, labeler, eval_queries, ckpt, online_labels):
    actors = fleet.actors
    if ckpt is None:
        if online_labels:
            reward_stats = online_labels.start()
        else:
            reward_stats = learn_reward(ray, fleet, task, cfg, labeler)
        before = evaluate_policy(fleet, task, cfg, labeler, eval_queries)
        write_samples(run_dir / "samples_initial", "Initial policy on held-out queries", before)
        metrics = MetricsLog(run_dir / "metrics.jsonl")
        metrics.write({"step": 0, **reward_stats})
        start_step, position = 1, 0
    else:
        state = load_checkpoint(ckpt)
        restore(ray, fleet, state)
        if online_labels:
            online_labels.start(restored=state["online"])
        reward_stats, start_step, position = state["reward_stats"], state["step"] + 1, state["data_position"]
        before = [json.loads(line) for line in (run_dir / "samples_initial.jsonl").read_text().splitlines()]
        keep_metrics_until(run_dir / "metrics.jsonl", state["step"])
        metrics = MetricsLog(run_dir / "metrics.jsonl")
        log(f"resumed from {ckpt} (policy version {state['learner']['policy_version']}, data position {position})")
    stop.graceful = True
    try:
        ppo_loop(ray, fleet, task, cfg, labeler, metrics, reward_stats, run_dir, start_step, position, stop,
                 online_labels)
    finally:
        metrics.close()
        stop.graceful = False   # evaluation and saving are short: a late SIGTERM ends them at once
    online_summary = {}
    if online_labels:
        online_summary = online_labels.finish()
        reward_stats = online_labels.fits[-1]   # the reward model that scored the last batches

    after = evaluate_policy(fleet, task, cfg, labeler, eval_queries)
    write_samples(run_dir / "samples_final", "Final policy on held-out queries", after)
    rows = [m for m in read_metrics(run_dir / "metrics.jsonl") if m["step"] > 0]
    plot_metrics(rows, run_dir / "metrics.png", cfg.kl.target if cfg.kl.adaptive else None)
    ray.get(actors.learner.save.remote(str(run_dir / "policy")))
    ray.get(actors.reward_trainer.save.remote(str(run_dir / "reward_model"), dict(reward_stats)))
    for folder in ("policy", "reward_model"):   # each folder usable on its own
        task.tokenizer.save_pretrained(str(run_dir / folder))
    return before, after, reward_stats, rows, online_summary


def run(cfg: Config) -> dict:
    t_start = time.perf_counter()
    task = prepare_task(cfg)
    if cfg.online.enabled and cfg.online.ingest_address:
        check_ingest_service(cfg)
    run_dir = make_run_dir(cfg.run.output_dir, cfg.run.name)
    if not cfg.run.resume and (run_dir / "metrics.jsonl").exists():
        raise ConfigError(f"run folder {run_dir} already holds a run: pass --resume to continue it "
                          f"or choose another run.name")
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    log(f"run folder {run_dir}; {len(task.queries.train)} train / {len(task.queries.eval)} held-out queries")
    ray = connect(cfg)
    check_resources(ray, cfg.resources)
    t0 = time.perf_counter()
    actors = start_actors(ray, cfg, task.stop_ids, derived(cfg).num_updates)
    log(f"actors up in {time.perf_counter() - t0:.1f}s: {len(actors.rollout)} rollout, scorer, learner, reward trainer; "
        f"{describe_placement(actors.placement_group)}")
    stop = StopRequest(log).install()
    try:
        before, after, reward_stats, rows, online_summary = train_and_evaluate(ray, Fleet(ray, actors, log), task, cfg, run_dir, stop)
    except Stopped as e:
        log(f"stopped after step {e.step} (SIGTERM); checkpoint {latest_checkpoint(run_dir)} is complete: "
            f"continue with --resume run.name={run_dir.name}")
        return {"stopped_after_step": e.step, "run_dir": str(run_dir)}
    finally:
        stop.uninstall()
        stop_actors(ray, actors)
    summary = {**compare(before, after), **{k: reward_stats[k] for k in reward_stats if k.startswith("reward/")},
               "ppo/final_kl": rows[-1]["objective/kl"], "ppo/final_beta": rows[-1]["objective/kl_coef_next"],
               "ppo/mean_samples_per_s": statistics.fmean(r["samples_per_s"] for r in rows),
               **online_summary, "wall_s": time.perf_counter() - t_start, "run_dir": str(run_dir)}
    write_summary(run_dir / "summary.json", summary)
    log("summary: true score {:.3f} +/- {:.3f} -> {:.3f} +/- {:.3f} (gain {:+.3f} +/- {:.3f}), win rate {:.2f}, "
        "RM held-out accuracy {:.2f}, final KL {:.2f}, wall {:.0f}s".format(
            summary["eval/true_score_initial"], summary["eval/true_score_initial_se"], summary["eval/true_score_final"],
            summary["eval/true_score_final_se"], summary["eval/true_score_gain"], summary["eval/true_score_gain_se"],
            summary["eval/win_rate"], summary["reward/eval_acc"], summary["ppo/final_kl"], summary["wall_s"]))
    log(f"outputs in {run_dir}: config.yaml metrics.jsonl metrics.png samples_*.md policy/ reward_model/ summary.json")
    return summary
