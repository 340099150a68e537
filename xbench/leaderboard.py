"""Leaderboard tables, writers and plots built from xbench result records.

A per-task table has one row per model_name and the columns
``"<source> (source)"``, the target languages sorted by code, ``"avg"`` and ``"gap"``.
``avg`` is the mean of the main metric over the target languages (the source
language is excluded). ``gap`` is the transfer gap, source score minus ``avg``, so
lower is better. A model with several seeds gets the mean and the sample standard
deviation (ddof=1) over seeds in each cell. The overall table follows XTREME: one
column per task containing that task's ``avg``, plus ``"overall"``, the mean over tasks.

Frames store scores as fractions in [0, 1]. The writers display percentages with one
decimal. A missing language is NaN in the frames and an empty cell in every output.
"""

from __future__ import annotations

import html
import io
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

RECORD_SCHEMA = "xbench.result/1"
LEADERBOARD_SCHEMA = "xbench.leaderboard/1"
AVG_COLUMN = "avg"
GAP_COLUMN = "gap"
OVERALL_COLUMN = "overall"
FORMATS = ("md", "csv", "tex", "json", "html", "png")

_REQUIRED_FIELDS = ("task", "model_name", "seed", "language", "source_language", "main_metric", "scores")
_KEY_FIELDS = ["task", "model_name", "seed", "language"]
_FILE_NAMES = {
    "md": "leaderboard.md",
    "csv": "leaderboard.csv",
    "tex": "leaderboard.tex",
    "json": "leaderboard.json",
    "html": "leaderboard.html",
}
# Relative and absolute tolerance for calling two scores equal when marking the best value.
_TIE_RTOL = 1e-9
_TIE_ATOL = 1e-12


def source_column_label(language: str) -> str:
    """Return the column label of the source language, e.g. ``"en (source)"``."""
    return f"{language} (source)"


@dataclass(frozen=True)
class ScoreTable:
    """One leaderboard table: per-cell mean, std, seed count, best and partial flags.

    All five frames share the index (model_name, sorted by the ranking column, best
    first) and the columns. ``mean`` and ``std`` are fractions. ``std`` is NaN where a
    cell has fewer than two seeds. ``partial`` is True where an average covers only a
    subset of the languages or tasks it should cover. Partial cells are never marked best.
    """

    title: str
    mean: pd.DataFrame
    std: pd.DataFrame
    n_seeds: pd.DataFrame
    best: pd.DataFrame
    partial: pd.DataFrame
    task: str | None = None
    main_metric: str | None = None
    source_language: str | None = None
    target_languages: tuple[str, ...] = ()
    lower_is_better: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Leaderboard:
    """Per-task tables keyed by task name (sorted) and the overall table."""

    tasks: dict[str, ScoreTable]
    overall: ScoreTable


# ---------------------------------------------------------------------------
# Building


def build_leaderboard(records: list[dict]) -> Leaderboard:
    """Aggregate result records into per-task tables and the overall table.

    Records of several runs, models and seeds may be mixed. Raises ValueError when
    there are no records, when a record lacks a field or has an invalid score, when
    two records share (task, model_name, seed, language), or when the records of one
    task disagree on source_language or main_metric.
    """
    if not records:
        raise ValueError("no result records to build a leaderboard from. Check the result paths")

    rows = pd.DataFrame([_record_row(record) for record in records])
    _check_duplicates(rows)
    _check_model_ids(rows)

    tasks: dict[str, ScoreTable] = {}
    for task in sorted(rows["task"].unique()):
        task_rows = rows[rows["task"] == task]
        source, metric = _task_settings(task, task_rows)
        tasks[task] = _build_task_table(task, task_rows, source, metric)

    return Leaderboard(tasks=tasks, overall=_build_overall_table(tasks))


