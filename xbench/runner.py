"""The zero-shot transfer run, step by step.

For every task, model and seed:

1. resolve the languages and the fine-tuning configuration;
2. skip the results that the store already contains (the overwrite policy);
3. fine-tune once on the source language's train split, choosing the epoch
   by the source-language dev score, or reuse the checkpoint of a finished
   fine-tuning with the same configuration;
4. score the test split of the source language and of every target language,
   writing each result and its predictions as soon as it is scored;
5. after all tasks, write results.json and the leaderboard tables.

Researchers can call :func:`run` from Python with a :class:`RunConfig`. The
command line only builds that config.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import leaderboard as leaderboard_module
from .data import Example, MissingLanguageError, SplitData, make_data_source, subsample
from .encoders import encode, decode_predictions
from .metrics import check_word_counts, score_task, task_bootstrap_ci, task_majority_baseline
from .models import (
    CHECKPOINT_INFO,
    ModelRef,
    build_model,
    label_maps,
    load_checkpoint,
    load_tokenizer,
    model_provenance,
    parse_model_spec,
    tokenizer_hash,
)
from .predict import predict_logits
from .results import (
    ResultStore,
    atomic_write_json,
    atomic_write_text,
    config_hash,
    environment_provenance,
    flat_results,
    load_records,
)
from .tasks import TaskRegistry, TaskSpec, default_task_dirs
from .training import FineTuneConfig, fine_tune
from .validate import check_tasks

logger = logging.getLogger(__name__)

# Settings each preset fills in unless the command line sets them.
PRESETS = {
    # Sized so that the three built-in tasks with a MiniLM-sized model finish
    # in well under 25 minutes on a 2-core CPU.
    "quick": {
        "max_train_examples": 2000,
        "max_eval_examples": 500,
        "max_dev_examples": 300,
        "epochs": 3,
        "learning_rate": 5e-5,
    },
}


@dataclass
class RunConfig:
    """Everything one run needs. ``None`` means: take the task file's default."""

    tasks: list[str]
    models: list[str]
    output: Path
    data_dir: Path | None = None
    source_lang: str | None = None
    target_langs: list[str] | None = None
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    max_dev_examples: int | None = None
    epochs: float | None = None
    learning_rate: float | None = None
    batch_size: int | None = None
    max_seq_length: int | None = None
    seeds: list[int] = field(default_factory=lambda: [1])
    overwrite: str = "skip"
    task_dirs: list[Path] | None = None
    skip_training: bool = False
    preset: str | None = None
    banner: str | None = None

    def apply_preset(self) -> "RunConfig":
        if self.preset is None or self.preset not in PRESETS:
            return self
        updates = {key: value for key, value in PRESETS[self.preset].items() if getattr(self, key) is None}
        return dataclasses.replace(self, **updates)

    def to_json(self) -> dict:
        payload = dataclasses.asdict(self)
        return json.loads(json.dumps(payload, default=str))


@dataclass
class LanguagePlan:
    language: str
    is_source: bool


def _fine_tune_config(task: TaskSpec, config: RunConfig, seed: int) -> FineTuneConfig:
    defaults = task.training
    return FineTuneConfig(
        learning_rate=config.learning_rate if config.learning_rate is not None else defaults.learning_rate,
        epochs=config.epochs if config.epochs is not None else defaults.epochs,
        batch_size=config.batch_size or defaults.batch_size,
        max_seq_length=config.max_seq_length or defaults.max_seq_length,
        warmup_ratio=defaults.warmup_ratio,
        weight_decay=defaults.weight_decay,
        seed=seed,
    )


