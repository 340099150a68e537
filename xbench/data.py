"""Data sources: from a task's declared files or hub dataset to examples.

A data source turns (task, language, split) into a list of :class:`Example`
in dataset order, with labels as names from the task's label list. Label
aliases and numeric codes are normalised as the task file declares. Rows
without a gold label are excluded with a warning and a count, never scored.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from .readers import DataFormatError, Row, read_rows
from .tasks import LocalFile, TaskSpec

logger = logging.getLogger(__name__)

# Subsampling uses its own fixed seed, so every training seed and every model
# gets the same examples.
SUBSAMPLE_SEED = 0

# Seconds to wait for the hub before giving up when the network is down.
HUB_TIMEOUT_S = 10


class MissingLanguageError(FileNotFoundError):
    """A language or split that the task's data source does not have."""


class HubUnavailableError(ConnectionError):
    """The Hugging Face Hub cannot be reached."""


@dataclass(frozen=True)
class Example:
    """One labelled example.

    ``texts`` contains one or two strings for classification, or the words of a
    sentence for token classification. ``label`` is a label name, or one tag
    per word for token classification.
    """

    uid: str
    texts: tuple[str, ...]
    label: str | tuple[str, ...]


@dataclass
class SplitData:
    """The examples of one (task, language, split) and how they were read."""

    task: str
    language: str
    split: str
    examples: list[Example]
    files: list[Path] = field(default_factory=list)
    file_hashes: dict[str, str] = field(default_factory=dict)
    hub_revision: str | None = None
    n_missing_label: int = 0
    n_empty_text: int = 0
    n_total: int = 0

    def describe(self) -> str:
        if self.files:
            return ", ".join(str(path) for path in self.files)
        return f"hub revision {self.hub_revision}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class LabelNormalizer:
    """Map raw label strings to the task's label names."""

    def __init__(self, task: TaskSpec):
        self.task = task
        self.labels = set(task.labels)
        self.aliases = dict(task.label_aliases)
        self.missing = set(task.missing_labels)

    def is_missing(self, raw: str) -> bool:
        return raw.strip() in self.missing

    def normalize(self, raw: object, location: str) -> str:
        value = str(raw).strip()
        if value in self.labels:
            return value
        if value in self.aliases:
            return self.aliases[value]
        known = sorted(self.labels) + sorted(self.aliases)
        raise DataFormatError(
            f"{location}: unknown label {value!r} for task {self.task.name}. "
            f"Known labels and aliases: {known}. Add it to label_aliases in the "
            f"task file, or to missing_labels if it marks an unlabelled row."
        )

    def check_tags(self, tags: list[str], row: Row, word_per_line: bool = False) -> tuple[str, ...]:
        """Validate IOB2 tags: each is O or B-/I-TYPE with a known type.

        With ``word_per_line`` (CoNLL files) word ``i`` of a row that starts at
        line ``n`` is on line ``n + i``, and the error names that line.
        """
        result = []
        for position, tag in enumerate(tags):
            name = self.aliases.get(tag, tag)
            if name not in self.labels:
                shape = "" if name == "O" or (name[:2] in ("B-", "I-") and len(name) > 2) else " It is not IOB2 (O, B-TYPE or I-TYPE)."
                raise DataFormatError(
                    f"{row.path}:{row.line + position if word_per_line else row.line}: word {position + 1} of the sentence has tag {tag!r}, which is not in the task's tag set "
                    f"{list(self.task.labels)}.{shape} Fix the file or the task's labels."
                )
            result.append(name)
        return tuple(result)


