"""Task definitions: the typed, validated form of one ``tasks/*.yaml`` file.

A task file is the only place that knows where a task's data lives, how its
files are laid out, which labels it has and how it is scored. This module
parses such a file into a :class:`TaskSpec`, rejects mistakes with messages
that name the file and the key, and keeps a registry of the known tasks.

A task file may start from another task with ``extends: NAME`` and change
only some keys. The two files are merged key by key: mappings merge
recursively, and any other value (lists included) replaces the inherited one.
A file whose ``name`` equals its ``extends`` overrides the earlier task of
that name, for example a built-in one.
"""

from __future__ import annotations

import copy
import difflib
import logging
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import plugins
from .readers import BUILTIN_FORMATS

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
FILE_FORMATS = BUILTIN_FORMATS

BUILTIN_TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"
PACKAGED_TASKS_DIR = Path(__file__).resolve().parent / "task_files"

DEFAULT_MISSING_LABELS = ("-", "-1", "")


class TaskFileError(ValueError):
    """A task file that is missing, unreadable or invalid.

    ``errors`` lists one message per problem, each naming the file and key.
    """

    def __init__(self, message: str, errors: list[str] | None = None):
        super().__init__(message)
        self.errors = list(errors) if errors else [message]


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
    and ``{language}`` (the name from ``language_names``). ``format`` is one
    of :data:`FILE_FORMATS` or the dotted path of a loader function
    ``(path, fields, labels_path) -> list[Row]``.
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
class MetricSpec:
    """One entry of a task's ``metrics`` list.

    ``kind`` is ``builtin`` (computed by :mod:`xbench.metrics`), ``function``
    (``target`` is the dotted path of a function ``(gold, pred) -> float``)
    or ``evaluate`` (``target`` is an evaluate module's local path or hub id,
    and ``key`` picks the value from the dict its ``compute`` returns).
    """

    name: str
    kind: str
    target: str = ""
    key: str | None = None
    compute_args: dict[str, Any] = field(default_factory=dict)
    label_ids: bool = False


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
    metric_specs: tuple[MetricSpec, ...] = ()
    extends: str | None = None

    @property
    def custom_metrics(self) -> tuple[MetricSpec, ...]:
        """The metrics that user code or an evaluate module computes."""
        return tuple(spec for spec in self.metric_specs if spec.kind != "builtin")

    def metric_spec(self, name: str) -> MetricSpec | None:
        """Return the metric entry called ``name``, or None."""
        for spec in self.metric_specs:
            if spec.name == name:
                return spec
        return None

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
    "source_language", "target_languages", "training", "sources", "extends",
}
_REQUIRED_KEYS = (
    "name", "task_type", "text_fields", "label_field", "labels", "metrics",
    "main_metric", "source_language", "target_languages", "sources",
)
_TRAINING_KEYS = {f for f in TrainingDefaults.__dataclass_fields__}
_HUB_KEYS = {"dataset", "config", "revision", "splits", "fields", "language_names"}
_LOCAL_KEYS = {"splits", "language_names"}
_LOCAL_FILE_KEYS = {"path", "format", "languages", "fields", "labels_path"}
_METRIC_KEYS = {"name", "function", "evaluate", "key", "compute_args", "label_ids"}
_PATH_PLACEHOLDERS = ("lang", "language")

# Every built-in metric name, so a custom metric cannot hide one.
BUILTIN_METRICS = frozenset(name for names in METRICS_BY_TASK_TYPE.values() for name in names)


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
            raise TaskFileError("Invalid task file:\n  " + "\n  ".join(self.errors), self.errors)


def is_valid_language_code(code: str) -> bool:
    """Check a BCP-47 tag such as ``de``, ``zh-Hans`` or ``sr-Latn``."""
    return language_code_problem(code) is None