def _record_row(record: dict) -> dict:
    missing = [name for name in _REQUIRED_FIELDS if name not in record]
    if missing:
        raise ValueError(f"result record {_describe(record)} is missing the field(s) {missing}")

    schema = record.get("schema", RECORD_SCHEMA)
    if schema != RECORD_SCHEMA:
        raise ValueError(
            f"result record {_describe(record)} has schema {schema!r}, expected {RECORD_SCHEMA!r}. "
            "Rerun the evaluation with the current xbench version"
        )

    metric = record["main_metric"]
    score = record["scores"].get(metric)
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise ValueError(f"result record {_describe(record)} has no numeric score for main metric {metric!r}")
    if not (math.isfinite(score) and 0.0 <= score <= 1.0):
        raise ValueError(
            f"result record {_describe(record)} has {metric}={score!r}, outside [0, 1]. "
            "xbench stores scores as fractions, not percentages"
        )

    is_source = record["language"] == record["source_language"]
    if "is_source" in record and bool(record["is_source"]) != is_source:
        raise ValueError(
            f"result record {_describe(record)} has is_source={record['is_source']!r} but language "
            f"{record['language']!r} and source_language {record['source_language']!r}. Fix the record's is_source"
        )

    return {
        "task": str(record["task"]),
        "model_name": str(record["model_name"]),
        "model": str(record.get("model", record["model_name"])),
        "seed": int(record["seed"]),
        "language": str(record["language"]),
        "source_language": str(record["source_language"]),
        "main_metric": str(metric),
        "score": float(score),
    }


def _describe(record: dict) -> str:
    parts = [f"{name}={record[name]!r}" for name in _KEY_FIELDS if name in record]
    return "(" + ", ".join(parts) + ")"


def _check_duplicates(rows: pd.DataFrame) -> None:
    duplicated = rows[rows.duplicated(subset=_KEY_FIELDS, keep=False)]
    if duplicated.empty:
        return
    keys = sorted({tuple(values) for values in duplicated[_KEY_FIELDS].itertuples(index=False)})
    listed = "; ".join(
        f"task={task!r} model_name={model!r} seed={seed} language={language!r}"
        for task, model, seed, language in keys
    )
    raise ValueError(
        f"duplicate result records for {len(keys)} (task, model_name, seed, language) key(s): {listed}. "
        "Pass each run once, or give different models different model_name values"
    )


def _check_model_ids(rows: pd.DataFrame) -> None:
    models_per_name = rows.groupby("model_name")["model"].unique()
    for name, models in models_per_name.items():
        if len(models) > 1:
            raise ValueError(
                f"model_name {name!r} is used by several models {sorted(models)}. "
                "Give each model its own model_name so that their seeds are not averaged together"
            )


def _task_settings(task: str, task_rows: pd.DataFrame) -> tuple[str, str]:
    settings = {}
    for name in ("source_language", "main_metric"):
        values = sorted(task_rows[name].unique())
        if len(values) != 1:
            raise ValueError(
                f"records of task {task!r} disagree on {name}: {values}. Pass records of one {name} per task"
            )
        settings[name] = values[0]

    source, metric = settings["source_language"], settings["main_metric"]
    reserved = {AVG_COLUMN, GAP_COLUMN, source_column_label(source)} & set(task_rows["language"])
    if reserved:
        raise ValueError(
            f"task {task!r} has language code(s) {sorted(reserved)} that clash with column names. Rename the language"
        )
    return source, metric


def _build_task_table(task: str, task_rows: pd.DataFrame, source: str, metric: str) -> ScoreTable:
    targets = sorted(set(task_rows["language"]) - {source})
    source_column = source_column_label(source)
    columns = [source_column, *targets, AVG_COLUMN, GAP_COLUMN]

    cells: dict[str, dict[str, pd.Series]] = {"mean": {}, "std": {}, "n_seeds": {}, "partial": {}}
    for model, model_rows in task_rows.groupby("model_name", sort=True):
        by_seed = model_rows.pivot(index="seed", columns="language", values="score")
        by_seed = by_seed.reindex(columns=[source, *targets])
        mean, std, count, partial = _model_row(task, str(model), by_seed, source, targets)
        renamed = {source: source_column}
        cells["mean"][model] = mean.rename(renamed)
        cells["std"][model] = std.rename(renamed)
        cells["n_seeds"][model] = count.rename(renamed)
        cells["partial"][model] = partial.rename(renamed)

    frames = {
        name: pd.DataFrame.from_dict(rows, orient="index").reindex(columns=columns) for name, rows in cells.items()
    }
    frames["n_seeds"] = frames["n_seeds"].fillna(0).astype(int)
    frames["partial"] = frames["partial"].fillna(False).astype(bool)
    lower_is_better = frozenset({GAP_COLUMN})
    return _finish_table(
        title=task,
        frames=frames,
        rank_column=AVG_COLUMN,
        lower_is_better=lower_is_better,
        task=task,
        main_metric=metric,
        source_language=source,
        target_languages=tuple(targets),
    )


