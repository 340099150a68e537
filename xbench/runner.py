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

Steps 2 to 4 for one task, model and seed are one unit of work,
:func:`run_unit`. :func:`run` runs the units one after another in this
process. :mod:`xbench.launchers` can instead send each unit to a Ray
cluster. Under torchrun or accelerate launch every rank runs :func:`run`:
the ranks fine-tune together, share out the languages to score, and only
rank 0 writes files (see :mod:`xbench.distributed`).

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
from typing import Callable, Collection

from . import distributed
from . import leaderboard as leaderboard_module
from .data import Example, MissingLanguageError, SplitData, make_data_source, subsample
from .cache import cached_encode, default_cache_dir
from .encoders import EncodedSplit, encode, decode_predictions
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
    # Tokenised splits are cached here across runs; None means default_cache_dir().
    cache_dir: Path | None = None
    use_cache: bool = True

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
        self._model_provenance: dict | None = None
        self._tokenizer_sha256: str | None = None

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

    def model_provenance(self) -> dict:
        """Return the model's id or folder hash, computed once per unit because hashing a large folder takes seconds."""
        if self._model_provenance is None:
            self._model_provenance = model_provenance(self.ref)
        return self._model_provenance

    def tokenizer_sha256(self) -> str:
        """Return the tokenizer's hash, computed once per unit because hashing a large vocabulary takes a second."""
        if self._tokenizer_sha256 is None:
            self._tokenizer_sha256 = tokenizer_hash(self.tokenizer)
        return self._tokenizer_sha256

    def checkpoint_dir(self) -> Path:
        digest = config_hash(self.training_identity())
        return self.run_dir / "checkpoints" / self.task.name / self.ref.slug / f"seed-{self.seed}-{digest}"

    # -- steps ------------------------------------------------------------

    def plan(self) -> list[LanguagePlan]:
        """Languages whose results still need computing under the overwrite policy."""
        identity = self.result_identity()
        expected_hash = config_hash(identity)
        # The stored copy went through JSON, so compare against the same form.
        identity = json.loads(json.dumps(identity, default=str))
        plans = []
        for language in self.task.languages:
            if self.store.should_compute(self.task.name, self.ref.slug, self.seed, language, expected_hash, self.config.overwrite, identity):
                plans.append(LanguagePlan(language, language == self.task.source_language))
            else:
                logger.info("%s %s seed %d %s: result exists, skipped", self.task.name, self.ref.display_name, self.seed, language)
        return plans

    def load_split(self, language: str, split: str, limit: int | None) -> SplitData:
        data = self.source.load(self.task, language, split)
        data.examples = subsample(data.examples, limit)
        return data

    def encode_split(self, data: SplitData, desc: str) -> EncodedSplit:
        """Tokenise a split, or read it from the tokenisation cache when enabled."""
        max_length = self.train_config.max_seq_length
        if not self.config.use_cache:
            return encode(self.task.is_token_task, self.tokenizer, data.examples, self.label2id, max_length, desc=desc)
        data_hashes = data.file_hashes or str(data.hub_revision)
        cache_dir = self.config.cache_dir or default_cache_dir()
        return cached_encode(self.task, self.tokenizer, data.examples, self.label2id, max_length, data_hashes, cache_dir, desc=desc)

    def prepare_model(self) -> None:
        """Fine-tune on the source language, or reuse a finished fine-tuning."""
        self.tokenizer = load_tokenizer(self.ref)
        checkpoint = self.checkpoint_dir()
        info_path = checkpoint / CHECKPOINT_INFO
        # Rank 0 decides, so all ranks take the same branch even if the file
        # appears on a shared file system while they check.
        if distributed.broadcast_from_main(info_path.is_file()):
            logger.info("%s: reusing the finished fine-tuning in %s", self.task.name, checkpoint)
            self.model = load_checkpoint(checkpoint, self.task).to(distributed.device())
            self.fine_tune_info = json.loads(info_path.read_text(encoding="utf-8"))
            self.train_labels = self.fine_tune_info.get("train_label_counts", {})
            self.train_files = self.fine_tune_info.get("train_files", {})
            return
        train = self.load_split(self.task.source_language, "train", self.config.max_train_examples)
        self.train_labels = dict(Counter(example.label for example in train.examples)) if not self.task.is_token_task else {}
        self.train_files = train.file_hashes or {"hub_revision": train.hub_revision}
        if self.config.skip_training:
            self.model = load_checkpoint(Path(self.ref.path), self.task).to(distributed.device())
            self.fine_tune_info = {"selection": "none: --skip-training evaluates the model as given"}
            return

        started = time.time()
        model = build_model(self.ref, self.task, self.tokenizer, self.seed)
        self.check_max_length(model)
        logger.info(
            "%s: fine-tuning %s on %d %s examples (seed %d)",
            self.task.name, self.ref.display_name, len(train.examples), self.task.source_language, self.seed,
        )
        encoded_train = self.encode_split(train, desc=f"tokenize {self.task.name} train")
        evaluate_dev = self._dev_evaluator()
        model, result = fine_tune(
            model, self.tokenizer, encoded_train, self.train_config, checkpoint / "trainer",
            self.task.is_token_task, evaluate_dev,
        )
        self.fine_tune_info = {
            **dataclasses.asdict(result),
            "train_files": self.train_files,
            "train_examples": len(train.examples),
            # Kept for the majority-class baseline when the checkpoint is reused.
            "train_label_counts": self.train_labels,
            "wall_time_s": round(time.time() - started, 2),
            "identity": self.training_identity(),
        }
        # Every rank stores rank 0's record, so the result records agree.
        self.fine_tune_info = distributed.broadcast_from_main(self.fine_tune_info)
        if distributed.is_main():
            model.save_pretrained(checkpoint)
            self.tokenizer.save_pretrained(checkpoint)
            # Written last: its presence marks a finished fine-tuning.
            atomic_write_json(info_path, self.fine_tune_info)
        distributed.barrier()
        self.model = model

    def check_max_length(self, model) -> None:
        """Raise ValueError if the model has fewer position embeddings than --max-seq-length needs."""
        positions = getattr(model.config, "max_position_embeddings", None)
        requested = self.train_config.max_seq_length
        if positions is not None and requested > positions:
            raise ValueError(
                f"--max-seq-length {requested} is longer than the {positions} positions of {self.ref.display_name}; "
                f"pass --max-seq-length {positions} or less"
            )

    def _dev_evaluator(self):
        try:
            dev = self.load_split(self.task.source_language, "dev", self.config.max_dev_examples)
        except MissingLanguageError as error:
            logger.warning("%s has no dev split (%s); the last epoch will be kept", self.task.name, error)
            return None
        encoded_dev = self.encode_split(dev, desc=f"tokenize {self.task.name} dev")
        gold = [list(example.label) if self.task.is_token_task else example.label for example in dev.examples]

        def evaluate_dev(model) -> float:
            logits = predict_logits(model, encoded_dev, self.tokenizer.pad_token_id, desc="dev")
            predictions = decode_predictions(encoded_dev, logits, self.id2label)
            return score_task(self.task, gold, predictions)[self.task.main_metric]

        return evaluate_dev

    def evaluate_language(self, plan: LanguagePlan) -> dict:
        """Score one language's test split and store the result."""
        return self.store_result(*self.score_language(plan))

    def score_language(self, plan: LanguagePlan) -> tuple[dict, list[str]]:
        """Score one language's test split. Return its record and prediction lines, not yet written."""
        started = time.time()
        test = self.load_split(plan.language, "test", self.config.max_eval_examples)
        examples = test.examples
        encoded = self.encode_split(test, desc=f"tokenize {plan.language}")
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
        predictions_file = self._predictions_path(plan.language)
        prediction_lines = self._prediction_lines(examples, gold, predictions)
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
                **self.model_provenance(),
                "tokenizer_sha256": self.tokenizer_sha256(),
                "data_files_sha256": test.file_hashes,
                "hub_revision": test.hub_revision,
                "train_data": self.train_files,
                "config": self.result_identity(),
                "rank": distributed.rank(),
                "world_size": distributed.world_size(),
            },
            "config_hash": config_hash(self.result_identity()),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wall_time_s": round(time.time() - started, 3),
        }
        return record, prediction_lines

    def store_result(self, record: dict, prediction_lines: list[str]) -> dict:
        """Write one language's predictions and then its result record."""
        atomic_write_text(self.run_dir / record["predictions_file"], "\n".join(prediction_lines) + "\n")
        path = self.store.write(record)
        main = record["main_metric"]
        low, high = record["ci95"][main]
        logger.info(
            "%s %s %s: %s = %.4f (95%% CI %.4f-%.4f, n=%d) -> %s",
            self.task.name, self.ref.display_name, record["language"], main, record["scores"][main], low, high, record["n_examples"], path,
        )
        return record

    def _predictions_path(self, language: str) -> Path:
        return self.run_dir / "predictions" / self.task.name / self.ref.slug / f"seed-{self.seed}" / f"{language}.jsonl"

    def _prediction_lines(self, examples: list[Example], gold: list, predictions: list) -> list[str]:
        lines = []
        for example, gold_label, predicted in zip(examples, gold, predictions):
            row = {"uid": example.uid, "gold": gold_label, "pred": predicted}
            if self.task.is_token_task:
                row["words"] = list(example.texts)
            lines.append(json.dumps(row, ensure_ascii=False))
        return lines

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


