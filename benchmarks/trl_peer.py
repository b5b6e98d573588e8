"""Hugging Face TRL's PPO trainer (trl 1.12.0, the last release with one) on a given workload.

Runs in its own virtual environment (see benchmarks/README.md), started by bench_trl.py as
a subprocess; imports nothing from this repository. Prints one JSON line: seconds per PPO
update (TRL's "step") and samples/s.

Setup, as TRL's own PPO example: policy and reference = AutoModelForCausalLM, value model and
reward model = AutoModelForSequenceClassification(num_labels=1), all four from the same
folder, full fine-tuning of policy and value model, fp32 on CPU, no stop token (exactly
`response_length` tokens are generated), rollouts in one forward batch.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--queries", required=True, help="JSON list of equal-length token id lists")
    p.add_argument("--response-length", type=int, default=24)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--minibatches", type=int, default=4)
    p.add_argument("--updates", type=int, default=3, help="PPO updates in total (the first is a warm-up)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--temperature", type=float, default=0.7)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import datasets
    import transformers
    import trl
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                              TrainerCallback)
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tok = AutoTokenizer.from_pretrained(args.model)
    tok.padding_side = "left"
    queries = json.load(open(args.queries))
    ds = datasets.Dataset.from_dict({"input_ids": queries})

    def lm():
        return AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)

    def head():
        return AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=1, dtype=torch.float32)

    stamps = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            stamps.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    out = tempfile.mkdtemp(prefix="trl-ppo-")
    cfg = PPOConfig(output_dir=out, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
                    num_mini_batches=args.minibatches, num_ppo_epochs=args.epochs,
                    response_length=args.response_length, temperature=args.temperature,
                    total_episodes=args.batch * args.updates, local_rollout_forward_batch_size=args.batch,
                    learning_rate=5e-5, num_sample_generations=0, report_to="none", use_cpu=True,
                    bf16=False, fp16=False, save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0,
                    stop_token=None, missing_eos_penalty=None, dataloader_num_workers=0)
    trainer = PPOTrainer(args=cfg, processing_class=tok, model=lm(), ref_model=lm(), reward_model=head(),
                         value_model=head(), train_dataset=ds, eval_dataset=ds.select(range(args.batch)),
                         callbacks=[Clock()])
    trainer.train()
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    timed = steps[1:] or steps
    timed_sorted = sorted(timed)
    med = timed_sorted[len(timed_sorted) // 2] if len(timed) % 2 else sum(timed_sorted[len(timed) // 2 - 1: len(timed) // 2 + 1]) / 2
    print(json.dumps({"step_s": steps, "median_step_s": med, "samples_per_s": args.batch / med,
                      "threads": torch.get_num_threads(), "versions": {
                          "trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
                          "datasets": datasets.__version__}, "args": vars(args)}))


if __name__ == "__main__":
    main()