def _model_row(
    task: str, model: str, by_seed: pd.DataFrame, source: str, targets: list[str]
) -> tuple[pd.Series, pd.Series, pd.Series, pd.Series]:
    """Compute one model's cells from its seed x language score frame."""
    mean = by_seed.mean()
    std = by_seed.std(ddof=1)
    count = by_seed.count()

    missing_targets = [language for language in targets if count[language] == 0]
    present = by_seed.notna()
    # Each language must be present in every seed or in none, otherwise the per-seed
    # averages cover different language sets and their spread is not a seed effect.
    same_languages_per_seed = bool((present.all() | ~present.any()).all())

    if same_languages_per_seed:
        seed_avg = by_seed[targets].mean(axis=1) if targets else pd.Series(np.nan, index=by_seed.index)
        seed_gap = by_seed[source] - seed_avg
        summary = {
            AVG_COLUMN: (seed_avg.mean(), seed_avg.std(ddof=1), seed_avg.count()),
            GAP_COLUMN: (seed_gap.mean(), seed_gap.std(ddof=1), seed_gap.count()),
        }
    else:
        logger.warning(
            "task %r model %r: seeds cover different languages, so avg and gap use per-language means "
            "and have no standard deviation",
            task,
            model,
        )
        avg = mean[targets].mean() if targets else np.nan
        gap = mean[source] - avg
        fewest_seeds = int(count[count > 0].min())
        summary = {
            AVG_COLUMN: (avg, np.nan, fewest_seeds),
            GAP_COLUMN: (gap, np.nan, fewest_seeds),
        }

    partial = pd.Series(False, index=mean.index)
    for column, (value, spread, seeds) in summary.items():
        mean[column] = value
        std[column] = spread
        count[column] = seeds
        partial[column] = bool(missing_targets)
    if missing_targets:
        logger.info("task %r model %r has no score for target language(s) %s", task, model, missing_targets)
    return mean, std, count, partial


def _build_overall_table(tasks: dict[str, ScoreTable]) -> ScoreTable:
    if OVERALL_COLUMN in tasks:
        raise ValueError(f"a task is named {OVERALL_COLUMN!r}, which clashes with the overall column. Rename the task")

    models = sorted(set().union(*(table.mean.index for table in tasks.values())))
    columns = [*tasks, OVERALL_COLUMN]
    frames = {
        "mean": pd.DataFrame(np.nan, index=models, columns=columns),
        "std": pd.DataFrame(np.nan, index=models, columns=columns),
        "n_seeds": pd.DataFrame(0, index=models, columns=columns),
        "partial": pd.DataFrame(False, index=models, columns=columns),
    }
    for task, table in tasks.items():
        models_in_task = table.mean.index
        frames["mean"].loc[models_in_task, task] = table.mean[AVG_COLUMN]
        frames["std"].loc[models_in_task, task] = table.std[AVG_COLUMN]
        frames["n_seeds"].loc[models_in_task, task] = table.n_seeds[AVG_COLUMN]
        frames["partial"].loc[models_in_task, task] = table.partial[AVG_COLUMN]

    task_means = frames["mean"][list(tasks)]
    # As in XTREME, the overall score exists only for models evaluated on every task.
    frames["mean"][OVERALL_COLUMN] = task_means.mean(axis=1).where(task_means.notna().all(axis=1))
    frames["partial"][OVERALL_COLUMN] = frames["partial"][list(tasks)].any(axis=1)
    frames["n_seeds"][OVERALL_COLUMN] = frames["n_seeds"][list(tasks)].min(axis=1)
    for model in frames["mean"].index[frames["mean"][OVERALL_COLUMN].isna()]:
        logger.info("model %r lacks a target average for at least one task, so it has no overall score", model)

    return _finish_table(
        title=OVERALL_COLUMN,
        frames=frames,
        rank_column=OVERALL_COLUMN,
        lower_is_better=frozenset(),
    )


