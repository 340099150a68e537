"""Readers for the file formats a task file may declare.

Each reader returns plain rows in file order: a mapping from column or field
name to value, plus the line where the row starts. Readers know formats and
nothing else. Label names, languages and splits are the caller's business.

Every error names the file and line and says what to fix. Nothing is skipped
silently: a malformed line stops the read.

``limit`` reads only the first records of a file, decoding only the lines
they take, so a task file can be checked against large data files in
moments. A format may also be the dotted path of a loader function
``(path, fields, labels_path) -> list[Row]``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

BUILTIN_FORMATS = ("tsv", "csv", "conll", "text_labels")


class DataFormatError(ValueError):
    """A data file that does not match its declared format."""


@dataclass(frozen=True)
class Row:
    """One record of a data file and the 1-based line where it starts."""

    values: dict[str, object]
    path: Path
    line: int

    @property
    def location(self) -> str:
        return f"{self.path}:{self.line}"


def read_text_strict(path: Path) -> str:
    """Read a file as UTF-8, raising on invalid bytes with line and offset."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"Data file not found: {path}. Check --data-dir and the task file's path pattern.") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataFormatError(
            f"{path}:{line}: invalid UTF-8 at byte offset {error.start} "
            f"(byte 0x{data[error.start]:02x}). Re-encode the file as UTF-8."
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return text


def _excerpt(line: str, width: int = 80) -> str:
    """Quote a line for an error message, cut to ``width`` characters."""
    return repr(line) if len(line) <= width else repr(line[:width]) + f"... ({len(line)} characters)"


def _split_lines(text: str) -> list[str]:
    """Split on LF only, so a stray CR or U+2028 inside a field stays in it."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def iter_lines_strict(path: Path, keep_ends: bool = False) -> Iterator[str]:
    """Yield a file's lines one by one, decoded as strict UTF-8.

    Lines split on LF only, as :func:`read_text_strict` and ``_split_lines``
    do, and a leading byte order mark is dropped. Invalid UTF-8 raises
    :class:`DataFormatError` with the same line and byte offset as a full read.
    ``keep_ends`` keeps each line's ending, as the csv module needs.
    """
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"Data file not found: {path}. Check --data-dir and the task file's path pattern.") from None
    with handle:
        offset = 0
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataFormatError(
                    f"{path}:{number}: invalid UTF-8 at byte offset {offset + error.start} "
                    f"(byte 0x{raw[error.start]:02x}). Re-encode the file as UTF-8."
                ) from None
            offset += len(raw)
            if number == 1 and line.startswith("\ufeff"):
                line = line[1:]
            if not keep_ends:
                line = line[:-1] if line.endswith("\n") else line
                line = line[:-1] if line.endswith("\r") else line
            yield line


def _lines(path: Path, limit: int | None) -> Iterable[str]:
    """Return all lines of a file, or a lazy iterator over them when only a few records are read."""
    return _split_lines(read_text_strict(path)) if limit is None else iter_lines_strict(path)


def read_tsv(path: Path, fields: dict[str, str] | None = None, limit: int | None = None) -> list[Row]:
    """Read a tab-separated file with one header line and quoting off.

    Quote characters are ordinary text here, so a premise that starts with an
    unbalanced ``"`` stays one field. Every line must have as many columns as
    the header. ``fields`` maps field names to header names and picks them.
    """
    lines = iter(_lines(path, limit))
    first = next(lines, None)
    if first is None:
        raise DataFormatError(f"{path}: the file is empty. A TSV file needs a header line.")
    header = first.split("\t")
    columns = _pick_columns(path, header, fields)
    rows = []
    for number, line in enumerate(lines, start=2):
        cells = line.split("\t")
        if len(cells) != len(header):
            raise DataFormatError(
                f"{path}:{number}: expected {len(header)} tab-separated columns "
                f"({', '.join(header)}), found {len(cells)}. Remove the stray tab "
                f"or fill the missing column."
            )
        rows.append(Row({name: cells[index] for name, index in columns.items()}, path, number))
        if limit is not None and len(rows) >= limit:
            break
    return rows


def read_csv(path: Path, fields: dict[str, str] | None = None, limit: int | None = None) -> list[Row]:
    """Read a quoted (RFC 4180) CSV file with one header line."""
    if limit is None:
        source: Iterable[str] = io.StringIO(read_text_strict(path), newline="")
    else:
        source = iter_lines_strict(path, keep_ends=True)
    reader = csv.reader(source, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise DataFormatError(f"{path}: the file is empty. A CSV file needs a header line.") from None
    except csv.Error as error:
        raise DataFormatError(f"{path}:1: invalid CSV header: {error}.") from None
    columns = _pick_columns(path, header, fields)
    rows = []
    start_line = reader.line_num + 1
    while limit is None or len(rows) < limit:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            raise DataFormatError(f"{path}:{start_line}: invalid CSV ({error}). Check the quoting of this record.") from None
        if len(cells) != len(header):
            raise DataFormatError(
                f"{path}:{start_line}: expected {len(header)} comma-separated columns "
                f"({', '.join(header)}), found {len(cells)}. Quote fields that contain commas."
            )
        rows.append(Row({name: cells[index] for name, index in columns.items()}, path, start_line))
        start_line = reader.line_num + 1
    return rows


def read_conll(path: Path, fields: dict[str, str] | None = None, limit: int | None = None) -> list[Row]:
    """Read ``TOKEN<TAB>TAG`` lines with a blank line between sentences.

    Each row has ``tokens`` and ``tags`` lists. A line with another column
    count, a whitespace-only line or an empty token is an error.
    """
    rows: list[Row] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    for number, line in enumerate(_lines(path, limit), start=1):
        if line == "":
            if tokens:
                rows.append(Row({"tokens": tokens, "tags": tags}, path, start))
                if limit is not None and len(rows) >= limit:
                    return rows
            tokens, tags = [], []
            continue
        if not line.strip():
            raise DataFormatError(f"{path}:{number}: whitespace-only line. Sentence breaks must be empty lines.")
        cells = line.split("\t")
        if len(cells) != 2:
            raise DataFormatError(
                f"{path}:{number}: expected 2 tab-separated columns (token, tag), found {len(cells)}: {_excerpt(line)}."
            )
        if cells[0] == "":
            raise DataFormatError(f"{path}:{number}: empty token. Every token line needs a token before the tab.")
        if not tokens:
            start = number
        tokens.append(cells[0])
        tags.append(cells[1].strip())
    if tokens:
        rows.append(Row({"tokens": tokens, "tags": tags}, path, start))
    return rows


def read_text_labels(path: Path, labels_path: Path, limit: int | None = None) -> list[Row]:
    """Read one text per line and its label from a line-aligned labels file.

    With ``limit``, only the first lines of both files are read, so a labels
    file that is shorter further down is not noticed.
    """
    if limit is not None:
        return _head_text_labels(path, labels_path, limit)
    texts = _split_lines(read_text_strict(path))
    labels = _split_lines(read_text_strict(labels_path))
    if len(texts) != len(labels):
        raise DataFormatError(
            f"{path} has {len(texts)} lines but {labels_path} has {len(labels)}. "
            "The text and labels files must be line-aligned: one label per text line."
        )
    return [Row({"text": text, "label": label.strip()}, path, number) for number, (text, label) in enumerate(zip(texts, labels), start=1)]


def _head_text_labels(path: Path, labels_path: Path, limit: int) -> list[Row]:
    rows = []
    texts, labels = iter_lines_strict(path), iter_lines_strict(labels_path)
    for number in range(1, limit + 1):
        text, label = next(texts, None), next(labels, None)
        if text is None and label is None:
            break
        if text is None or label is None:
            shorter = path if text is None else labels_path
            raise DataFormatError(
                f"{shorter} ends after {number - 1} lines, before the other file of the pair. "
                "The text and labels files must be line-aligned: one label per text line."
            )
        rows.append(Row({"text": text, "label": label.strip()}, path, number))
    return rows


def _pick_columns(path: Path, header: list[str], fields: dict[str, str] | None) -> dict[str, int]:
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise DataFormatError(f"{path}:1: duplicate column names in the header: {duplicates}.")
    wanted = fields or {name: name for name in header}
    columns = {}
    for field_name, column in wanted.items():
        if column not in header:
            raise DataFormatError(
                f"{path}:1: column {column!r} (for field {field_name!r}) is not in the header {header}. "
                "Fix the task file's 'fields' map or the file's header."
            )
        columns[field_name] = header.index(column)
    return columns


def read_rows(
    file_format: str,
    path: Path,
    fields: dict[str, str] | None = None,
    labels_path: Path | None = None,
    limit: int | None = None,
) -> list[Row]:
    """Read a file in one of the declared formats.

    ``file_format`` is a built-in format or the dotted path of a loader.
    ``limit`` stops after that many records (sentences for CoNLL).
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of records, got {limit}.")
    if file_format == "tsv":
        return read_tsv(path, fields, limit)
    if file_format == "csv":
        return read_csv(path, fields, limit)
    if file_format == "conll":
        return read_conll(path, fields, limit)
    if file_format == "text_labels":
        if labels_path is None:
            raise ValueError(f"{path}: the text_labels format needs labels_path.")
        return read_text_labels(path, labels_path, limit)
    from . import plugins

    if plugins.is_dotted_path(file_format):
        return read_with_loader(file_format, path, fields, labels_path, limit)
    raise ValueError(f"Unknown file format {file_format!r}. Use one of {', '.join(BUILTIN_FORMATS)} or a loader's dotted path.")