def _examples_from_rows(task: TaskSpec, rows: list[Row], normalizer: LabelNormalizer, split_data: SplitData, word_per_line: bool = False) -> None:
    """Turn reader rows into examples, counting unlabelled and empty rows."""
    text_fields = task.text_fields
    for row in rows:
        values = row.values
        if task.is_token_task:
            words = values.get(text_fields[0], values.get("tokens"))
            tags = values.get(task.label_field, values.get("tags"))
            if words is None or tags is None or len(words) != len(tags):
                raise DataFormatError(
                    f"{row.location}: a token-classification row needs one tag per word in "
                    f"{text_fields[0]!r} and {task.label_field!r}. Check the file or its loader."
                )
            label: str | tuple[str, ...] = normalizer.check_tags(list(tags), row, word_per_line)
            texts = tuple(words)
        else:
            raw_label = values.get(task.label_field, values.get("label"))
            if raw_label is None:
                raise DataFormatError(f"{row.location}: no label field {task.label_field!r} in this row.")
            split_data.n_total += 1
            if normalizer.is_missing(str(raw_label)):
                split_data.n_missing_label += 1
                continue
            label = normalizer.normalize(raw_label, row.location)
            texts = tuple(str(values.get(name, values.get("text", ""))) for name in text_fields)
            if any(not text.strip() for text in texts):
                split_data.n_empty_text += 1
        if task.is_token_task:
            split_data.n_total += 1
        split_data.examples.append(Example(uid=f"{row.path.name}:{row.line}", texts=texts, label=label))


def _finish(task: TaskSpec, split_data: SplitData) -> SplitData:
    if split_data.n_missing_label:
        logger.warning(
            "%s %s/%s: excluded %d of %d rows with no gold label (%s)",
            task.name, split_data.language, split_data.split, split_data.n_missing_label,
            split_data.n_total, split_data.describe(),
        )
    if split_data.n_empty_text:
        logger.warning(
            "%s %s/%s: %d examples have empty or whitespace-only text (kept and scored)",
            task.name, split_data.language, split_data.split, split_data.n_empty_text,
        )
    if split_data.n_total and not split_data.examples:
        raise DataFormatError(
            f"{split_data.describe()}: all {split_data.n_total} rows of {task.name} "
            f"{split_data.language}/{split_data.split} have a placeholder label "
            f"({sorted(task.missing_labels)}), so there is nothing to score. "
            "This split has no gold labels; use a labelled copy."
        )
    if not split_data.examples:
        raise DataFormatError(f"{split_data.describe()}: no examples for {task.name} {split_data.language}/{split_data.split}.")
    return split_data


class LocalDataSource:
    """Files under a data root, laid out as the task's ``sources.local`` describes."""

    def __init__(self, data_dir: Path | str):
        self.data_dir = Path(data_dir)
        if not self.data_dir.is_dir():
            raise FileNotFoundError(f"Data folder not found: {self.data_dir}. Pass an existing folder with --data-dir.")

    def files_for(self, task: TaskSpec, language: str, split: str) -> list[tuple[LocalFile, Path, Path | None]]:
        if task.local is None:
            raise MissingLanguageError(f"Task {task.name} declares no local source; run it without --data-dir to use the hub.")
        entries = task.local.splits.get(split)
        if not entries:
            raise MissingLanguageError(f"Task {task.name} declares no local files for split {split!r} ({task.path}).")
        name = task.local.language_names.get(language, language)
        resolved = []
        for entry in entries:
            if entry.languages is not None and language not in entry.languages:
                continue
            path = self.data_dir / entry.path.format(lang=language, language=name)
            labels_path = self.data_dir / entry.labels_path.format(lang=language, language=name) if entry.labels_path else None
            resolved.append((entry, path, labels_path))
        if not resolved:
            raise MissingLanguageError(
                f"Task {task.name} has no {split} files for language {language!r}: every {split} entry in "
                f"{task.path} is limited to other languages."
            )
        for _, path, labels_path in resolved:
            for candidate in (path, labels_path):
                if candidate is not None and not candidate.is_file():
                    raise MissingLanguageError(
                        f"Missing {split} file for {task.name} language {language!r}: {candidate}. "
                        f"Check --data-dir ({self.data_dir}) or remove {language!r} from the languages "
                        "(--target-langs, or the task file)."
                    )
        return resolved

    def load(self, task: TaskSpec, language: str, split: str) -> SplitData:
        split_data = SplitData(task.name, language, split, [])
        normalizer = LabelNormalizer(task)
        for entry, path, labels_path in self.files_for(task, language, split):
            rows = read_rows(entry.format, path, entry.fields or None, labels_path)
            split_data.files.append(path)
            split_data.file_hashes[str(path)] = sha256_file(path)
            if labels_path is not None:
                split_data.files.append(labels_path)
                split_data.file_hashes[str(labels_path)] = sha256_file(labels_path)
            _examples_from_rows(task, rows, normalizer, split_data, word_per_line=entry.format == "conll")
        return _finish(task, split_data)