def _finish_table(
    title: str, frames: dict[str, pd.DataFrame], rank_column: str, lower_is_better: frozenset[str], **metadata
) -> ScoreTable:
    """Sort rows best first by ``rank_column``, mark best cells and wrap the frames.

    Rows whose ranking value is partial come after all complete rows, because an
    average over fewer languages or tasks is not comparable.
    """
    mean = frames["mean"].astype(float)
    ranking = pd.DataFrame(
        {
            "partial": frames["partial"][rank_column].astype(bool),
            "score": mean[rank_column],
            "name": mean.index,
        },
        index=mean.index,
    ).sort_values(["partial", "score", "name"], ascending=[True, False, True], na_position="last", kind="stable")
    order = ranking.index
    frames = {name: frame.reindex(order) for name, frame in frames.items()}
    for frame in frames.values():
        frame.index.name = "model_name"
    frames["mean"] = frames["mean"].astype(float)
    frames["std"] = frames["std"].astype(float)
    best = _mark_best(frames["mean"], frames["partial"], lower_is_better)
    return ScoreTable(
        title=title,
        mean=frames["mean"],
        std=frames["std"],
        n_seeds=frames["n_seeds"],
        best=best,
        partial=frames["partial"],
        lower_is_better=lower_is_better,
        **metadata,
    )


def _mark_best(mean: pd.DataFrame, partial: pd.DataFrame, lower_is_better: frozenset[str]) -> pd.DataFrame:
    best = pd.DataFrame(False, index=mean.index, columns=mean.columns)
    for column in mean.columns:
        eligible = mean[column].where(~partial[column])
        # A table of one model has nothing to compare, so nothing is marked.
        if len(mean.index) < 2 or eligible.notna().sum() == 0:
            continue
        target = eligible.min() if column in lower_is_better else eligible.max()
        is_best = np.isclose(eligible.to_numpy(dtype=float), target, rtol=_TIE_RTOL, atol=_TIE_ATOL)
        best[column] = is_best & eligible.notna().to_numpy()
    return best


# ---------------------------------------------------------------------------
# Shared formatting


def _is_missing(value: float) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _percent(value: float) -> str:
    return f"{value * 100:.1f}"


def _cell_parts(table: ScoreTable, model: str, column: str) -> tuple[str, str] | None:
    """Return the display mean and std in percent, or None for an empty cell."""
    mean = table.mean.at[model, column]
    if _is_missing(mean):
        return None
    std = table.std.at[model, column]
    return _percent(mean), "" if _is_missing(std) else _percent(std)


def _caption(table: ScoreTable) -> str:
    """Return the caption that states units, aggregation and markers, with literal ``±`` and ``†``."""
    if table.task is not None:
        text = (
            f"{table.task}: {table.main_metric} in percent with one decimal. "
            "Cells with several seeds show mean ± sample standard deviation over seeds. "
            f"avg is the mean over target languages (source {table.source_language} excluded), "
            "and gap is source minus avg, so lower is better."
        )
    else:
        text = (
            "Overall: each task column is that task's target-language average of its main metric, "
            "in percent with one decimal. overall is the mean over tasks and is empty for a model "
            "that lacks a task."
        )
    return (
        f"{text} Bold marks the best value in each column when several models are compared. "
        "† marks an average over a subset of its languages or tasks, which is never marked best."
    )


def _ordered_tables(lb: Leaderboard) -> list[ScoreTable]:
    return [*lb.tasks.values(), lb.overall]