def language_code_problem(code: object) -> str | None:
    """Return why ``code`` is not a BCP-47 language tag, or None when it is one.

    Tags are ISO 639 language codes with optional subtags, e.g. ``de``,
    ``zh-Hans`` (script) or ``pt-BR`` (region), separated by ``-``.
    """
    import langcodes

    if not isinstance(code, str) or not code:
        return f"{code!r} is not a language code; write a BCP-47 tag such as 'de', 'zh-Hans' or 'sr-Latn'."
    if "_" in code:
        fixed = code.replace("_", "-")
        return f"{code!r} uses '_'; BCP-47 separates subtags with '-', so write {fixed!r}."
    if not langcodes.tag_is_valid(code):
        return (
            f"{code!r} is not a valid BCP-47 language code. Use an ISO 639 code with an optional script or "
            "region subtag, for example 'de', 'zh', 'zh-Hans' or 'sr-Latn'."
        )
    return None


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


def _check_path_pattern(checker: _Checker, pattern: str, key: str) -> None:
    """Reject placeholders other than {lang} and {language}, and stray braces."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None]
    except ValueError as error:
        checker.error(key, f"invalid path pattern {pattern!r}: {error}. Write '{{{{' and '}}}}' for literal braces.")
        return
    for name in names:
        if name not in _PATH_PLACEHOLDERS:
            hint = difflib.get_close_matches(name, _PATH_PLACEHOLDERS, n=1)
            suggestion = f" Did you mean '{{{hint[0]}}}'?" if hint else ""
            checker.error(key, f"unknown placeholder {{{name}}} in {pattern!r}.{suggestion} Use {{lang}} (the language code) or {{language}} (its name from language_names).")


def _parse_file_format(checker: _Checker, entry: dict, entry_key: str) -> str | None:
    file_format = entry.get("format")
    if file_format in FILE_FORMATS or plugins.is_dotted_path(file_format):
        return file_format
    hint = difflib.get_close_matches(str(file_format), FILE_FORMATS, n=1)
    suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
    checker.error(
        f"{entry_key}.format",
        f"unknown format {file_format!r}.{suggestion} Use one of: {', '.join(FILE_FORMATS)}, or the dotted path "
        "of a loader function (path, fields, labels_path) -> list[Row], e.g. 'my_loaders:read_jsonl'.",
    )
    return None


def _parse_local_file(checker: _Checker, entry: Any, entry_key: str) -> LocalFile | None:
    if not checker.expect(entry, dict, entry_key):
        return None
    checker.unknown_keys(entry, _LOCAL_FILE_KEYS, f"{entry_key}.")
    if "path" not in entry:
        checker.error(f"{entry_key}.path", "missing. Give a path pattern relative to the data root.")
        return None
    file_format = _parse_file_format(checker, entry, entry_key)
    if file_format is None:
        return None
    if file_format == "text_labels" and "labels_path" not in entry:
        checker.error(f"{entry_key}.labels_path", "missing. The text_labels format needs the path of the line-aligned labels file.")
        return None
    _check_path_pattern(checker, str(entry["path"]), f"{entry_key}.path")
    if entry.get("labels_path"):
        _check_path_pattern(checker, str(entry["labels_path"]), f"{entry_key}.labels_path")
    languages = entry.get("languages")
    return LocalFile(
        path=str(entry["path"]),
        format=file_format,
        languages=_string_list(checker, languages, f"{entry_key}.languages") if languages is not None else None,
        fields=_string_map(checker, entry.get("fields"), f"{entry_key}.fields"),
        labels_path=str(entry["labels_path"]) if entry.get("labels_path") else None,
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
        files = [_parse_local_file(checker, entry, f"{key}[{index}]") for index, entry in enumerate(entries)]
        splits[split] = tuple(file for file in files if file is not None)
    return LocalSource(
        splits=splits,
        language_names=_string_map(checker, raw.get("language_names"), "sources.local.language_names"),
    )


def _parse_metric_mapping(checker: _Checker, item: dict, key: str) -> MetricSpec | None:
    checker.unknown_keys(item, _METRIC_KEYS, f"{key}.")
    has_function, has_evaluate = "function" in item, "evaluate" in item
    if has_function == has_evaluate:
        checker.error(key, "give exactly one of 'function' (a dotted path) or 'evaluate' (a local path or hub id).")
        return None

    if has_function:
        target = item["function"]
        if not plugins.is_dotted_path(target):
            checker.error(f"{key}.function", f"{target!r} is not a dotted path. Write 'package.module:function'.")
            return None
        default_name = plugins.attribute_name(target)
    else:
        target = item["evaluate"]
        if not isinstance(target, str) or not target.strip():
            checker.error(f"{key}.evaluate", f"expected a local path or a hub id, got {target!r}.")
            return None
        default_name = Path(target.rstrip("/")).stem

    name = item.get("name", default_name)
    compute_args = item.get("compute_args") or {}
    label_ids = item.get("label_ids", False)
    result_key = item.get("key")
    valid = checker.expect(name, str, f"{key}.name")
    valid = checker.expect(compute_args, dict, f"{key}.compute_args") and valid
    valid = checker.expect(label_ids, bool, f"{key}.label_ids") and valid
    if result_key is not None:
        valid = checker.expect(result_key, str, f"{key}.key") and valid
    if has_function and (compute_args or label_ids or result_key is not None):
        checker.error(key, "'key', 'compute_args' and 'label_ids' apply to evaluate modules only; remove them.")
        valid = False
    if not valid:
        return None

    kind = "function" if has_function else "evaluate"
    return MetricSpec(name=name, kind=kind, target=str(target), key=result_key, compute_args=dict(compute_args), label_ids=label_ids)


def _parse_metrics(checker: _Checker, raw: Any, task_type: str) -> tuple[MetricSpec, ...]:
    if not checker.expect(raw, list, "metrics"):
        return ()
    allowed = METRICS_BY_TASK_TYPE[task_type]
    specs: list[MetricSpec] = []
    for index, item in enumerate(raw):
        key = f"metrics[{index}]"
        if isinstance(item, str) and item in allowed:
            specs.append(MetricSpec(name=item, kind="builtin"))
        elif isinstance(item, str) and plugins.is_dotted_path(item):
            specs.append(MetricSpec(name=plugins.attribute_name(item), kind="function", target=item))
        elif isinstance(item, dict):
            spec = _parse_metric_mapping(checker, item, key)
            if spec is not None:
                specs.append(spec)
        else:
            hint = difflib.get_close_matches(str(item), allowed, n=1)
            suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
            checker.error(
                key,
                f"metric {item!r} does not exist for {task_type}.{suggestion} Available: {', '.join(allowed)}; "
                "or name your own as 'package.module:function' (a function (gold, pred) -> float), "
                "or as {name: NAME, evaluate: PATH} for an evaluate module.",
            )
    names = [spec.name for spec in specs]
    for index, spec in enumerate(specs):
        if spec.kind != "builtin" and spec.name in BUILTIN_METRICS:
            checker.error(f"metrics[{index}]", f"the name {spec.name!r} is a built-in metric. Give this metric another 'name'.")
        elif names.count(spec.name) > 1 and names.index(spec.name) != index:
            checker.error(f"metrics[{index}]", f"metric name {spec.name!r} is listed twice. Give each metric a unique 'name'.")
    return tuple(specs)


def _parse_main_metric(checker: _Checker, raw: Any, specs: tuple[MetricSpec, ...]) -> str:
    main_metric = str(raw)
    names = [spec.name for spec in specs]
    if main_metric in names:
        return main_metric
    for spec in specs:
        if spec.kind == "function" and spec.target == main_metric:
            return spec.name
    hint = difflib.get_close_matches(main_metric, names, n=1)
    suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
    checker.error("main_metric", f"{main_metric!r} is not listed in metrics {names}.{suggestion}")
    return main_metric


def _parse_labels(checker: _Checker, raw: dict, task_type: str) -> tuple[tuple[str, ...], dict[str, str], tuple[str, ...]]:
    labels = _string_list(checker, raw["labels"], "labels")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        checker.error("labels", f"label names must be unique; repeated: {duplicates}. Remove the repeated entries.")
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
    return labels, aliases, missing_labels


def _parse_languages(checker: _Checker, raw: dict) -> tuple[str, tuple[str, ...]]:
    source = str(raw["source_language"])
    targets = _string_list(checker, raw["target_languages"], "target_languages")
    for index, code in enumerate((source,) + targets):
        key = "source_language" if index == 0 else f"target_languages[{index - 1}]"
        problem = language_code_problem(code)
        if problem:
            checker.error(key, problem)
    repeated = sorted({code for code in targets if targets.count(code) > 1})
    if repeated:
        checker.error("target_languages", f"languages listed twice: {repeated}.")
    return source, targets


def _check_task(raw: Any, path: Path | str, extends: str | None = None) -> TaskSpec:
    """Validate a merged task mapping and build its spec, raising every error at once."""
    checker = _Checker(path)
    if not isinstance(raw, dict):
        raise TaskFileError(f"{path}: the task file must be a YAML mapping, got {type(raw).__name__}.")
    checker.unknown_keys(raw, _TOP_KEYS, "")
    for key in _REQUIRED_KEYS:
        if key not in raw:
            checker.error(key, "missing required key." + (f" It is not set in {extends!r} either." if extends else ""))
    checker.raise_if_errors()

    task_type = raw["task_type"]
    if task_type not in TASK_TYPES:
        hint = difflib.get_close_matches(str(task_type), TASK_TYPES, n=1)
        suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
        checker.error("task_type", f"unknown task type {task_type!r}.{suggestion} Use one of: {', '.join(TASK_TYPES)}.")
        checker.raise_if_errors()

    if not isinstance(raw["name"], str) or not raw["name"].strip():
        checker.error("name", f"expected a non-empty string, got {raw['name']!r}.")
    text_fields = _string_list(checker, raw["text_fields"], "text_fields")
    expected_fields = {"sequence_classification": 1, "sequence_pair_classification": 2, "token_classification": 1}[task_type]
    if text_fields and len(text_fields) != expected_fields:
        checker.error("text_fields", f"a {task_type} task has {expected_fields} text field(s), got {len(text_fields)}: {list(text_fields)}.")

    labels, aliases, missing_labels = _parse_labels(checker, raw, task_type)
    metric_specs = _parse_metrics(checker, raw["metrics"], task_type)
    main_metric = _parse_main_metric(checker, raw["main_metric"], metric_specs)
    source, targets = _parse_languages(checker, raw)

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
        metrics=tuple(spec.name for spec in metric_specs),
        main_metric=main_metric,
        source_language=source,
        target_languages=targets,
        training=training,
        hub=hub,
        local=local,
        path=Path(path) if not isinstance(path, Path) else path,
        metric_specs=metric_specs,
        extends=extends,
    )


def parse_task(raw: Any, path: Path | str = "<task>", registry: "TaskRegistry | None" = None) -> TaskSpec:
    """Validate the parsed YAML of a task file and build its :class:`TaskSpec`.

    A mapping with ``extends`` is merged onto that task from ``registry``
    (the built-in tasks when None) before it is validated.
    """
    if isinstance(raw, dict) and "extends" in raw:
        registry = registry if registry is not None else TaskRegistry()
        merged, extends = registry.merge_with_base(raw, Path(path))
        return _check_task(merged, path, extends)
    return _check_task(raw, path)


def merge_task_documents(base: dict, override: dict) -> dict:
    """Merge a task mapping onto the one it extends.

    Mappings merge key by key, recursively. Any other value, lists included,
    replaces the inherited value, and ``null`` sets the key to null (which
    optional keys read as "not set").
    """
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_task_documents(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _absolute_evaluate_paths(raw: dict, folder: Path) -> None:
    """Make local evaluate module paths absolute, relative to the declaring file.

    This runs before merging, so a path stays correct in a task file that
    extends this one from another folder.
    """
    metrics = raw.get("metrics")
    if not isinstance(metrics, list):
        return
    for item in metrics:
        location = item.get("evaluate") if isinstance(item, dict) else None
        if isinstance(location, str) and plugins.is_local_evaluate_location(location, folder):
            expanded = Path(location).expanduser()
            item["evaluate"] = str(expanded if expanded.is_absolute() else (folder / expanded).resolve())


def read_task_document(path: Path | str) -> dict:
    """Read a task file's YAML mapping as written, before any ``extends`` merge."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TaskFileError(f"{path}: task file not found.") from None
    except IsADirectoryError:
        raise TaskFileError(f"{path}: is a folder, not a task file. Pass the .yaml file, or the folder with --tasks-dir.") from None
    except UnicodeDecodeError as error:
        raise TaskFileError(f"{path}: not valid UTF-8 at byte {error.start}. Save the task file as UTF-8.") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise TaskFileError(f"{path}: invalid YAML: {error}") from None
    if raw is None:
        raise TaskFileError(f"{path}: the file is empty. A task file is a YAML mapping with name, task_type, labels and the other keys.")
    if not isinstance(raw, dict):
        raise TaskFileError(f"{path}: the task file must be a YAML mapping, got {type(raw).__name__}.")
    folder = path.resolve().parent
    if folder not in (BUILTIN_TASKS_DIR, PACKAGED_TASKS_DIR):
        plugins.add_search_dir(folder)
    _absolute_evaluate_paths(raw, folder)
    return raw


