"""Task definitions: the typed, validated form of one ``tasks/*.yaml`` file.

A task file is the only place that knows where a task's data lives, how its
files are laid out, which labels it has and how it is scored. This module
parses such a file into a :class:`TaskSpec`, rejects mistakes with messages
that name the file and the key, and keeps a registry of the known tasks.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

TASK_TYPES = (
    "sequence_classification",
    "sequence_pair_classification",
    "token_classification",
)

# Metrics each task type can report. The main metric must be one of them.
METRICS_BY_TASK_TYPE = {
    "sequence_classification": ("accuracy", "macro_f1"),
    "sequence_pair_classification": ("accuracy", "macro_f1"),
    "token_classification": ("f1", "f1_strict", "precision", "recall", "accuracy"),
}

SPLITS = ("train", "dev", "test")
FILE_FORMATS = ("tsv", "csv", "conll", "text_labels")

BUILTIN_TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"
PACKAGED_TASKS_DIR = Path(__file__).resolve().parent / "task_files"

DEFAULT_MISSING_LABELS = ("-", "-1", "")


class TaskFileError(ValueError):
    """A task file that is missing, unreadable or invalid."""


@dataclass(frozen=True)
class TrainingDefaults:
    """Fine-tuning hyperparameters recorded in the task file."""

    learning_rate: float = 2e-5
    epochs: float = 3.0
    batch_size: int = 32
    max_seq_length: int = 128
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0


@dataclass(frozen=True)
class LocalFile:
    """One file pattern of a split in the local source.

    ``path`` and ``labels_path`` may contain ``{lang}`` (the language code)
    and ``{language}`` (the name from ``language_names``).
    """

    path: str
    format: str
    languages: tuple[str, ...] | None = None
    fields: dict[str, str] = field(default_factory=dict)
    labels_path: str | None = None


@dataclass(frozen=True)
class LocalSource:
    """Files under a local data root, per split."""

    splits: dict[str, tuple[LocalFile, ...]]
    language_names: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HubSource:
    """A dataset on the Hugging Face Hub with one config per language."""

    dataset: str
    config: str = "{lang}"
    revision: str | None = None
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "dev": "validation", "test": "test"})
    fields: dict[str, str] = field(default_factory=dict)
    language_names: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskSpec:
    """Everything xbench knows about one task, read from its task file."""

    name: str
    version: int
    task_type: str
    text_fields: tuple[str, ...]
    label_field: str
    labels: tuple[str, ...]
    metrics: tuple[str, ...]
    main_metric: str
    source_language: str
    target_languages: tuple[str, ...]
    training: TrainingDefaults
    local: LocalSource | None
    hub: HubSource | None
    description: str = ""
    label_aliases: dict[str, str] = field(default_factory=dict)
    missing_labels: tuple[str, ...] = DEFAULT_MISSING_LABELS
    path: Path | None = None

    @property
    def languages(self) -> tuple[str, ...]:
        """The source language followed by the target languages."""
        return (self.source_language,) + tuple(
            lang for lang in self.target_languages if lang != self.source_language
        )

    @property
    def is_token_task(self) -> bool:
        return self.task_type == "token_classification"

    def with_languages(self, source: str | None, targets: list[str] | None) -> "TaskSpec":
        """Return a copy with another source language or target list."""
        from dataclasses import replace

        return replace(
            self,
            source_language=source or self.source_language,
            target_languages=tuple(targets) if targets is not None else self.target_languages,
        )


# --------------------------------------------------------------------------
# Parsing and validation
# --------------------------------------------------------------------------

_TOP_KEYS = {
    "name", "version", "description", "task_type", "text_fields", "label_field",
    "labels", "label_aliases", "missing_labels", "metrics", "main_metric",
    "source_language", "target_languages", "training", "sources",
}
_REQUIRED_KEYS = (
    "name", "task_type", "text_fields", "label_field", "labels", "metrics",
    "main_metric", "source_language", "target_languages", "sources",
)
_TRAINING_KEYS = {f for f in TrainingDefaults.__dataclass_fields__}
_HUB_KEYS = {"dataset", "config", "revision", "splits", "fields", "language_names"}
_LOCAL_KEYS = {"splits", "language_names"}
_LOCAL_FILE_KEYS = {"path", "format", "languages", "fields", "labels_path"}


class _Checker:
    """Collects validation errors with the file and key path of each."""

    def __init__(self, path: Path | str):
        self.path = path
        self.errors: list[str] = []

    def error(self, key: str, message: str) -> None:
        self.errors.append(f"{self.path}: {key}: {message}")

    def unknown_keys(self, mapping: dict, allowed: set[str], prefix: str) -> None:
        for key in mapping:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
                self.error(f"{prefix}{key}", f"unknown key.{suggestion} Allowed keys: {', '.join(sorted(allowed))}.")

    def expect(self, value: Any, kind: type | tuple[type, ...], key: str) -> bool:
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            self.error(key, f"expected a number, got {value!r}.")
            return False
        if not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            self.error(key, f"expected {names}, got {type(value).__name__} {value!r}.")
            return False
        return True

    def raise_if_errors(self) -> None:
        if self.errors:
            raise TaskFileError("Invalid task file:\n  " + "\n  ".join(self.errors))


def is_valid_language_code(code: str) -> bool:
    """Check a BCP-47 tag such as ``de``, ``zh-Hans`` or ``sr-Latn``."""
    import langcodes

    return isinstance(code, str) and bool(code) and langcodes.tag_is_valid(code)


def _string_list(checker: _Checker, raw: Any, key: str) -> tuple[str, ...]:
    if not checker.expect(raw, list, key):
        return ()
    values = []
    for index, item in enumerate(raw):
        if not isinstance(item, (str, int)) or isinstance(item, bool):
            checker.error(f"{key}[{index}]", f"expected a string, got {item!r}.")
            continue
        values.append(str(item))
    return tuple(values)


def _string_map(checker: _Checker, raw: Any, key: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not checker.expect(raw, dict, key):
        return {}
    return {str(k): str(v) if v is not None else "" for k, v in raw.items()}


def _parse_training(checker: _Checker, raw: Any) -> TrainingDefaults:
    if raw is None:
        return TrainingDefaults()
    if not checker.expect(raw, dict, "training"):
        return TrainingDefaults()
    checker.unknown_keys(raw, _TRAINING_KEYS, "training.")
    values = {}
    for key in _TRAINING_KEYS & set(raw):
        kind = int if key in ("batch_size", "max_seq_length") else (int, float)
        if checker.expect(raw[key], kind, f"training.{key}"):
            if raw[key] < 0 or (key != "warmup_ratio" and key != "weight_decay" and raw[key] == 0):
                checker.error(f"training.{key}", f"must be positive, got {raw[key]}.")
            values[key] = raw[key]
    return TrainingDefaults(**values)


def _parse_hub(checker: _Checker, raw: Any) -> HubSource | None:
    if raw is None:
        return None
    if not checker.expect(raw, dict, "sources.hub"):
        return None
    checker.unknown_keys(raw, _HUB_KEYS, "sources.hub.")
    if "dataset" not in raw:
        checker.error("sources.hub.dataset", "missing. Give the hub dataset id, e.g. facebook/xnli.")
        return None
    splits = _string_map(checker, raw.get("splits"), "sources.hub.splits") or None
    return HubSource(
        dataset=str(raw["dataset"]),
        config=str(raw.get("config", "{lang}")) if raw.get("config") is not None else "",
        revision=str(raw["revision"]) if raw.get("revision") else None,
        splits=splits or {"train": "train", "dev": "validation", "test": "test"},
        fields=_string_map(checker, raw.get("fields"), "sources.hub.fields"),
        language_names=_string_map(checker, raw.get("language_names"), "sources.hub.language_names"),
    )


def _parse_local(checker: _Checker, raw: Any) -> LocalSource | None:
    if raw is None:
        return None
    if not checker.expect(raw, dict, "sources.local"):
        return None
    checker.unknown_keys(raw, _LOCAL_KEYS, "sources.local.")
    splits_raw = raw.get("splits")
    if not checker.expect(splits_raw, dict, "sources.local.splits"):
        return None
    checker.unknown_keys(splits_raw, set(SPLITS), "sources.local.splits.")
    splits: dict[str, tuple[LocalFile, ...]] = {}
    for split, entries in splits_raw.items():
        key = f"sources.local.splits.{split}"
        if isinstance(entries, (str, dict)):
            entries = [entries]
        if not checker.expect(entries, list, key):
            continue
        files = []
        for index, entry in enumerate(entries):
            entry_key = f"{key}[{index}]"
            if not checker.expect(entry, dict, entry_key):
                continue
            checker.unknown_keys(entry, _LOCAL_FILE_KEYS, f"{entry_key}.")
            if "path" not in entry:
                checker.error(f"{entry_key}.path", "missing. Give a path pattern relative to the data root.")
                continue
            file_format = entry.get("format")
            if file_format not in FILE_FORMATS:
                hint = difflib.get_close_matches(str(file_format), FILE_FORMATS, n=1)
                suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
                checker.error(f"{entry_key}.format", f"unknown format {file_format!r}.{suggestion} Use one of: {', '.join(FILE_FORMATS)}.")
                continue
            if file_format == "text_labels" and "labels_path" not in entry:
                checker.error(f"{entry_key}.labels_path", "missing. The text_labels format needs the path of the line-aligned labels file.")
                continue
            languages = entry.get("languages")
            files.append(
                LocalFile(
                    path=str(entry["path"]),
                    format=file_format,
                    languages=_string_list(checker, languages, f"{entry_key}.languages") if languages is not None else None,
                    fields=_string_map(checker, entry.get("fields"), f"{entry_key}.fields"),
                    labels_path=str(entry["labels_path"]) if entry.get("labels_path") else None,
                )
            )
        splits[split] = tuple(files)
    return LocalSource(
        splits=splits,
        language_names=_string_map(checker, raw.get("language_names"), "sources.local.language_names"),
    )


def parse_task(raw: Any, path: Path | str = "<task>") -> TaskSpec:
    """Validate the parsed YAML of a task file and build its :class:`TaskSpec`."""
    checker = _Checker(path)
    if not isinstance(raw, dict):
        raise TaskFileError(f"{path}: the task file must be a YAML mapping, got {type(raw).__name__}.")
    checker.unknown_keys(raw, _TOP_KEYS, "")
    for key in _REQUIRED_KEYS:
        if key not in raw:
            checker.error(key, "missing required key.")
    checker.raise_if_errors()

    task_type = raw["task_type"]
    if task_type not in TASK_TYPES:
        hint = difflib.get_close_matches(str(task_type), TASK_TYPES, n=1)
        suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
        checker.error("task_type", f"unknown task type {task_type!r}.{suggestion} Use one of: {', '.join(TASK_TYPES)}.")
        checker.raise_if_errors()

    text_fields = _string_list(checker, raw["text_fields"], "text_fields")
    expected_fields = {"sequence_classification": 1, "sequence_pair_classification": 2, "token_classification": 1}[task_type]
    if text_fields and len(text_fields) != expected_fields:
        checker.error("text_fields", f"a {task_type} task has {expected_fields} text field(s), got {len(text_fields)}: {list(text_fields)}.")

    labels = _string_list(checker, raw["labels"], "labels")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        checker.error("labels", f"label names must be unique; repeated: {duplicates}.")
    if len(labels) < 2:
        checker.error("labels", f"a task needs at least two labels, got {list(labels)}.")
    if task_type == "token_classification":
        for label in labels:
            if label != "O" and not (label[:2] in ("B-", "I-") and len(label) > 2):
                checker.error("labels", f"tag {label!r} is not IOB2. Tags must be O, B-TYPE or I-TYPE.")

    aliases = _string_map(checker, raw.get("label_aliases"), "label_aliases")
    for alias, target in aliases.items():
        if target not in labels:
            checker.error(f"label_aliases.{alias}", f"maps to {target!r}, which is not one of the labels {list(labels)}.")
    missing = raw.get("missing_labels")
    missing_labels = _string_list(checker, missing, "missing_labels") if missing is not None else DEFAULT_MISSING_LABELS
    for value in missing_labels:
        if value in labels or value in aliases:
            checker.error("missing_labels", f"{value!r} is also a label or an alias; a value cannot mean both.")

    metrics = _string_list(checker, raw["metrics"], "metrics")
    allowed_metrics = METRICS_BY_TASK_TYPE[task_type]
    for metric in metrics:
        if metric not in allowed_metrics:
            hint = difflib.get_close_matches(metric, allowed_metrics, n=1)
            suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
            checker.error("metrics", f"metric {metric!r} does not exist for {task_type}.{suggestion} Available: {', '.join(allowed_metrics)}.")
    main_metric = str(raw["main_metric"])
    if main_metric not in metrics:
        checker.error("main_metric", f"{main_metric!r} is not listed in metrics {list(metrics)}.")

    source = str(raw["source_language"])
    targets = _string_list(checker, raw["target_languages"], "target_languages")
    for index, code in enumerate((source,) + targets):
        key = "source_language" if index == 0 else f"target_languages[{index - 1}]"
        if not is_valid_language_code(code):
            checker.error(key, f"{code!r} is not a valid BCP-47 language code (for example 'de', 'zh', 'sr-Latn').")
    repeated = sorted({code for code in targets if targets.count(code) > 1})
    if repeated:
        checker.error("target_languages", f"languages listed twice: {repeated}.")

    sources = raw["sources"]
    hub = local = None
    if checker.expect(sources, dict, "sources"):
        checker.unknown_keys(sources, {"hub", "local"}, "sources.")
        hub = _parse_hub(checker, sources.get("hub"))
        local = _parse_local(checker, sources.get("local"))
        if hub is None and local is None:
            checker.error("sources", "declare at least one of 'hub' or 'local'.")

    version = raw.get("version", 1)
    checker.expect(version, int, "version")
    training = _parse_training(checker, raw.get("training"))
    checker.raise_if_errors()
    return TaskSpec(
        name=str(raw["name"]),
        version=int(version),
        description=str(raw.get("description", "")),
        task_type=task_type,
        text_fields=text_fields,
        label_field=str(raw["label_field"]),
        labels=labels,
        label_aliases=aliases,
        missing_labels=missing_labels,
        metrics=metrics,
        main_metric=main_metric,
        source_language=source,
        target_languages=targets,
        training=training,
        hub=hub,
        local=local,
        path=Path(path) if not isinstance(path, Path) else path,
    )


def load_task_file(path: Path | str) -> TaskSpec:
    """Read and validate one task file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaskFileError(f"{path}: task file not found.") from None
    except UnicodeDecodeError as error:
        raise TaskFileError(f"{path}: not valid UTF-8 at byte {error.start}. Save the task file as UTF-8.") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise TaskFileError(f"{path}: invalid YAML: {error}") from None
    return parse_task(raw, path)


