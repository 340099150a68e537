"""Check task files before any training.

Parsing a task file (:mod:`xbench.tasks`) already checks keys, types, label
names, built-in metrics and language codes. This module adds the checks
that need more than the file itself. It imports the metric functions and
loaders that the task names, loads its evaluate modules and calls each
metric on a sample. Given a data folder, it also checks that every file the
run will read exists and that its first records parse and carry known
labels.

``xbench tasks validate FILE...`` and ``xbench run`` (before it trains) use
the same functions. Every message names the task file, the key path in it
and what to change.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import yaml

from .plugins import PluginError, import_callable
from .readers import DataFormatError, Row, read_rows
from .tasks import SPLITS, LocalFile, TaskFileError, TaskRegistry, TaskSpec, default_task_dirs

logger = logging.getLogger(__name__)

# Records read from the start of each data file. Enough to catch a wrong
# format, column map or label set without reading large files.
HEAD_RECORDS = 5


def validate_task_file(path: Path | str, data_dir: Path | str | None = None, registry: TaskRegistry | None = None) -> list[str]:
    """Check one task file and return its error messages, empty when it is valid.

    ``registry`` supplies the tasks that ``extends`` may name (the built-in
    tasks when None). With ``data_dir``, the local files the run would read
    are checked too.
    """
    try:
        registry = registry if registry is not None else TaskRegistry()
        task = registry.load_file(path)
    except TaskFileError as error:
        return error.errors
    return validate_task(task, data_dir)


def validate_task_files(
    paths: list[Path | str],
    data_dir: Path | str | None = None,
    task_dirs: list[Path] | None = None,
) -> dict[Path, list[str]]:
    """Check several task files in order and return the errors of each.

    The registry contains the built-in tasks and ``task_dirs``. A valid file is
    added to it, so a later file in ``paths`` may extend an earlier one.
    """
    registry = TaskRegistry(default_task_dirs() + list(task_dirs or []))
    results: dict[Path, list[str]] = {}
    for path in map(Path, paths):
        errors = validate_task_file(path, data_dir, registry)
        results[path] = errors
        if not errors and not registry.holds_file(path):
            registry.add_file(path)
    return results


def validate_task(task: TaskSpec, data_dir: Path | str | None = None) -> list[str]:
    """Check what parsing cannot: user code, evaluate modules and, with ``data_dir``, the data files."""
    errors = _check_metrics(task) + _check_loaders(task)
    if data_dir is not None:
        errors += _check_local_data(task, Path(data_dir))
    else:
        errors += _check_local_splits(task)
    return errors


def _check_local_splits(task: TaskSpec) -> list[str]:
    """Check, without any data, that a local source declares the splits a run reads."""
    if task.local is None:
        return []
    return [
        f"{task.path}: sources.local.splits.{split}: missing. A run reads the {split} split; add a {split} entry."
        for split in ("train", "test")
        if not task.local.splits.get(split)
    ]


def check_tasks(tasks: list[TaskSpec], data_dir: Path | str | None = None) -> None:
    """Raise :class:`TaskFileError` with every problem of the tasks a run is about to train.

    Without ``data_dir`` the run reads the hub, so a task with no hub source
    is an error too.
    """
    errors: list[str] = []
    for task in tasks:
        if data_dir is None and task.hub is None:
            errors.append(
                f"{task.path}: sources.hub: missing, and no --data-dir was given, so task {task.name} has no data. "
                "Pass --data-dir with the files that sources.local names, or add a hub source."
            )
        candidates = _local_file_paths(task, Path(data_dir)) if data_dir is not None and task.local is not None else []
        if candidates and not any(path.is_file() for path in candidates):
            # No language has its files: the data root is wrong, not the task file.
            patterns = ", ".join(entry.path for entries in task.local.splits.values() for entry in entries)
            task_errors = [
                f"{task.path}: none of the {len(candidates)} data files checked for task {task.name} exists under --data-dir {data_dir}. "
                f"Point --data-dir at the folder that contains the paths in sources.local ({patterns})."
            ]
        else:
            task_errors = validate_task(task, data_dir)
        errors += task_errors
    if errors:
        raise TaskFileError("Task check failed before training:\n  " + "\n  ".join(errors), errors)
    logger.info("Checked %d task(s): %s", len(tasks), ", ".join(task.name for task in tasks))


def format_report(results: dict[Path, list[str]], data_checked: bool = True) -> str:
    """Return the text that ``xbench tasks validate`` prints: OK or the errors of each file."""
    ok = "OK" if data_checked else "OK (data files not checked: pass --data-dir to check them)"
    lines = []
    for path, errors in results.items():
        lines.extend(errors if errors else [f"{path}: {ok}"])
    valid = sum(1 for errors in results.values() if not errors)
    lines.append(f"{valid} of {len(results)} task file(s) valid.")
    return "\n".join(lines)


def describe_task(registry: TaskRegistry, name: str) -> str:
    """Return a task as YAML after every ``extends`` merge, with the files it comes from."""
    task = registry.get(name)
    chain = ", then ".join(str(path) for path in registry.chain(name))
    languages = ", ".join(f"{lang} (source)" if lang == task.source_language else lang for lang in task.languages)
    header = f"# task {name}, read from {chain}\n# languages: {languages}\n"
    return header + yaml.safe_dump(registry.resolved(name), sort_keys=False, allow_unicode=True, width=100)


# --------------------------------------------------------------------------
# User code
# --------------------------------------------------------------------------


def _sample_labels(task: TaskSpec) -> list:
    """Build a gold list from the task's labels, to call a metric on."""
    return [list(task.labels)] if task.is_token_task else list(task.labels)