class TaskRun:
    """One task for one model and seed: fine-tune once, score every language."""

    def __init__(self, task: TaskSpec, ref: ModelRef, seed: int, config: RunConfig, store: ResultStore, source, environment: dict):
        self.task = task
        self.ref = ref
        self.seed = seed
        self.config = config
        self.store = store
        self.source = source
        self.environment = environment
        self.train_config = _fine_tune_config(task, config, seed)
        self.id2label, self.label2id = label_maps(task)
        self.tokenizer = None
        self.model = None
        self.train_labels: dict[str, int] = {}
        self.fine_tune_info: dict = {}
        self.train_files: dict[str, str] = {}

    # -- identities -------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        return self.config.output

    def training_identity(self) -> dict:
        return {
            "task": self.task.name,
            "task_version": self.task.version,
            "labels": list(self.task.labels),
            "model": self.ref.spec,
            "source_language": self.task.source_language,
            "max_train_examples": self.config.max_train_examples,
            "max_dev_examples": self.config.max_dev_examples,
            "skip_training": self.config.skip_training,
            **dataclasses.asdict(self.train_config),
        }

    def result_identity(self) -> dict:
        return {**self.training_identity(), "max_eval_examples": self.config.max_eval_examples, "split": "test"}

    def checkpoint_dir(self) -> Path:
        digest = config_hash(self.training_identity())
        return self.run_dir / "checkpoints" / self.task.name / self.ref.slug / f"seed-{self.seed}-{digest}"

    # -- steps ------------------------------------------------------------

    def plan(self) -> list[LanguagePlan]:
        """Languages whose results still need computing under the overwrite policy."""
        expected_hash = config_hash(self.result_identity())
        plans = []
        for language in self.task.languages:
            if self.store.should_compute(self.task.name, self.ref.slug, self.seed, language, expected_hash, self.config.overwrite):
                plans.append(LanguagePlan(language, language == self.task.source_language))
            else:
                logger.info("%s %s seed %d %s: result exists, skipped", self.task.name, self.ref.display_name, self.seed, language)
        return plans

    def load_split(self, language: str, split: str, limit: int | None) -> SplitData:
        data = self.source.load(self.task, language, split)
        data.examples = subsample(data.examples, limit)
        return data

    def prepare_model(self) -> None:
        """Fine-tune on the source language, or reuse a finished fine-tuning."""
        self.tokenizer = load_tokenizer(self.ref)
        checkpoint = self.checkpoint_dir()
        info_path = checkpoint / CHECKPOINT_INFO
        if info_path.is_file():
            logger.info("%s: reusing the finished fine-tuning in %s", self.task.name, checkpoint)
            self.model = load_checkpoint(checkpoint, self.task)
            self.fine_tune_info = json.loads(info_path.read_text(encoding="utf-8"))
            self.train_labels = self.fine_tune_info.get("train_label_counts", {})
            self.train_files = self.fine_tune_info.get("train_files", {})
            return
        train = self.load_split(self.task.source_language, "train", self.config.max_train_examples)
        self.train_labels = dict(Counter(example.label for example in train.examples)) if not self.task.is_token_task else {}
        self.train_files = train.file_hashes or {"hub_revision": train.hub_revision}
        if self.config.skip_training:
            self.model = load_checkpoint(Path(self.ref.path), self.task)
            self.fine_tune_info = {"selection": "none: --skip-training evaluates the model as given"}
            return

        started = time.time()
        model = build_model(self.ref, self.task, self.tokenizer, self.seed)
        logger.info(
            "%s: fine-tuning %s on %d %s examples (seed %d)",
            self.task.name, self.ref.display_name, len(train.examples), self.task.source_language, self.seed,
        )
        encoded_train = encode(self.task.is_token_task, self.tokenizer, train.examples, self.label2id, self.train_config.max_seq_length, desc=f"tokenize {self.task.name} train")
        evaluate_dev = self._dev_evaluator()
        model, result = fine_tune(
            model, self.tokenizer, encoded_train, self.train_config, checkpoint / "trainer",
            self.task.is_token_task, evaluate_dev,
        )
        model.save_pretrained(checkpoint)
        self.tokenizer.save_pretrained(checkpoint)
        self.fine_tune_info = {
            **dataclasses.asdict(result),
            "train_files": self.train_files,
            "train_examples": len(train.examples),
            # Kept for the majority-class baseline when the checkpoint is reused.
            "train_label_counts": self.train_labels,
            "wall_time_s": round(time.time() - started, 2),
            "identity": self.training_identity(),
        }
        # Written last: its presence marks a finished fine-tuning.
        atomic_write_json(info_path, self.fine_tune_info)
        self.model = model

    def _dev_evaluator(self):
        try:
            dev = self.load_split(self.task.source_language, "dev", self.config.max_dev_examples)
        except MissingLanguageError as error:
            logger.warning("%s has no dev split (%s); the last epoch will be kept", self.task.name, error)
            return None
        encoded_dev = encode(self.task.is_token_task, self.tokenizer, dev.examples, self.label2id, self.train_config.max_seq_length, desc=f"tokenize {self.task.name} dev")
        gold = [list(example.label) if self.task.is_token_task else example.label for example in dev.examples]

        def evaluate_dev(model) -> float:
            logits = predict_logits(model, encoded_dev, self.tokenizer.pad_token_id, desc="dev")
            predictions = decode_predictions(encoded_dev, logits, self.id2label)
            return score_task(self.task, gold, predictions)[self.task.main_metric]

        return evaluate_dev

    def evaluate_language(self, plan: LanguagePlan) -> dict:
        """Score one language's test split and store the result."""
        started = time.time()
        test = self.load_split(plan.language, "test", self.config.max_eval_examples)
        examples = test.examples
        encoded = encode(self.task.is_token_task, self.tokenizer, examples, self.label2id, self.train_config.max_seq_length, desc=f"tokenize {plan.language}")
        logits = predict_logits(self.model, encoded, self.tokenizer.pad_token_id, desc=f"{self.task.name} {plan.language}")
        predictions = decode_predictions(encoded, logits, self.id2label)
        gold = [list(example.label) if self.task.is_token_task else example.label for example in examples]
        if self.task.is_token_task:
            check_word_counts(gold, predictions, f"{self.task.name} {plan.language}")
        scores = score_task(self.task, gold, predictions)
        main = self.task.main_metric
        interval = task_bootstrap_ci(self.task, main, gold, predictions)
        majority_label, baseline = task_majority_baseline(self.task, gold, self.train_labels)
        if scores[main] <= baseline:
            logger.warning(
                "%s %s: %s %.4f is at or below the majority-class baseline %.4f (always %r)",
                self.task.name, plan.language, main, scores[main], baseline, majority_label,
            )
        predictions_file = self._write_predictions(plan.language, examples, gold, predictions)
        diagnostics = {
            "n_examples": len(examples),
            "n_rows_in_file": test.n_total,
            "n_missing_label_excluded": test.n_missing_label,
            "n_empty_text": test.n_empty_text,
            **{key: round(value, 6) for key, value in encoded.stats.items()},
            "majority_baseline": baseline,
            "majority_label": majority_label,
            "at_or_below_baseline": scores[main] <= baseline,
        }
        record = {
            "task": self.task.name,
            "task_type": self.task.task_type,
            "task_version": self.task.version,
            "model": self.ref.spec,
            "model_name": self.ref.display_name,
            "model_slug": self.ref.slug,
            "seed": self.seed,
            "language": plan.language,
            "source_language": self.task.source_language,
            "is_source": plan.is_source,
            "split": "test",
            "main_metric": main,
            "scores": scores,
            "ci95": {main: list(interval)},
            "n_examples": len(examples),
            "diagnostics": diagnostics,
            "predictions_file": str(predictions_file.relative_to(self.run_dir)),
            "fine_tuning": {k: v for k, v in self.fine_tune_info.items() if k not in ("identity",)},
            "provenance": {
                **self.environment,
                **model_provenance(self.ref),
                "tokenizer_sha256": tokenizer_hash(self.tokenizer),
                "data_files_sha256": test.file_hashes,
                "hub_revision": test.hub_revision,
                "train_data": self.train_files,
                "config": self.result_identity(),
            },
            "config_hash": config_hash(self.result_identity()),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wall_time_s": round(time.time() - started, 3),
        }
        path = self.store.write(record)
        logger.info(
            "%s %s %s: %s = %.4f (95%% CI %.4f-%.4f, n=%d) -> %s",
            self.task.name, self.ref.display_name, plan.language, main, scores[main], interval[0], interval[1], len(examples), path,
        )
        return record

    def _write_predictions(self, language: str, examples: list[Example], gold: list, predictions: list) -> Path:
        path = self.run_dir / "predictions" / self.task.name / self.ref.slug / f"seed-{self.seed}" / f"{language}.jsonl"
        lines = []
        for example, gold_label, predicted in zip(examples, gold, predictions):
            row = {"uid": example.uid, "gold": gold_label, "pred": predicted}
            if self.task.is_token_task:
                row["words"] = list(example.texts)
            lines.append(json.dumps(row, ensure_ascii=False))
        atomic_write_text(path, "\n".join(lines) + "\n")
        return path

    def check_languages_available(self) -> None:
        """Fail before training when a declared language has no test file."""
        files_for = getattr(self.source, "files_for", None)
        if files_for is None:
            return
        for language in self.task.languages:
            files_for(self.task, language, "test")
        files_for(self.task, self.task.source_language, "train")