def load_task_file(path: Path | str, registry: "TaskRegistry | None" = None) -> TaskSpec:
    """Read and validate one task file.

    A file with ``extends`` takes its base from ``registry`` (the built-in
    tasks when None).
    """
    path = Path(path)
    raw = read_task_document(path)
    return parse_task(raw, path, registry)


# --------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------


def default_task_dirs() -> list[Path]:
    """Folders searched for built-in task files.

    A source checkout has ``tasks/`` beside the package. A wheel install
    carries the same files inside the package as ``xbench/task_files``.
    """
    return [d for d in (BUILTIN_TASKS_DIR, PACKAGED_TASKS_DIR) if d.is_dir()][:1]


@dataclass
class _Definition:
    """One task file in load order, and its mapping after the ``extends`` merge."""

    path: Path
    raw: dict
    merged: dict | None = None
    chain: tuple[Path, ...] = ()


def _task_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise TaskFileError(f"{folder}: tasks folder not found. Check --tasks-dir.")
    return sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])


class TaskRegistry:
    """Task specs by name, read from one or more folders of task files.

    Folders are read in order and files in name order. A later file with an
    existing name replaces the earlier task, or builds on it when its
    ``extends`` is its own name. ``extends: OTHER`` takes the last
    definition of OTHER, wherever it is in the folders.
    """

    def __init__(self, task_dirs: list[Path] | None = None):
        self.tasks: dict[str, TaskSpec] = {}
        self._definitions: dict[str, list[_Definition]] = {}
        paths: list[Path] = []
        for folder in task_dirs if task_dirs is not None else default_task_dirs():
            # A folder given twice is read once, so an override is not applied twice.
            paths.extend(path for path in _task_files(Path(folder)) if path.resolve() not in {p.resolve() for p in paths})
        self._add_paths(paths)

    def names(self) -> list[str]:
        return sorted(self.tasks)

    def get(self, name: str) -> TaskSpec:
        """Return a task by name, suggesting close names for an unknown one."""
        if name in self.tasks:
            return self.tasks[name]
        close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise KeyError(f"Unknown task {name!r}.{hint} Known tasks: {', '.join(self.names())}. Run 'xbench tasks list' to see them.")

    def resolved(self, name: str) -> dict:
        """Return the task's mapping after every ``extends`` merge, as YAML would hold it."""
        self.get(name)
        return copy.deepcopy(self._definitions[name][-1].merged)

    def chain(self, name: str) -> tuple[Path, ...]:
        """Return the task files that make up a task, base first."""
        self.get(name)
        return self._definitions[name][-1].chain

    def holds_file(self, path: Path | str) -> bool:
        """Tell whether the task file at ``path`` was read into this registry."""
        target = Path(path).resolve()
        return any(definition.path.resolve() == target for definitions in self._definitions.values() for definition in definitions)

    # -- loading ----------------------------------------------------------

    def add_file(self, path: Path | str) -> TaskSpec:
        """Read one more task file into the registry, after those already read."""
        self._add_paths([Path(path)])
        return self.tasks[str(read_task_document(path)["name"])]

    def load_file(self, path: Path | str) -> TaskSpec:
        """Validate a task file against this registry without adding it.

        A file that the registry already contains is resolved at its own place
        in the load order. Any other file is resolved as if it were read last.
        """
        path = Path(path)
        raw = read_task_document(path)
        name = raw.get("name")
        for index, definition in enumerate(self._definitions.get(name, []) if isinstance(name, str) else []):
            if definition.path.resolve() == path.resolve():
                merged = self._resolve(name, index, [])
                return _check_task(merged, path, self._extends_of(definition.raw))
        merged, extends = self.merge_with_base(raw, path)
        return _check_task(merged, path, extends)

    def merge_with_base(self, raw: dict, path: Path) -> tuple[dict, str | None]:
        """Merge a mapping that was not read into the registry onto its base."""
        extends = self._extends_of(raw, path)
        if extends is None:
            return raw, None
        name = raw.get("name")
        count = len(self._definitions.get(extends, []))
        base = self._base_mapping(path, extends, name, count, [])
        merged = merge_task_documents(base, {key: value for key, value in raw.items() if key != "extends"})
        return merged, extends

    def _add_paths(self, paths: list[Path]) -> None:
        errors: list[str] = []
        added: list[tuple[str, int]] = []
        for path in paths:
            try:
                raw = read_task_document(path)
            except TaskFileError as error:
                errors.extend(error.errors)
                continue
            name = raw.get("name")
            if not isinstance(name, str) or not name.strip():
                errors.append(f"{path}: name: missing required key. Every task file needs a name, also one that extends another task.")
                continue
            try:
                extends = self._extends_of(raw, path)
            except TaskFileError as error:
                errors.extend(error.errors)
                continue
            definitions = self._definitions.setdefault(name, [])
            if definitions and extends != name:
                logger.info("Task %s from %s replaces the one from %s", name, path, definitions[-1].path)
            definitions.append(_Definition(Path(path), raw))
            added.append((name, len(definitions) - 1))

        for name, index in added:
            definition = self._definitions[name][index]
            try:
                merged = self._resolve(name, index, [])
                spec = _check_task(merged, definition.path, self._extends_of(definition.raw))
            except TaskFileError as error:
                errors.extend(error.errors)
                continue
            if index == len(self._definitions[name]) - 1:
                self.tasks[name] = spec
        if errors:
            # A broken base reports its errors once, not once per file extending it.
            errors = list(dict.fromkeys(errors))
            raise TaskFileError("Invalid task file:\n  " + "\n  ".join(errors), errors)

    @staticmethod
    def _extends_of(raw: dict, path: Path | None = None) -> str | None:
        extends = raw.get("extends")
        if extends is None:
            return None
        if not isinstance(extends, str) or not extends.strip():
            raise TaskFileError(f"{path or '<task>'}: extends: expected the name of another task, got {extends!r}.")
        return extends

    def _resolve(self, name: str, index: int, stack: list[tuple[str, int]]) -> dict:
        """Return the merged mapping of the index-th definition of ``name``."""
        definition = self._definitions[name][index]
        if definition.merged is not None:
            return definition.merged
        extends = self._extends_of(definition.raw, definition.path)
        if extends is None:
            definition.merged = definition.raw
            definition.chain = (definition.path,)
            return definition.merged
        own = {key: value for key, value in definition.raw.items() if key != "extends"}
        base_index = index if extends == name else len(self._definitions.get(extends, []))
        base = self._base_mapping(definition.path, extends, name, base_index, stack + [(name, index)])
        definition.merged = merge_task_documents(base, own)
        base_definition = self._definitions[extends][base_index - 1]
        definition.chain = base_definition.chain + (definition.path,)
        return definition.merged

    def _base_mapping(self, path: Path, extends: str, name: object, end: int, stack: list[tuple[str, int]]) -> dict:
        """Return the merged mapping of the last definition of ``extends`` before position ``end``."""
        if end <= 0:
            if extends == name:
                raise TaskFileError(
                    f"{path}: extends: the file extends its own name {extends!r}, but no earlier task file defines it. "
                    "An override needs a built-in task or a task from an earlier --tasks-dir with that name."
                )
            close = difflib.get_close_matches(extends, sorted(self._definitions), n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise TaskFileError(
                f"{path}: extends: unknown task {extends!r}.{hint} Known tasks: {', '.join(sorted(self._definitions))}. "
                "If another task file defines it, pass that file's folder with --tasks-dir."
            )
        if (extends, end - 1) in stack:
            cycle = " -> ".join(f"{task} ({self._definitions[task][i].path})" for task, i in stack + [(extends, end - 1)])
            raise TaskFileError(f"{path}: extends: circular inheritance: {cycle}. Let one of these files stop extending the other.")
        return self._resolve(extends, end - 1, stack)
