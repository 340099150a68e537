"""Fine-tuning on the source language with transformers' Trainer.

The Trainer runs AdamW with a linear schedule, dynamic padding and
length-grouped sampling. Model selection happens in a callback: after each
epoch the model is scored on the source-language dev split with the same
evaluation path and metric as the test sets, and the best epoch's weights
are kept. When a task has no dev split, the last epoch is kept and the
training record states that.

Under torchrun or accelerate launch every rank trains with
DistributedDataParallel. ``FineTuneConfig.batch_size`` stays the global
batch, so each rank takes ``batch_size / world_size`` examples per step and
the recipe means the same on one device or several. Rank 0 computes the dev
score and broadcasts it, so every rank keeps the same epoch.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset
from transformers import (
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    ProgressCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from . import distributed
from .encoders import EncodedSplit

logger = logging.getLogger(__name__)

# Loss is logged about this many times per epoch.
LOG_POINTS_PER_EPOCH = 5


@dataclass(frozen=True)
class FineTuneConfig:
    """Resolved fine-tuning hyperparameters of one run."""

    learning_rate: float
    epochs: float
    batch_size: int
    max_seq_length: int
    warmup_ratio: float
    weight_decay: float
    seed: int
    gradient_accumulation_steps: int = 1


@dataclass
class FineTuneResult:
    """Record of one fine-tuning: dev score per epoch, the chosen epoch and the loss log."""

    selection: str
    best_epoch: int | None
    dev_scores: list[float] = field(default_factory=list)
    loss_log: list[dict] = field(default_factory=list)
    train_examples: int = 0
    steps: int = 0
    world_size: int = 1


class EncodedDataset(Dataset):
    """An :class:`EncodedSplit` as a torch dataset of padded-later features."""

    def __init__(self, encoded: EncodedSplit):
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, index: int) -> dict:
        item = {"input_ids": self.encoded.input_ids[index], "labels": self.encoded.labels[index]}
        if self.encoded.token_type_ids is not None:
            item["token_type_ids"] = self.encoded.token_type_ids[index]
        return item


class DevSelectionCallback(TrainerCallback):
    """Score the dev split after each epoch and keep the best weights in memory."""

    def __init__(self, evaluate_dev: Callable[[torch.nn.Module], float] | None, result: FineTuneResult):
        self.evaluate_dev = evaluate_dev
        self.result = result
        self.best_score = -math.inf
        self.best_state: dict | None = None

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        epoch = int(round(state.epoch or 0))
        if self.evaluate_dev is None:
            return
        score = distributed.compute_on_main(lambda: self.evaluate_dev(model))
        self.result.dev_scores.append(score)
        logger.info("epoch %d: dev score %.4f", epoch, score)
        if score > self.best_score:
            self.best_score = score
            self.result.best_epoch = epoch
            self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.result.loss_log.append({"step": state.global_step, "epoch": round(state.epoch or 0, 3), "loss": logs["loss"]})


def _per_device_batch_size(batch_size: int, world_size: int) -> int:
    if batch_size % world_size:
        raise ValueError(
            f"Batch size {batch_size} cannot be split evenly across {world_size} processes. "
            f"Pass a --batch-size that is a multiple of {world_size}."
        )
    return batch_size // world_size


class LoggingProgressCallback(ProgressCallback):
    """Trainer progress bars, with the loss lines sent to ``logging`` instead of stdout."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            values = {key: (f"{value:.4g}" if isinstance(value, float) else value) for key, value in logs.items() if key != "total_flos"}
            logger.info("step %d: %s", state.global_step, values)


def fine_tune(
    model,
    tokenizer,
    train: EncodedSplit,
    config: FineTuneConfig,
    work_dir: Path,
    token_task: bool,
    evaluate_dev: Callable[[torch.nn.Module], float] | None,
):
    """Fine-tune ``model`` in place and return it with the best dev epoch loaded."""
    result = FineTuneResult(
        selection="best dev epoch" if evaluate_dev is not None else "last epoch (the task has no dev split)",
        best_epoch=None,
        train_examples=len(train),
        world_size=distributed.world_size(),
    )
    per_device_batch_size = _per_device_batch_size(config.batch_size, result.world_size)
    steps_per_epoch = max(1, math.ceil(len(train) / (config.batch_size * config.gradient_accumulation_steps)))
    total_steps = math.ceil(steps_per_epoch * config.epochs)
    args = TrainingArguments(
        output_dir=str(work_dir),
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        per_device_train_batch_size=per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        warmup_steps=int(config.warmup_ratio * total_steps),
        weight_decay=config.weight_decay,
        lr_scheduler_type="linear",
        optim="adamw_torch",
        seed=config.seed,
        data_seed=config.seed,
        train_sampling_strategy="group_by_length",
        logging_steps=max(1, steps_per_epoch // LOG_POINTS_PER_EPOCH),
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        disable_tqdm=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        # Without it, accelerate picks MPI on CPU when torch was built with MPI.
        ddp_backend=distributed.backend() if distributed.is_distributed() else None,
    )
    collator = DataCollatorForTokenClassification(tokenizer) if token_task else DataCollatorWithPadding(tokenizer)
    callback = DevSelectionCallback(evaluate_dev, result)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=EncodedDataset(train),
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[callback],
    )
    # ProgressCallback prints each log dict to stdout through tqdm, where it
    # would mix with the tables that a run prints at the end.
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(LoggingProgressCallback())
    output = trainer.train()
    result.steps = output.global_step
    if callback.best_state is not None:
        model.load_state_dict(callback.best_state)
        logger.info("kept epoch %s (dev score %.4f)", result.best_epoch, callback.best_score)
    else:
        result.best_epoch = int(math.ceil(config.epochs))
    return model, result