def hub_unreachable_reason() -> str | None:
    """Return why the Hub cannot be used right now, or None when it responds.

    Checks the offline switches, then opens one TCP connection to the Hub
    endpoint with a short timeout, so an offline machine fails in seconds
    instead of waiting for the download library's retries.
    """
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return "hub access is disabled by HF_HUB_OFFLINE=1 or HF_DATASETS_OFFLINE=1"
    import socket
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=HUB_TIMEOUT_S).close()
    except OSError as error:
        return f"{host} is unreachable ({error})"
    return None


class HubDataSource:
    """Per-language configs of a Hugging Face Hub dataset (needs network)."""

    def __init__(self):
        self._checked = False

    def _check_reachable(self) -> None:
        if self._checked:
            return
        reason = hub_unreachable_reason()
        if reason:
            raise HubUnavailableError(
                f"Cannot load data from the Hugging Face Hub: {reason}. To run offline, pass --data-dir "
                "with a local copy of the data (see the README section on local data)."
            )
        self._checked = True

    def load(self, task: TaskSpec, language: str, split: str) -> SplitData:
        if task.hub is None:
            raise MissingLanguageError(f"Task {task.name} declares no hub source; pass --data-dir to use local files.")
        self._check_reachable()
        import datasets

        hub = task.hub
        name = hub.language_names.get(language) or (task.local.language_names.get(language) if task.local else None) or language
        config = hub.config.format(lang=language, language=name) or None
        hub_split = hub.splits.get(split)
        if hub_split is None:
            raise MissingLanguageError(f"Task {task.name}: the hub source maps no split for {split!r}.")
        try:
            dataset = datasets.load_dataset(hub.dataset, config, split=hub_split, revision=hub.revision)
        except ValueError as error:
            raise MissingLanguageError(f"{hub.dataset} has no config {config!r} or split {hub_split!r} for {task.name} {language}: {error}") from None
        features = dataset.features
        rows = []
        for index, record in enumerate(dataset):
            values = {}
            for field_name in (*task.text_fields, task.label_field):
                column = hub.fields.get(field_name, field_name)
                value = record[column]
                feature = features[column]
                values[field_name] = _class_names(feature, value)
            rows.append(Row(values, Path(f"{hub.dataset}/{config}/{hub_split}"), index + 1))
        split_data = SplitData(task.name, language, split, [], hub_revision=hub.revision or _dataset_revision(dataset))
        _examples_from_rows(task, rows, LabelNormalizer(task), split_data)
        return _finish(task, split_data)


def _class_names(feature, value):
    """Turn ClassLabel integers (or lists of them) into label names."""
    names = getattr(feature, "names", None)
    if names is not None and isinstance(value, int):
        return names[value] if value >= 0 else "-1"
    inner = getattr(feature, "feature", None)
    inner_names = getattr(inner, "names", None)
    if inner_names is not None and isinstance(value, list):
        return [inner_names[item] for item in value]
    return value


def _dataset_revision(dataset) -> str | None:
    info = getattr(dataset, "info", None)
    checksums = getattr(info, "download_checksums", None) or {}
    for url in checksums:
        if "@" in url:
            return url.split("@")[1].split("/")[0]
    return None


def subsample(examples: list[Example], limit: int | None, seed: int = SUBSAMPLE_SEED) -> list[Example]:
    """Pick ``limit`` examples at random with a fixed seed, keeping file order."""
    if limit is None or limit <= 0 or len(examples) <= limit:
        return list(examples)
    chosen = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[index] for index in chosen]


def make_data_source(data_dir: Path | str | None):
    """Return the local source for ``data_dir``, or the hub when it is None."""
    return LocalDataSource(data_dir) if data_dir else HubDataSource()