@dataclass
class RunSetup:
    """Shared state of one run's units: the resolved config and tasks, the store and the data source."""

    config: RunConfig
    tasks: list[TaskSpec]
    store: ResultStore
    source: object
    environment: dict

    def task_run(self, task: TaskSpec, model_spec: str, seed: int) -> TaskRun:
        return TaskRun(task, parse_model_spec(model_spec), seed, self.config, self.store, self.source, self.environment)

    def task_runs(self) -> list[TaskRun]:
        """Return every (task, model, seed) unit, in the order that :func:`run` runs them."""
        return [self.task_run(task, spec, seed) for spec in self.config.models for task in self.tasks for seed in self.config.seeds]


def setup_run(config: RunConfig, check: bool = True) -> RunSetup:
    """Apply the preset, resolve the tasks and open the store. ``check`` validates the tasks and their data first."""
    config = config.apply_preset()
    tasks = resolve_tasks(config)
    if check:
        check_tasks(tasks, config.data_dir)
    return RunSetup(config, tasks, ResultStore(config.output), make_data_source(config.data_dir), environment_provenance())


def start_run(config: RunConfig) -> RunSetup:
    """Set up a run, then create its folder and write config.json (on rank 0 only)."""
    setup = setup_run(config)
    if distributed.is_main():
        setup.config.output.mkdir(parents=True, exist_ok=True)
        atomic_write_json(setup.config.output / "config.json", setup.config.to_json())
        logger.info("Run folder: %s", setup.config.output)
    return setup