# ---------------------------------------------------------------------------
# Markdown

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|#&])")


def _escape_markdown(text: str) -> str:
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def _markdown_cell(table: ScoreTable, model: str, column: str) -> str:
    parts = _cell_parts(table, model, column)
    if parts is None:
        return ""
    mean, std = parts
    text = f"{mean} ± {std}" if std else mean
    if table.partial.at[model, column]:
        text += " †"
    if table.best.at[model, column]:
        text = f"**{text}**"
    return text


def to_markdown(lb: Leaderboard) -> str:
    """Render one pipe table per task under a heading, then the overall table."""
    from tabulate import tabulate

    sections = ["# xbench leaderboard"]
    for table in _ordered_tables(lb):
        heading = "Overall" if table.task is None else table.task
        headers = ["model", *(_escape_markdown(str(column)) for column in table.mean.columns)]
        body = [
            [_escape_markdown(model), *(_markdown_cell(table, model, column) for column in table.mean.columns)]
            for model in table.mean.index
        ]
        rendered = tabulate(
            body,
            headers=headers,
            tablefmt="pipe",
            disable_numparse=True,
            colalign=("left", *("right" for _ in table.mean.columns)),
        )
        sections.append(f"## {_escape_markdown(heading)}\n\n{_escape_markdown(_caption(table))}\n\n{rendered}")
    return "\n\n".join(sections) + "\n"


# ---------------------------------------------------------------------------
# LaTeX

_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}


def _escape_latex(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(character, character) for character in text)


def _latex_cell(table: ScoreTable, model: str, column: str) -> str:
    parts = _cell_parts(table, model, column)
    if parts is None:
        return ""
    mean, std = parts
    text = f"{mean} $\\pm$ {std}" if std else mean
    if table.partial.at[model, column]:
        text += r"\textsuperscript{\dag}"
    if table.best.at[model, column]:
        text = f"\\textbf{{{text}}}"
    return text


def _latex_label(title: str) -> str:
    return "tab:xbench-" + re.sub(r"[^A-Za-z0-9-]+", "-", title)


def to_latex(lb: Leaderboard) -> str:
    """Render one booktabs ``table`` environment per task, then the overall table.

    The output needs ``\\usepackage{booktabs}`` in the preamble. Names and captions are
    escaped, so model names may contain LaTeX special characters.
    """
    blocks = ["% xbench leaderboard; requires \\usepackage{booktabs}"]
    for table in _ordered_tables(lb):
        columns = list(table.mean.columns)
        caption = _escape_latex(_caption(table)).replace("±", "$\\pm$").replace("†", "\\dag{}")
        header = " & ".join(["Model", *(_escape_latex(str(column)) for column in columns)]) + r" \\"
        lines = [
            r"\begin{table}[ht]",
            r"\centering",
            f"\\caption{{{caption}}}",
            f"\\label{{{_latex_label(table.title)}}}",
            f"\\begin{{tabular}}{{l{'r' * len(columns)}}}",
            r"\toprule",
            header,
            r"\midrule",
        ]
        for model in table.mean.index:
            cells = [_escape_latex(model), *(_latex_cell(table, model, column) for column in columns)]
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


# ---------------------------------------------------------------------------
# CSV and JSON


def _long_rows(lb: Leaderboard) -> list[dict]:
    rows = []
    for table in _ordered_tables(lb):
        scope = "overall" if table.task is None else "task"
        for model in table.mean.index:
            for column in table.mean.columns:
                mean = table.mean.at[model, column]
                std = table.std.at[model, column]
                rows.append(
                    {
                        "scope": scope,
                        "task": table.task or "",
                        "main_metric": table.main_metric or "",
                        "model_name": model,
                        "column": column,
                        "is_source": table.task is not None and column == source_column_label(table.source_language),
                        "mean": None if _is_missing(mean) else float(mean),
                        "std": None if _is_missing(std) else float(std),
                        "n_seeds": int(table.n_seeds.at[model, column]),
                        "is_best": bool(table.best.at[model, column]),
                        "is_partial": bool(table.partial.at[model, column]),
                    }
                )
    return rows


