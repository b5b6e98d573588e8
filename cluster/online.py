"""The online loop's driver side (PAPER.md section 4): labels keep flowing while PPO trains.

Before the first update, the initial policy's samples go to the ingest service as comparison
tasks and the first reward model is fit on their labels. After every update, the current
policy's samples are posted on the schedule (`online.labels`, `online.schedule`), with
validation tuples (2 samples of the initial policy, 2 of the current one); at evenly spaced
updates the reward trainer refits on all labels so far and the scorer switches to the new
version between PPO batches. PPO never waits on a labeler: it goes on with the reward model
it has, and the metrics count the labels actually received against the schedule.

The ingest service is either one the operator runs (`online.ingest_address`, its job token in
$RLHF_INGEST_JOB_TOKEN) or a child process of this job with its log in the run folder; the
simulated labeler is a process of its own that leases and labels through the service, as a
person's client does. Both children are restarted if they die.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from actors.label_requester import LabelRequester, TaskRequest
from rlhf_dist import data as data_lib
from rlhf_dist import online
from rlhf_dist.config import Config, ConfigError, derived

TOKEN_ENV = "RLHF_INGEST_JOB_TOKEN"
WINDOW = 32   # validation labels in the rolling "current beats initial" rate


def check_ingest_service(cfg: Config, timeout_s: float = 10.0) -> str:
    """The operator's ingest service (online.ingest_address) answers and takes the job token
    from $RLHF_INGEST_JOB_TOKEN; returns the token. Runs at launch, before Ray starts, so a
    wrong address or token fails in seconds with the fix in the message."""
    from rlhf_dist.ingest.client import IngestClient

    address = cfg.online.ingest_address
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        raise ConfigError(f"online.ingest_address={address}: set ${TOKEN_ENV} to the service's job token")
    with IngestClient(address, token) as client:
        try:
            client.wait_ready(timeout_s=timeout_s)
            client.stats()   # a job-only call: a wrong or labeler token fails here
        except Exception as err:   # TimeoutError, or IngestError (UNAUTHENTICATED, ...)
            raise ConfigError(f"online.ingest_address={address}: the ingest service is not reachable "
                              f"({err}); start it with `rlhf-dist ingest serve` or leave the address "
                              f"empty to let the job start one") from None
    return token


class OnlineLabels:
    def __init__(self, ray, fleet, task, cfg: Config, run_dir: Path, log):
        self.ray, self.fleet, self.task, self.cfg, self.log = ray, fleet, task, cfg, log
        self.o = cfg.online
        self.run_dir = run_dir
        self.num_updates = derived(cfg).num_updates
        self.fit_at = set(online.fit_steps(self.num_updates, self.o.num_fits))
        self.run_id = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in run_dir.name)
        self.server = self.labeler = None
        self.labeler_token = None
        self.address, self.job_token = self._ingest()
        self.trainer = fleet.actors.reward_trainer
        self.requester = None
        self.pending_post = None       # last post call (never waited on in the loop)
        self.pending_fit = None        # async fit in flight
        self.posted = {"train": 0, "validation": 0}   # task counters: task ids are run_id:kind:n
        self.label_stream = data_lib.QueryStream(task.queries.train, cfg.data.seed + 1)
        self.heldout_stream = data_lib.QueryStream(task.queries.eval, cfg.data.seed + 1)
        self.fits: list[dict] = []
        self.validation_seen = []      # (pick, positions, version) of validation labels read
        self.post_status: dict = {}

    # -- processes -------------------------------------------------------------------------
    def _ingest(self) -> tuple[str, str]:
        if self.o.ingest_address:   # reachable with this token: checked at launch (check_ingest_service)
            return self.o.ingest_address, os.environ[TOKEN_ENV]
        from rlhf_dist.ingest.process import LocalIngestServer

        job, self.labeler_token = secrets.token_hex(16), secrets.token_hex(16)
        self.server = LocalIngestServer(self.run_dir / "ingest", [job], [self.labeler_token],
                                        log_path=self.run_dir / "ingest.log").start()
        self.log(f"ingest service started as a child process on {self.server.address} "
                 f"(data {self.run_dir / 'ingest'}, log ingest.log)")
        return self.server.address, job

    def _start_labeler(self) -> None:
        if not (self.o.spawn_labeler and self.labeler_token):
            return
        lab = self.cfg.labeler
        cmd = [sys.executable, "-m", "rlhf_dist.ingest.cli", "simulate", "--address", self.address,
               "--labeler-id", "sim-vader", "--latency-s", str(self.o.labeler_latency_s),
               "--on-tie", lab.on_tie, "--tie-margin", str(lab.tie_margin), "--noise", str(lab.noise),
               "--seed", str(lab.seed), "--acks-file", str(self.run_dir / "labeler_acks.jsonl")]
        env = dict(os.environ, RLHF_INGEST_TOKEN=self.labeler_token)
        with open(self.run_dir / "labeler.log", "ab") as out:
            self.labeler = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)

    def _supervise(self) -> None:
        """Children that died (a crash, an OOM kill) come back; nothing acknowledged is lost."""
        if self.server is not None and self.server.proc.poll() is not None:
            self.log(f"ingest service exited ({self.server.proc.returncode}); restarting it on {self.address}")
            self.server.start()
        if self.labeler is not None and self.labeler.poll() is not None:
            self.log(f"simulated labeler exited ({self.labeler.returncode}); restarting it")
            self._start_labeler()

    def start(self, restored: dict | None = None) -> dict:
        """Actors and children up; then either the initial labels and first fit, or a resume."""
        c = self.cfg
        self.requester = self.ray.remote(LabelRequester).options(num_cpus=0).remote(
            c.model, c.sampling, self.task.stop_ids, self.address, self.job_token, self.task.pad_id)
        cursor = restored["trainer"]["cursor"] if restored else 0
        self.ray.get(self.trainer.attach_ingest.remote(self.address, self.job_token, c.data.query_length,
                                                       c.sampling.response_length, self.task.pad_id, cursor))
        self._start_labeler()
        if restored:
            self.posted = dict(restored["posted"])
            self.label_stream.position = restored["label_position"]
            self.heldout_stream.position = restored["heldout_position"]
            self.fits = list(restored["fits"])
            self.ray.get(self.trainer.load_online_state.remote(restored["trainer"]))
            self.ray.get(self.trainer.set_norm_samples.remote(restored["norm_tokens"], restored["norm_features"]))
            self.norm = (restored["norm_tokens"], restored["norm_features"])
            self.validation_seen = self.ray.get(self.trainer.validation_outcomes.remote())
            return self.fits[-1]
        first = online.labels_due(0, self.num_updates, self.o.labels, self.o.initial_fraction, self.o.schedule,
                                  self.o.num_fits)
        tokens, features = self._post_labels(first, collect_norm=c.reward.normalize_samples)
        self.norm = (tokens, features)
        self.ray.get(self.trainer.set_norm_samples.remote(tokens, features))
        self.log(f"online: {first} comparison tasks from the initial policy posted to {self.address}; "
                 f"waiting for their labels")
        self._wait_for_labels(first)
        return self._fit(0, wait=True)

    # -- posting ---------------------------------------------------------------------------
    def _post_labels(self, n: int, collect_norm: int = 0):
        """Sample k from the current policy for n queries and post them (held-out ones included)."""
        k, chunk = self.cfg.reward.k, 16 * len(self.fleet.actors.rollout)
        norm_tokens, norm_feats = [], []
        for start in range(0, n, chunk):
            idx = [self.posted["train"] + i for i in range(min(chunk, n - start))]
            kinds = [online.HELDOUT if online.is_heldout(i, self.o.heldout_fraction) else online.TRAIN for i in idx]
            queries = [(self.heldout_stream if kind == online.HELDOUT else self.label_stream).next_batch(1)[0]
                       for kind in kinds]
            batch = self.fleet.gather(self.fleet.dispatch(self.task.pad(queries, self.cfg.data.query_length), k))
            s = batch.samples
            if collect_norm and sum(t.shape[0] for t in norm_tokens) < collect_norm:
                norm_tokens.append(torch.cat([s.query_tokens, s.response_tokens], 1))
                norm_feats.append(s.trunk_features)
            requests = [TaskRequest(f"{self.run_id}:{kind}:{i}", kind, s.query_tokens[j * k],
                                    s.response_tokens[j * k:(j + 1) * k],
                                    batch.policy_versions[j * k:(j + 1) * k].tolist())
                        for j, (i, kind) in enumerate(zip(idx, kinds))]
            self.posted["train"] += len(idx)
            self.pending_post = self.requester.post.remote(requests)
            done = min(start + chunk, n)
            if n > 4 * chunk and (done == n or (start // chunk) % 4 == 3):   # the initial tasks take minutes
                self.log(f"online: sampled {done}/{n} comparison tasks")
        if not collect_norm:
            return None, None
        tokens = torch.cat(norm_tokens)[:collect_norm]
        feats = None if norm_feats[0] is None else torch.cat(norm_feats)[:collect_norm]
        return tokens, feats

    def _post_validation(self, n: int, step: int) -> None:
        """n tuples (2 samples of rho, 2 of the current policy) on fresh train queries."""
        if n == 0:
            return
        queries = self.task.pad(self.label_stream.next_batch(n), self.cfg.data.query_length)
        # One after the other: the two samplers overlapping on the same cores makes each wait at
        # its thread barriers (measured on 2 cores: 14.5 s per update for these 8 samples, 4.1 s in turn).
        pi = self.fleet.gather(self.fleet.dispatch(queries, 2))
        rho = self.ray.get(self.fleet.actors.scorer.sample_reference.remote(queries, 2, self.cfg.run.seed + step))
        requests = []
        for j in range(n):
            index = self.posted["validation"] + j
            order = online.validation_order(index, self.cfg.run.seed)   # where rho0, rho1, pi0, pi1 go
            rows = [rho.response_tokens[2 * j], rho.response_tokens[2 * j + 1],
                    pi.samples.response_tokens[2 * j], pi.samples.response_tokens[2 * j + 1]]
            versions = [0, 0] + pi.policy_versions[2 * j:2 * j + 2].tolist()
            responses, vs = [None] * 4, [0] * 4
            for src, dst in enumerate(order):
                responses[dst], vs[dst] = rows[src], versions[src]
            requests.append(TaskRequest(f"{self.run_id}:validation:{index}", online.VALIDATION, queries[j],
                                        torch.stack(responses), vs, current_positions=sorted(order[2:])))
        self.posted["validation"] += n
        self.pending_post = self.requester.post.remote(requests)

    # -- labels and fits -------------------------------------------------------------------
    def _wait_for_labels(self, n: int) -> None:
        deadline = time.monotonic() + self.o.wait_for_labels_s
        last_log = 0.0
        while True:
            counts = self.ray.get(self.trainer.pull.remote())
            self._supervise()
            if counts["labels/read"] >= n:
                return
            if time.monotonic() > deadline:
                self.log(f"online: {counts['labels/read']}/{n} labels after {self.o.wait_for_labels_s:.0f}s "
                         f"(online.wait_for_labels_s); going on with those")
                return
            if time.monotonic() - last_log > 30:
                self.log(f"online: {counts['labels/read']}/{n} labels received")
                last_log = time.monotonic()
            time.sleep(1.0)

    def _fit(self, step: int, wait: bool) -> dict | None:
        ref = self.trainer.fit.remote(self.o.retrain == "scratch")
        if wait:
            return self._fit_done(step, self.ray.get(ref))
        self.pending_fit = (step, ref)
        return None

    def _fit_done(self, step: int, stats: dict) -> dict:
        if stats.get("reward/skipped"):
            self.log(f"online: fit after update {step} skipped: fewer new labels than reward.batch_size")
            return self.fits[-1] if self.fits else stats
        self.fleet.set_reward(self.trainer.weights.remote())   # between PPO batches
        stats = {**stats, "reward/fit_after_update": step}
        self.fits.append(stats)
        self.log(f"online: reward model v{stats['reward/version']} fit on {stats['reward/fit_labels']} labels "
                 f"after update {step}: held-out accuracy {stats['reward/eval_acc']:.3f} "
                 f"on {stats['reward/eval_n']}")
        with open(self.run_dir / "reward_fits.jsonl", "a") as fh:
            fh.write(json.dumps(stats) + "\n")
        return stats

    def after_update(self, step: int) -> dict:
        """Between PPO batches: supervise, post what the schedule says, start or collect fits.
        Returns this step's online metrics."""
        self._supervise()
        if self.pending_fit is not None:
            fit_step, ref = self.pending_fit
            done, _ = self.ray.wait([ref], timeout=0)
            if done:
                self.pending_fit = None
                self._fit_done(fit_step, self.ray.get(ref))
        due = online.labels_due(step, self.num_updates, self.o.labels, self.o.initial_fraction, self.o.schedule,
                                self.o.num_fits)
        if due > self.posted["train"]:
            self._post_labels(due - self.posted["train"])
        self._post_validation(self.o.validation_per_update, step)
        if self.pending_post is not None:
            done, _ = self.ray.wait([self.pending_post], timeout=0)
            if done:
                self.post_status = self.ray.get(self.pending_post)
        counts = self.ray.get(self.trainer.pull.remote())
        if counts["labels/new_validation"]:
            self.validation_seen = self.ray.get(self.trainer.validation_outcomes.remote())
        if step in self.fit_at and self.pending_fit is None and step < self.num_updates:
            self._fit(step, wait=not self.o.async_fits)
        recent = self.validation_seen[-WINDOW:]
        return {"labels/due": due, "labels/posted": self.posted["train"],
                "labels/validation_posted": self.posted["validation"],
                "labels/post_backlog": self.post_status.get("backlog", 0),
                **{k: v for k, v in counts.items() if k != "labels/new_validation"},
                "online/current_beats_initial": online.current_beats_initial([v[0] for v in recent],
                                                                             [v[1] for v in recent]),
                "online/validation_n": len(recent),
                "reward/eval_acc_current": self.fits[-1]["reward/eval_acc"] if self.fits else None,
                "reward/fits": len(self.fits)}

    # -- end and checkpoints ---------------------------------------------------------------
    def state(self) -> dict:
        return {"posted": dict(self.posted), "label_position": self.label_stream.position,
                "heldout_position": self.heldout_stream.position, "fits": list(self.fits),
                "trainer": self.ray.get(self.trainer.online_state.remote()),
                "norm_tokens": self.norm[0], "norm_features": self.norm[1]}

    def finish(self) -> dict:
        """Wait (bounded) until every posted task is labeled, drain the cursor, write what the
        trainer consumed, stop the children. Returns the summary's online numbers."""
        if self.pending_fit is not None:
            step, ref = self.pending_fit
            self.pending_fit = None
            self._fit_done(step, self.ray.get(ref))
        status = self.ray.get(self.requester.flush.remote())
        total = status["posted"] + status["backlog"]
        self._wait_for_labels(total)
        counts = self.ray.get(self.trainer.pull.remote())
        consumed = self.ray.get(self.trainer.consumed_labels.remote())
        with open(self.run_dir / "labels_consumed.jsonl", "w") as fh:
            for sequence, task_id in consumed:
                fh.write(json.dumps({"sequence": sequence, "task_id": task_id}) + "\n")
        outcomes = self.ray.get(self.trainer.validation_outcomes.remote())
        thirds = {}
        for name, lo, hi in (("first", 0, 1 / 3), ("middle", 1 / 3, 2 / 3), ("last", 2 / 3, 1.01)):
            part = [v for v in outcomes if lo * self.num_updates <= v[2] < hi * self.num_updates]
            thirds[f"online/current_beats_initial_{name}_third"] = online.current_beats_initial(
                [v[0] for v in part], [v[1] for v in part])
        return {"online/tasks_posted": total, "online/labels_read": counts["labels/read"],
                "online/cant_tell": counts["labels/cant_tell"], "online/fits": len(self.fits),
                "online/eval_acc_per_fit": [f["reward/eval_acc"] for f in self.fits],
                "online/current_beats_initial": online.current_beats_initial([v[0] for v in outcomes],
                                                                             [v[1] for v in outcomes]),
                "online/validation_n": len(outcomes), **thirds}

    def close(self) -> None:
        if self.labeler is not None and self.labeler.poll() is None:
            self.labeler.send_signal(signal.SIGTERM)
            try:
                self.labeler.wait(15)
            except subprocess.TimeoutExpired:
                self.labeler.kill()
        if self.server is not None:
            self.server.stop()
        if self.requester is not None:
            self.ray.kill(self.requester)