# --------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------


def default_task_dirs() -> list[Path]:
    """Folders searched for built-in task files.

    A source checkout has ``tasks/`` beside the package. A wheel install
    carries the same files inside the package as ``xbench/task_files``.
    """
    return [d for d in (BUILTIN_TASKS_DIR, PACKAGED_TASKS_DIR) if d.is_dir()][:1]


class TaskRegistry:
    """Task specs by name, read from one or more folders of task files."""

    def __init__(self, task_dirs: list[Path] | None = None):
        self.tasks: dict[str, TaskSpec] = {}
        for folder in task_dirs if task_dirs is not None else default_task_dirs():
            for path in sorted(Path(folder).glob("*.yaml")):
                spec = load_task_file(path)
                if spec.name in self.tasks:
                    logger.info("Task %s from %s replaces the one from %s", spec.name, path, self.tasks[spec.name].path)
                self.tasks[spec.name] = spec

    def names(self) -> list[str]:
        return sorted(self.tasks)

    def get(self, name: str) -> TaskSpec:
        """Return a task by name, suggesting close names for an unknown one."""
        if name in self.tasks:
            return self.tasks[name]
        close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise KeyError(f"Unknown task {name!r}.{hint} Known tasks: {', '.join(self.names())}. Run 'xbench tasks list' to see them.")