def to_csv(lb: Leaderboard) -> str:
    """Render all tables as one long-format CSV with one row per table cell.

    Columns:

    - scope: "task" or "overall".
    - task: the task name, empty in the overall scope.
    - main_metric: the task's main metric, empty in the overall scope.
    - model_name: the table row.
    - column: the table column, which is "<source> (source)", a language code, "avg"
      or "gap" in a task table, and a task name or "overall" in the overall table.
    - is_source: True for the source-language column.
    - mean, std: fractions in [0, 1], not percent. Both are empty when missing, and
      std is empty for a single seed.
    - n_seeds: number of seeds behind the cell.
    - is_best: best value in its column, where lower is better for gap.
    - is_partial: average over a subset of its languages or tasks.

    Read it back with ``pandas.read_csv``.
    """
    frame = pd.DataFrame(_long_rows(lb))
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return buffer.getvalue()


def _json_table(table: ScoreTable) -> dict:
    rows = []
    for model in table.mean.index:
        cells = {}
        for column in table.mean.columns:
            mean = table.mean.at[model, column]
            std = table.std.at[model, column]
            cells[column] = {
                "mean": None if _is_missing(mean) else float(mean),
                "std": None if _is_missing(std) else float(std),
                "n_seeds": int(table.n_seeds.at[model, column]),
                "best": bool(table.best.at[model, column]),
                "partial": bool(table.partial.at[model, column]),
            }
        rows.append({"model_name": model, "cells": cells})
    return {
        "columns": list(table.mean.columns),
        "lower_is_better": sorted(table.lower_is_better),
        "rows": rows,
    }


def to_json(lb: Leaderboard) -> str:
    """Render the leaderboard as JSON with scores as fractions and null for missing values."""
    tasks = {}
    for name, table in lb.tasks.items():
        tasks[name] = {
            "main_metric": table.main_metric,
            "source_language": table.source_language,
            "target_languages": list(table.target_languages),
            **_json_table(table),
        }
    document = {
        "schema": LEADERBOARD_SCHEMA,
        "score_unit": "fraction",
        "tasks": tasks,
        "overall": _json_table(lb.overall),
    }
    return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


# ---------------------------------------------------------------------------
# HTML

_HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1a1a1a; background: #fff; }
h1 { font-size: 1.6rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; }
table.leaderboard { border-collapse: collapse; margin-bottom: 1rem; }
table.leaderboard caption {
  caption-side: bottom; text-align: left; font-size: 0.85rem; color: #555; max-width: 60rem; padding-top: 0.4rem;
}
table.leaderboard th, table.leaderboard td { padding: 0.3rem 0.7rem; border-bottom: 1px solid #ddd; }
table.leaderboard td { text-align: right; font-variant-numeric: tabular-nums; }
table.leaderboard td.model { text-align: left; }
table.leaderboard thead th { border-bottom: 2px solid #333; }
table.leaderboard th button {
  font: inherit; font-weight: bold; background: none; border: none; cursor: pointer; padding: 0;
}
table.leaderboard th[aria-sort="ascending"] button::after { content: " \\25B2"; }
table.leaderboard th[aria-sort="descending"] button::after { content: " \\25BC"; }
table.leaderboard td.best { font-weight: bold; background: #eef6ee; }
"""

# Clicking a header sorts its table by that column, toggling ascending and descending.
# Cells with a data-value attribute sort numerically, and empty cells stay last in both directions.
_HTML_SCRIPT = """
(function () {
  "use strict";
  function sortKey(row, index) {
    var cell = row.cells[index];
    var raw = cell.getAttribute("data-value");
    if (raw === null) { return cell.textContent.trim(); }
    return raw === "" ? null : parseFloat(raw);
  }
  function sortTable(table, index, header) {
    var ascending = header.getAttribute("aria-sort") !== "ascending";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = sortKey(a, index);
      var y = sortKey(b, index);
      if (x === null && y === null) { return 0; }
      if (x === null) { return 1; }
      if (y === null) { return -1; }
      var order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell) { cell.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.leaderboard"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header, index) {
      header.querySelector("button").addEventListener("click", function () { sortTable(table, index, header); });
    });
  });
})();
"""


_PAGE_TITLE = "xbench leaderboard"
_PAGE_HINT = "Click a column header to sort its table. Click it again to reverse the order."
_PARTIAL_TITLE = "average over a subset of the languages or tasks"
_PARTIAL_MARK = "†"


def _html_cell(table: ScoreTable, model: str, column: str) -> str:
    parts = _cell_parts(table, model, column)
    if parts is None:
        return '<td data-value=""></td>'
    mean, std = parts
    text = html.escape(f"{mean} ± {std}" if std else mean)
    if table.partial.at[model, column]:
        text += f'<span title="{html.escape(_PARTIAL_TITLE)}"> {html.escape(_PARTIAL_MARK)}</span>'
    value = html.escape(repr(float(table.mean.at[model, column])))
    if table.best.at[model, column]:
        return f'<td class="best" data-value="{value}"><strong>{text}</strong></td>'
    return f'<td data-value="{value}">{text}</td>'


def _html_table(table: ScoreTable) -> str:
    heading = "Overall" if table.task is None else table.task
    headers = "".join(
        f'<th scope="col"><button type="button">{html.escape(str(column))}</button></th>'
        for column in ["model", *table.mean.columns]
    )
    body_rows = []
    for model in table.mean.index:
        cells = "".join(_html_cell(table, model, column) for column in table.mean.columns)
        body_rows.append(f'<tr><td class="model">{html.escape(model)}</td>{cells}</tr>')
    return (
        f"<section>\n<h2>{html.escape(heading)}</h2>\n"
        '<table class="leaderboard">\n'
        f"<caption>{html.escape(_caption(table))}</caption>\n"
        f"<thead><tr>{headers}</tr></thead>\n"
        "<tbody>\n" + "\n".join(body_rows) + "\n</tbody>\n</table>\n</section>"
    )


def to_html(lb: Leaderboard) -> str:
    """Render a self-contained HTML page with inline CSS and a click-to-sort script.

    Every text placed in the page is escaped with ``html.escape``, and the page loads
    nothing from outside.
    """
    tables = "\n".join(_html_table(table) for table in _ordered_tables(lb))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(_PAGE_TITLE)}</title>\n"
        f"<style>{_HTML_STYLE}</style>\n"
        f"</head>\n<body>\n<main>\n<h1>{html.escape(_PAGE_TITLE)}</h1>\n"
        f"<p>{html.escape(_PAGE_HINT)}</p>\n"
        f"{tables}\n</main>\n<script>{_HTML_SCRIPT}</script>\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------------------
# Plots


def _plot_text(text: str) -> str:
    # Matplotlib parses text between two dollar signs as mathtext.
    return text.replace("$", r"\$")


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "task"


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_heatmap(table: ScoreTable, path: Path) -> Path:
    """Write a model x language heatmap of one task's mean scores in percent as PNG."""
    languages = [column for column in table.mean.columns if column not in (AVG_COLUMN, GAP_COLUMN)]
    values = table.mean[languages].to_numpy(dtype=float) * 100
    models = list(table.mean.index)

    figure = _new_figure(1.6 + 1.0 * len(languages), 1.4 + 0.5 * len(models))
    axes = figure.add_subplot()
    masked = np.ma.masked_invalid(values)
    image = axes.imshow(masked, cmap="viridis", aspect="auto")
    figure.colorbar(image, ax=axes, label=f"{table.main_metric} (%)")

    axes.set_xticks(range(len(languages)), labels=[_plot_text(language) for language in languages])
    axes.set_yticks(range(len(models)), labels=[_plot_text(model) for model in models])
    axes.set_title(_plot_text(f"{table.task}: {table.main_metric} (%), empty = not evaluated"))
    finite = values[np.isfinite(values)]
    midpoint = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for row, column in np.ndindex(values.shape):
        value = values[row, column]
        if math.isfinite(value):
            color = "white" if value < midpoint else "black"
            axes.text(column, row, f"{value:.1f}", ha="center", va="center", color=color, fontsize=8)

    figure.savefig(path, dpi=120)
    return path


