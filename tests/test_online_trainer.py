"""The online pieces against a real ingest server process, without Ray: the label requester
posts tasks, labels come back through the service, the reward trainer reads them by cursor,
refits, and a restarted trainer resumes from its cursor."""
import json
import threading

import torch

from actors.label_requester import LabelRequester, TaskRequest
from learner.reward_trainer import RewardTrainer
from rlhf_dist import online
from rlhf_dist.config import load_config
from rlhf_dist.ingest.client import IngestClient
from rlhf_dist.ingest.schema import Label
from rlhf_dist.ingest.sim_labeler import run_simulated_labeler
from rlhf_dist.labelers import VaderLabeler
from rlhf_dist.models import load_tokenizer
from tests.ingest_helpers import JOB_TOKEN, LABELER_TOKEN, ServerProcess

CFG = load_config("configs/tiny.yaml", ["reward.batch_size=4"])
Q, R = CFG.data.query_length, CFG.sampling.response_length


def _requests(tokenizer, pad, n, kind, start=0):
    g = torch.Generator().manual_seed(start)
    out = []
    for i in range(start, start + n):
        query = torch.cat([torch.full((4,), pad), torch.randint(10, 5000, (Q - 4,), generator=g)])
        responses = torch.randint(10, 5000, (4, R), generator=g)
        positions = [1, 2] if kind == online.VALIDATION else []
        out.append(TaskRequest(f"run:{kind}:{i}", kind, query, responses, [0, 3, 3, 0] if positions else [2] * 4,
                               current_positions=positions))
    return out


def test_requester_trainer_round_trip_and_resume(tmp_path):
    tokenizer = load_tokenizer(CFG.model)
    pad = len(tokenizer)
    stop_ids = [tokenizer.encode(".", add_special_tokens=False)[0]]
    server = ServerProcess(tmp_path / "ingest").start()
    try:
        requester = LabelRequester(CFG.model, CFG.sampling, stop_ids, server.address, JOB_TOKEN, pad)
        status = requester.post(_requests(tokenizer, pad, 10, online.TRAIN)
                                + _requests(tokenizer, pad, 2, online.HELDOUT, start=10)
                                + _requests(tokenizer, pad, 2, online.VALIDATION, start=12))
        assert status == {"posted": 14, "backlog": 0, "post_errors": 0}
        labeler = IngestClient(server.address, LABELER_TOKEN)
        # 9 train picks + 1 can't tell, both held-out, validation: one pick of pi (index 2), one of rho (0)
        labels = [Label(f"run:train:{i}", i % 4, "t") for i in range(9)]
        labels += [Label("run:train:9", -1, "t", cant_tell=True)]
        labels += [Label("run:heldout:10", 1, "t"), Label("run:heldout:11", 3, "t")]
        labels += [Label("run:validation:12", 2, "t"), Label("run:validation:13", 0, "t")]
        labeler.submit_labels(labels)

        trainer = RewardTrainer(CFG.model, CFG.reward, seed=0, torch_threads=1)
        trainer.attach_ingest(server.address, JOB_TOKEN, Q, R, pad)
        counts = trainer.pull()
        assert (counts["labels/read"], counts["labels/cursor"], counts["labels/cant_tell"]) == (14, 14, 1)
        assert (counts["labels/train"], counts["labels/heldout"], counts["labels/validation"]) == (9, 2, 2)
        assert counts["labels/new_validation"] == 2
        assert trainer.pull()["labels/read"] == 14                         # nothing twice
        # what the labeler saw is what the trainer trains on: the exact tokens come back
        stored = next(c for c in trainer.labels[online.TRAIN])
        task = next(iter(IngestClient(server.address, JOB_TOKEN).iter_labels(0))).task
        assert stored.query_tokens[-len(task.query_token_ids):].tolist() == task.query_token_ids
        assert [p for p, _, _ in trainer.validation_outcomes()] == [2, 0]
        beats = online.current_beats_initial(*zip(*[(p, pos) for p, pos, _ in trainer.validation_outcomes()]))
        assert beats == 0.5                                                # pi once, rho once

        trainer.set_norm_samples(torch.randint(10, 5000, (16, Q + R)), None)
        first = trainer.fit(from_scratch=True)
        assert first["reward/version"] == 1 and first["reward/fit_labels"] == 11   # 9 train + 2 validation
        assert first["reward/eval_n"] == 2                                 # held-out only, never trained on

        labeler.submit_labels([Label("run:train:0", 0, "t")])              # a retry: stored once
        requester.post(_requests(tokenizer, pad, 4, online.TRAIN, start=20))
        labeler.submit_labels([Label(f"run:train:{i}", 1, "t") for i in range(20, 24)])
        cont = trainer.fit(from_scratch=False)
        assert cont["reward/version"] == 2 and cont["reward/fit_labels"] == 4   # only the new ones
        scratch = trainer.fit(from_scratch=True)
        assert scratch["reward/version"] == 3 and scratch["reward/fit_labels"] == 15

        # a restarted job passes its saved cursor: the labels before it are read again, once
        resumed = RewardTrainer(CFG.model, CFG.reward, seed=0, torch_threads=1)
        assert resumed.attach_ingest(server.address, JOB_TOKEN, Q, R, pad, cursor=14) == 14
        assert resumed.consumed_labels() == trainer.consumed_labels()[:14]
        assert resumed.pull()["labels/read"] == 18
        assert [s for s, _ in resumed.consumed_labels()] == list(range(18))
    finally:
        server.terminate()


def test_simulated_labeler_process_loop_labels_every_task(tmp_path):
    server = ServerProcess(tmp_path / "ingest").start()
    try:
        job = IngestClient(server.address, JOB_TOKEN)
        from tests.ingest_helpers import make_task

        tasks = [make_task(f"t{i:03d}") for i in range(20)]
        tasks[3].samples = ["What a wonderful, lovely day!", "It is a day.", "A terrible, awful day.", "Day."]
        job.post_tasks(tasks)
        stop = threading.Event()
        acks_file = tmp_path / "acks.jsonl"
        with IngestClient(server.address, LABELER_TOKEN) as client:
            n = run_simulated_labeler(client, VaderLabeler(on_tie="cant_tell"), "sim", stop, batch=8,
                                      max_labels=20, acks_file=str(acks_file))
        assert n == 20
        acks = [json.loads(line) for line in acks_file.read_text().splitlines()]
        assert sorted(a["task_id"] for a in acks) == sorted(t.task_id for t in tasks)
        assert sorted(a["sequence"] for a in acks) == list(range(20))
        by_id = {item.task.task_id: item.label for item in job.iter_labels(0)}
        assert by_id["t003"].chosen_index == 0                            # the most positive sample
        assert by_id["t000"].cant_tell                                    # identical neutral samples tie
        assert job.stats()["pending"] == 0
    finally:
        server.terminate()