def _accepts(function, count: int) -> bool:
    try:
        inspect.signature(function).bind(*([None] * count))
    except TypeError:
        return False
    except ValueError:
        # Some built-in callables have no signature to inspect.
        return True
    return True


def _check_metrics(task: TaskSpec) -> list[str]:
    from .metrics import metric_function

    errors = []
    for index, spec in enumerate(task.metric_specs):
        if spec.kind == "builtin":
            continue
        key = f"{task.path}: metrics[{index}]"
        try:
            compute = metric_function(task, spec)
            if spec.kind == "function" and not _accepts(import_callable(spec.target, "metric"), 2):
                errors.append(f"{key}: metric function {spec.target!r} must take two arguments (gold, pred). Change its signature.")
                continue
        except PluginError as error:
            errors.append(f"{key}: {error}")
            continue
        sample = _sample_labels(task)
        try:
            compute(sample, sample)
        except Exception as error:  # noqa: BLE001 - user code may raise anything
            errors.append(
                f"{key}: metric {spec.name!r} failed on a sample where the predictions equal the gold labels "
                f"{sample}: {type(error).__name__}: {error}. A metric takes (gold, pred): lists of label names"
                + (" per sentence" if task.is_token_task else "")
                + (", as ids with label_ids: true" if spec.label_ids else "")
                + ", and returns a number in [0, 1]."
            )
    return errors


def _check_loaders(task: TaskSpec) -> list[str]:
    if task.local is None:
        return []
    errors = []
    for split, entries in task.local.splits.items():
        for index, entry in enumerate(entries):
            if entry.format in _builtin_formats():
                continue
            key = f"{task.path}: sources.local.splits.{split}[{index}].format"
            try:
                loader = import_callable(entry.format, "loader")
            except PluginError as error:
                errors.append(f"{key}: {error}")
                continue
            if not _accepts(loader, 3):
                errors.append(f"{key}: loader {entry.format!r} must take three arguments (path, fields, labels_path). Change its signature.")
    return errors


def _builtin_formats() -> tuple[str, ...]:
    from .readers import BUILTIN_FORMATS

    return BUILTIN_FORMATS


# --------------------------------------------------------------------------
# Local data
# --------------------------------------------------------------------------


def _check_local_data(task: TaskSpec, data_dir: Path) -> list[str]:
    if not data_dir.is_dir():
        return [f"{data_dir}: data folder not found. Pass an existing folder with --data-dir."]
    if task.local is None:
        return [
            f"{task.path}: sources.local: missing. --data-dir reads local files, but task {task.name} declares only "
            "a hub source. Add a sources.local section, or run without --data-dir."
        ]
    # The splits a run reads: train and dev of the source language, test of every language.
    needed = {"train": [task.source_language], "dev": [task.source_language], "test": list(task.languages)}
    errors: list[str] = []
    for split in SPLITS:
        entries = task.local.splits.get(split)
        if not entries:
            if split != "dev":
                errors.append(
                    f"{task.path}: sources.local.splits.{split}: missing. A run reads the {split} split of "
                    f"{needed[split]}; add a {split} entry."
                )
            continue
        for language in needed[split]:
            errors += _check_language_files(task, data_dir, split, entries, language)
    return errors