def read_head(
    file_format: str,
    path: Path,
    fields: dict[str, str] | None = None,
    labels_path: Path | None = None,
    records: int = 5,
) -> list[Row]:
    """Read only the first ``records`` records of a file."""
    return read_rows(file_format, path, fields, labels_path, limit=records)


def read_with_loader(
    loader_path: str,
    path: Path,
    fields: dict[str, str] | None = None,
    labels_path: Path | None = None,
    limit: int | None = None,
) -> list[Row]:
    """Read a file with a user loader named by dotted path.

    The loader is called as ``loader(path, fields, labels_path)`` and returns
    :class:`Row` objects or plain dicts of field values (numbered as lines
    1, 2, ...). It reads the whole file even when ``limit`` is set.
    """
    from . import plugins

    loader = plugins.import_callable(loader_path, "loader")
    try:
        records = loader(path, fields, labels_path)
    except (DataFormatError, FileNotFoundError):
        raise
    except Exception as error:  # noqa: BLE001 - user code may raise anything
        raise DataFormatError(f"{path}: loader {loader_path!r} raised {type(error).__name__}: {error}") from error
    if records is None or isinstance(records, (str, bytes, dict)) or not isinstance(records, Iterable):
        raise DataFormatError(
            f"{path}: loader {loader_path!r} returned {type(records).__name__}; it must return a list of Row objects "
            "or of dicts of field values."
        )
    rows = []
    for index, record in enumerate(records):
        if limit is not None and len(rows) >= limit:
            break
        if isinstance(record, Row):
            rows.append(record)
        elif isinstance(record, dict):
            rows.append(Row(dict(record), Path(path), index + 1))
        else:
            raise DataFormatError(
                f"{path}: loader {loader_path!r} returned a {type(record).__name__} as record {index + 1}; "
                "each record must be a Row or a dict of field values."
            )
    return rows