def resolve_tasks(config: RunConfig) -> list[TaskSpec]:
    registry = TaskRegistry(default_task_dirs() + list(config.task_dirs or []))
    tasks = []
    for name in config.tasks:
        task = registry.get(name)
        targets = config.target_langs
        if targets is not None:
            targets = [lang for lang in targets if lang != (config.source_lang or task.source_language)]
        tasks.append(task.with_languages(config.source_lang, targets))
    return tasks


def run(config: RunConfig) -> list[dict]:
    """Run every task x model x seed, then write results.json and the leaderboard."""
    config = config.apply_preset()
    config.output.mkdir(parents=True, exist_ok=True)
    tasks = resolve_tasks(config)
    check_tasks(tasks, config.data_dir)
    source = make_data_source(config.data_dir)
    store = ResultStore(config.output)
    environment = environment_provenance()
    atomic_write_json(config.output / "config.json", config.to_json())
    logger.info("Run folder: %s", config.output)

    for spec in config.models:
        ref = parse_model_spec(spec)
        for task in tasks:
            for seed in config.seeds:
                task_run = TaskRun(task, ref, seed, config, store, source, environment)
                task_run.check_languages_available()
                plans = task_run.plan()
                if not plans:
                    logger.info("%s %s seed %d: every result exists, nothing to do", task.name, ref.display_name, seed)
                    continue
                task_run.prepare_model()
                for plan in plans:
                    task_run.evaluate_language(plan)
                write_summary(config.output, banner=config.banner)
    return write_summary(config.output, banner=config.banner, echo=True)


def write_summary(run_dir: Path, banner: str | None = None, echo: bool = False) -> list[dict]:
    """Rewrite results.json and the leaderboard files from the store."""
    records = load_records([run_dir / "store"]) if (run_dir / "store").is_dir() else []
    atomic_write_json(run_dir / "results.json", flat_results(records))
    if not records:
        return records
    board = leaderboard_module.build_leaderboard(records)
    markdown = leaderboard_module.to_markdown(board)
    if banner:
        markdown = f"> {banner}\n\n{markdown}"
    atomic_write_text(run_dir / "leaderboard.md", markdown)
    atomic_write_text(run_dir / "leaderboard.csv", leaderboard_module.to_csv(board))
    if echo:
        print(markdown)
        print(f"Results: {run_dir / 'results.json'}")
    return records