def run_unit(
    task_run: TaskRun,
    skip_languages: Collection[str] = (),
    on_stored: Callable[[dict], None] | None = None,
) -> list[str]:
    """Fine-tune and score one task, model and seed: the unit of work of every launcher.

    Results that the store already contains (under the overwrite policy) and the
    languages in ``skip_languages`` are not scored again. ``on_stored`` is
    called with each record right after it is written. Under torchrun the
    languages are dealt out round-robin across the ranks, and rank 0 gathers
    and stores each round's results. Returns the languages stored by this
    call on rank 0, and an empty list on the other ranks.
    """
    name = f"{task_run.task.name} {task_run.ref.display_name} seed {task_run.seed}"
    task_run.check_languages_available()
    plans = distributed.compute_on_main(task_run.plan)
    plans = [plan for plan in plans if plan.language not in skip_languages]
    if not plans:
        logger.info("%s: every result exists, nothing to do", name)
        return []
    task_run.prepare_model()
    stored = []
    ranks = distributed.world_size()
    position = distributed.rank()
    for start in range(0, len(plans), ranks):
        round_plans = plans[start:start + ranks]
        scored = task_run.score_language(round_plans[position]) if position < len(round_plans) else None
        for item in distributed.gather_to_main(scored):
            if item is None:
                continue
            record = task_run.store_result(*item)
            stored.append(record["language"])
            if on_stored is not None:
                on_stored(record)
    return stored


def run(config: RunConfig) -> list[dict]:
    """Run every task x model x seed in this process, then write results.json and the leaderboard.

    Under torchrun or accelerate launch every rank calls it. Rank 0 returns
    the records, and the other ranks return an empty list.
    """
    with distributed.process_group():
        distributed.quiet_other_ranks()
        setup = start_run(config)
        output, banner = setup.config.output, setup.config.banner
        for task_run in setup.task_runs():
            stored = run_unit(task_run)
            if stored:
                write_summary(output, banner=banner)
        if not distributed.is_main():
            return []
        return write_summary(output, banner=banner, echo=True)


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
