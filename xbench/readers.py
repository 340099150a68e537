"""Readers for the file formats a task file may declare.

Each reader returns plain rows in file order: a mapping from column or field
name to value, plus the line where the row starts. Readers know formats and
nothing else. Label names, languages and splits are the caller's business.

Every error names the file and line and says what to fix. Nothing is skipped
silently: a malformed line stops the read.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path


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


def _split_lines(text: str) -> list[str]:
    """Split on LF only, so a stray CR or U+2028 inside a field stays in it."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_tsv(path: Path, fields: dict[str, str] | None = None) -> list[Row]:
    """Read a tab-separated file with one header line and quoting off.

    Quote characters are ordinary text here, so a premise that starts with an
    unbalanced ``"`` stays one field. Every line must have as many columns as
    the header. ``fields`` maps field names to header names and picks them.
    """
    lines = _split_lines(read_text_strict(path))
    if not lines:
        raise DataFormatError(f"{path}: the file is empty. A TSV file needs a header line.")
    header = lines[0].split("\t")
    columns = _pick_columns(path, header, fields)
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        cells = line.split("\t")
        if len(cells) != len(header):
            raise DataFormatError(
                f"{path}:{number}: expected {len(header)} tab-separated columns "
                f"({', '.join(header)}), found {len(cells)}. Remove the stray tab "
                f"or fill the missing column."
            )
        rows.append(Row({name: cells[index] for name, index in columns.items()}, path, number))
    return rows


def read_csv(path: Path, fields: dict[str, str] | None = None) -> list[Row]:
    """Read a quoted (RFC 4180) CSV file with one header line."""
    text = read_text_strict(path)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise DataFormatError(f"{path}: the file is empty. A CSV file needs a header line.") from None
    except csv.Error as error:
        raise DataFormatError(f"{path}:1: invalid CSV header: {error}.") from None
    columns = _pick_columns(path, header, fields)
    rows = []
    start_line = reader.line_num + 1
    while True:
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


def read_conll(path: Path, fields: dict[str, str] | None = None) -> list[Row]:
    """Read ``TOKEN<TAB>TAG`` lines with a blank line between sentences.

    Each row has ``tokens`` and ``tags`` lists. A line with another column
    count, a whitespace-only line or an empty token is an error.
    """
    lines = _split_lines(read_text_strict(path))
    rows: list[Row] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    for number, line in enumerate(lines, start=1):
        if line == "":
            if tokens:
                rows.append(Row({"tokens": tokens, "tags": tags}, path, start))
            tokens, tags = [], []
            continue
        if not line.strip():
            raise DataFormatError(f"{path}:{number}: whitespace-only line. Sentence breaks must be empty lines.")
        cells = line.split("\t")
        if len(cells) != 2:
            raise DataFormatError(
                f"{path}:{number}: expected 2 tab-separated columns (token, tag), found {len(cells)}: {line!r}."
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


def read_text_labels(path: Path, labels_path: Path) -> list[Row]:
    """Read one text per line and its label from a line-aligned labels file."""
    texts = _split_lines(read_text_strict(path))
    labels = _split_lines(read_text_strict(labels_path))
    if len(texts) != len(labels):
        raise DataFormatError(
            f"{path} has {len(texts)} lines but {labels_path} has {len(labels)}. "
            "The text and labels files must be line-aligned: one label per text line."
        )
    return [Row({"text": text, "label": label.strip()}, path, number) for number, (text, label) in enumerate(zip(texts, labels), start=1)]


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


def read_rows(file_format: str, path: Path, fields: dict[str, str] | None = None, labels_path: Path | None = None) -> list[Row]:
    """Read a file in one of the declared formats."""
    if file_format == "tsv":
        return read_tsv(path, fields)
    if file_format == "csv":
        return read_csv(path, fields)
    if file_format == "conll":
        return read_conll(path, fields)
    if file_format == "text_labels":
        if labels_path is None:
            raise ValueError(f"{path}: the text_labels format needs labels_path.")
        return read_text_labels(path, labels_path)
    raise ValueError(f"Unknown file format {file_format!r}.")