def _check_language_files(task: TaskSpec, data_dir: Path, split: str, entries: tuple[LocalFile, ...], language: str) -> list[str]:
    matching = [(index, entry) for index, entry in enumerate(entries) if entry.languages is None or language in entry.languages]
    if not matching:
        return [
            f"{task.path}: sources.local.splits.{split}: no entry covers language {language!r}, because each "
            f"entry lists other 'languages'. Add {language!r} to an entry's languages, or add an entry for it."
        ]
    errors = []
    for index, entry in matching:
        errors += _check_file(task, data_dir, split, index, entry, language)
    return errors


def _local_file_paths(task: TaskSpec, data_dir: Path) -> list[Path]:
    """Return the data file of every split entry and task language, as a run would look for it."""
    paths = []
    for entries in task.local.splits.values():
        for entry in entries:
            for language in entry.languages or task.languages:
                name = task.local.language_names.get(language, language)
                paths.append(data_dir / entry.path.format(lang=language, language=name))
    return list(dict.fromkeys(paths))


def _language_list_key(task: TaskSpec, language: str) -> str:
    return "source_language" if language == task.source_language else "target_languages"


def _check_file(task: TaskSpec, data_dir: Path, split: str, index: int, entry: LocalFile, language: str) -> list[str]:
    key = f"{task.path}: sources.local.splits.{split}[{index}]"
    name = task.local.language_names.get(language, language)
    path = data_dir / entry.path.format(lang=language, language=name)
    labels_path = data_dir / entry.labels_path.format(lang=language, language=name) if entry.labels_path else None
    for candidate, field_name, pattern in ((path, "path", entry.path), (labels_path, "labels_path", entry.labels_path)):
        if candidate is None or candidate.is_file():
            continue
        note = ""
        if "{language}" in pattern and language not in task.local.language_names:
            note = f" ({{language}} became {language!r} because sources.local.language_names has no entry for it)"
        return [
            f"{key}.{field_name}: {split} file not found for language {language!r}: {candidate}{note}. Add the file, "
            f"fix the path pattern, or remove {language!r} from {_language_list_key(task, language)}."
        ]
    try:
        rows = read_rows(entry.format, path, entry.fields or None, labels_path, limit=HEAD_RECORDS)
    except (DataFormatError, PluginError, ValueError, OSError) as error:
        where = "" if str(path) in str(error) else f" of {path}"
        return [f"{key}: the first {HEAD_RECORDS} records{where} do not parse as format {entry.format!r}: {error}"]
    if not rows:
        return [f"{key}: {path} has no records. Fill the file, or check that its format is {entry.format!r}."]
    problem = _row_problem(task, rows)
    return [f"{key}: {problem}"] if problem else []


def _row_problem(task: TaskSpec, rows: list[Row]) -> str | None:
    """Return the first problem in records that the run would hit, or None."""
    from .data import LabelNormalizer

    normalizer = LabelNormalizer(task)
    for row in rows:
        values = row.values
        found = f"fields found: {sorted(values)}. Map the file's columns with 'fields', or return these fields from the loader."
        try:
            if task.is_token_task:
                words = values.get(task.text_fields[0], values.get("tokens"))
                tags = values.get(task.label_field, values.get("tags"))
                if words is None or tags is None:
                    missing = task.text_fields[0] if words is None else task.label_field
                    return f"record at {row.location} has no field {missing!r}; {found}"
                if not isinstance(words, (list, tuple)) or not isinstance(tags, (list, tuple)):
                    return f"record at {row.location}: {task.text_fields[0]!r} and {task.label_field!r} must be lists (one entry per word)."
                if len(words) != len(tags):
                    return f"record at {row.location} has {len(words)} words but {len(tags)} tags. Give one tag per word."
                normalizer.check_tags(list(tags), row)
                continue
            raw_label = values.get(task.label_field, values.get("label"))
            if raw_label is None:
                return f"record at {row.location} has no label field {task.label_field!r}; {found}"
            for name in task.text_fields:
                if name not in values and not (len(task.text_fields) == 1 and "text" in values):
                    return f"record at {row.location} has no text field {name!r}; {found}"
            if not normalizer.is_missing(str(raw_label)):
                normalizer.normalize(raw_label, row.location)
        except DataFormatError as error:
            return str(error)
    return None