def plot_transfer_gap(lb: Leaderboard, path: Path) -> Path:
    """Write a grouped bar chart of the transfer gap (percentage points) per task and model as PNG.

    Error bars show the std over seeds where a model has several seeds. Hatched bars are
    gaps over a subset of the target languages.
    """
    from matplotlib.patches import Patch

    tasks = list(lb.tasks)
    models = sorted(set().union(*(table.mean.index for table in lb.tasks.values())))
    width = 0.8 / len(models)

    figure = _new_figure(max(6.0, 3.0 + 0.8 * len(tasks) * len(models)), 4.5)
    axes = figure.add_subplot()
    handles = []
    for position, model in enumerate(models):
        color = f"C{position % 10}"
        offsets = np.arange(len(tasks)) - 0.4 + width * (position + 0.5)
        heights, spreads, hatches = [], [], []
        for task in tasks:
            table = lb.tasks[task]
            present = model in table.mean.index
            heights.append(table.mean.at[model, GAP_COLUMN] * 100 if present else np.nan)
            spreads.append(table.std.at[model, GAP_COLUMN] * 100 if present else np.nan)
            hatches.append("//" if present and table.partial.at[model, GAP_COLUMN] else "")
        axes.bar(offsets, heights, width, color=color, hatch=hatches)

        heights, spreads = np.asarray(heights), np.asarray(spreads)
        with_spread = np.isfinite(heights) & np.isfinite(spreads)
        if with_spread.any():
            axes.errorbar(
                offsets[with_spread],
                heights[with_spread],
                yerr=spreads[with_spread],
                fmt="none",
                ecolor="black",
                capsize=3,
            )
        handles.append(Patch(facecolor=color, label=_plot_text(model)))

    handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="avg over a subset of targets"))
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(tasks)), labels=[_plot_text(task) for task in tasks])
    axes.set_ylabel("source - target avg (points)")
    axes.set_title("Transfer gap per task, lower is better", fontsize=10)
    # Handles carry their labels because legend() skips automatic labels that start with "_".
    axes.legend(handles=handles, fontsize=8)
    figure.savefig(path, dpi=120)
    return path


# ---------------------------------------------------------------------------
# Output folder


def write_leaderboard(lb: Leaderboard, out_dir: Path, formats=FORMATS) -> list[Path]:
    """Write the selected formats into ``out_dir`` (created if needed) and return the written paths.

    Formats: "md", "csv", "tex", "json", "html" write ``leaderboard.<ext>``. "png" writes
    ``heatmap_<task>.png`` per task and ``transfer_gap.png``. Existing files are replaced.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown leaderboard format(s) {unknown}. Choose from {list(FORMATS)}")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    renderers = {"md": to_markdown, "csv": to_csv, "tex": to_latex, "json": to_json, "html": to_html}
    written = []
    for name in FORMATS:
        if name not in formats:
            continue
        if name == "png":
            written += _write_plots(lb, out_dir)
            continue
        path = out_dir / _FILE_NAMES[name]
        path.write_text(renderers[name](lb), encoding="utf-8")
        written.append(path)
    logger.info("wrote %d leaderboard file(s) to %s", len(written), out_dir)
    return written


def _write_plots(lb: Leaderboard, out_dir: Path) -> list[Path]:
    paths = {}
    for task, table in lb.tasks.items():
        path = out_dir / f"heatmap_{_file_stem(task)}.png"
        if path in paths.values():
            raise ValueError(
                f"tasks {task!r} and another task map to the same plot file {path.name}. Rename one of them"
            )
        paths[task] = path
    written = [plot_heatmap(lb.tasks[task], path) for task, path in paths.items()]
    written.append(plot_transfer_gap(lb, out_dir / "transfer_gap.png"))
    return written
