"""Tests for xbench.leaderboard against the hand-made result store in fixtures/results_store.

The fixture has two tasks (xnli, wikiann) with source language en and targets de, fr
and sw. mbert-base has seeds 1 and 2. The model with the hostile name has seed 1 only
and no wikiann score for sw. Expected numbers are computed here from the fixture files.
"""

import copy
import io
import json
import math
import re
import statistics
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from xbench import leaderboard
from xbench.leaderboard import (
    build_leaderboard,
    to_csv,
    to_html,
    to_json,
    to_latex,
    to_markdown,
    write_leaderboard,
)

STORE = Path(__file__).parent / "fixtures" / "results_store"
SOURCE = "en"
SOURCE_COLUMN = "en (source)"
TARGETS = ["de", "fr", "sw"]
HOSTILE = 'Evil <b>&" model'
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_fixture_records() -> list[dict]:
    return [json.loads(path.read_text(encoding="utf-8")) for path in sorted(STORE.rglob("*.json"))]


@pytest.fixture
def records() -> list[dict]:
    return load_fixture_records()


@pytest.fixture
def board(records):
    return build_leaderboard(records)


def seed_scores(records) -> dict:
    """Map (task, model_name) to {seed: {language: score}} from the raw records."""
    table = defaultdict(lambda: defaultdict(dict))
    for record in records:
        score = record["scores"][record["main_metric"]]
        table[(record["task"], record["model_name"])][record["seed"]][record["language"]] = score
    return table


def language_scores(records) -> dict:
    """Map (task, model_name, language) to the list of scores over seeds."""
    scores = defaultdict(list)
    for record in records:
        scores[(record["task"], record["model_name"], record["language"])].append(
            record["scores"][record["main_metric"]]
        )
    return scores


def expected_average(records, task, model) -> float:
    by_language = language_scores(records)
    means = [
        statistics.mean(by_language[(task, model, language)])
        for language in TARGETS
        if (task, model, language) in by_language
    ]
    return statistics.mean(means)


def expected_source(records, task, model) -> float:
    return statistics.mean(language_scores(records)[(task, model, SOURCE)])


def models_with_all_targets(records, task) -> set[str]:
    by_language = language_scores(records)
    models = {model for (t, model, _) in by_language if t == task}
    return {model for model in models if all((task, model, language) in by_language for language in TARGETS)}


# ---------------------------------------------------------------------------
# Table contents


def test_fixture_layout_matches_schema(records):
    assert len(records) == 23
    for path in STORE.rglob("*.json"):
        record = json.loads(path.read_text(encoding="utf-8"))
        assert path.parent.name == f"seed-{record['seed']}"
        assert path.stem == record["language"]
        assert path.parents[2].name == record["task"]


def test_task_columns_order(board):
    for table in board.tasks.values():
        assert list(table.mean.columns) == [SOURCE_COLUMN, *TARGETS, "avg", "gap"]


def test_tasks_and_models_present(board, records):
    assert sorted(board.tasks) == sorted({record["task"] for record in records})
    for task, table in board.tasks.items():
        expected_models = {record["model_name"] for record in records if record["task"] == task}
        assert set(table.mean.index) == expected_models


def test_language_cells_mean_and_std(board, records):
    for (task, model, language), scores in language_scores(records).items():
        column = SOURCE_COLUMN if language == SOURCE else language
        table = board.tasks[task]
        assert table.mean.at[model, column] == pytest.approx(statistics.mean(scores))
        assert table.n_seeds.at[model, column] == len(scores)
        if len(scores) > 1:
            assert table.std.at[model, column] == pytest.approx(statistics.stdev(scores))
        else:
            assert math.isnan(table.std.at[model, column])


def test_average_excludes_source(board, records):
    for task, table in board.tasks.items():
        for model in table.mean.index:
            source = expected_source(records, task, model)
            with_source = statistics.mean([expected_average(records, task, model), source])
            assert table.mean.at[model, "avg"] == pytest.approx(expected_average(records, task, model))
            assert table.mean.at[model, "avg"] != pytest.approx(with_source)


def test_gap_is_source_minus_average(board, records):
    for task, table in board.tasks.items():
        for model in table.mean.index:
            expected = expected_source(records, task, model) - expected_average(records, task, model)
            assert table.mean.at[model, "gap"] == pytest.approx(expected)


def test_average_gap_std_over_seeds(board, records):
    per_seed = seed_scores(records)
    table = board.tasks["xnli"]
    seeds = per_seed[("xnli", "mbert-base")]
    seed_averages = [statistics.mean(seeds[seed][language] for language in TARGETS) for seed in seeds]
    seed_gaps = [seeds[seed][SOURCE] - average for seed, average in zip(seeds, seed_averages)]

    assert len(seeds) == 2
    assert table.std.at["mbert-base", "avg"] == pytest.approx(statistics.stdev(seed_averages))
    assert table.std.at["mbert-base", "gap"] == pytest.approx(statistics.stdev(seed_gaps))
    assert table.n_seeds.at["mbert-base", "avg"] == 2


def test_missing_language_is_nan(board):
    table = board.tasks["wikiann"]
    assert math.isnan(table.mean.at[HOSTILE, "sw"])
    assert table.n_seeds.at[HOSTILE, "sw"] == 0
    assert bool(table.partial.at[HOSTILE, "avg"])
    assert not bool(table.partial.at["mbert-base", "avg"])


def test_best_marked_per_column(board, records):
    by_language = language_scores(records)
    for task, table in board.tasks.items():
        complete = models_with_all_targets(records, task)
        for column in table.mean.columns:
            if column in ("avg", "gap"):
                candidates = {model: table.mean.at[model, column] for model in complete}
            else:
                language = SOURCE if column == SOURCE_COLUMN else column
                candidates = {
                    model: statistics.mean(by_language[(task, model, language)])
                    for model in table.mean.index
                    if (task, model, language) in by_language
                }
            pick = min if column == "gap" else max
            expected_best = pick(candidates, key=candidates.get)
            marked = set(table.best.index[table.best[column]])
            assert marked == {expected_best}, f"{task} {column}"


def test_partial_average_never_best(board, records):
    table = board.tasks["wikiann"]
    # The hostile model's average over de and fr is higher than mbert-base's over all three targets.
    assert expected_average(records, "wikiann", HOSTILE) > expected_average(records, "wikiann", "mbert-base")
    assert not bool(table.best.at[HOSTILE, "avg"])
    assert bool(table.best.at["mbert-base", "avg"])


def test_partial_rows_ranked_after_complete(board):
    assert list(board.tasks["wikiann"].mean.index) == ["mbert-base", HOSTILE]


def test_overall_table(board, records):
    overall = board.overall
    assert list(overall.mean.columns) == [*sorted(board.tasks), "overall"]
    for model in overall.mean.index:
        task_averages = [expected_average(records, task, model) for task in sorted(board.tasks)]
        for task, average in zip(sorted(board.tasks), task_averages):
            assert overall.mean.at[model, task] == pytest.approx(average)
        assert overall.mean.at[model, "overall"] == pytest.approx(statistics.mean(task_averages))


def test_overall_best_excludes_partial(board):
    overall = board.overall
    assert bool(overall.partial.at[HOSTILE, "overall"])
    assert set(overall.best.index[overall.best["overall"]]) == {"mbert-base"}
    assert set(overall.best.index[overall.best["xnli"]]) == {HOSTILE}


def test_uneven_seed_coverage(records, caplog):
    # Seed 2 of mbert-base loses its xnli sw score, so the two seeds cover different languages.
    uneven = [
        r
        for r in records
        if not (r["task"] == "xnli" and r["model_name"] == "mbert-base" and r["seed"] == 2 and r["language"] == "sw")
    ]
    with caplog.at_level("WARNING", logger="xbench.leaderboard"):
        table = build_leaderboard(uneven).tasks["xnli"]

    expected = expected_average(uneven, "xnli", "mbert-base")
    assert table.mean.at["mbert-base", "avg"] == pytest.approx(expected)
    assert math.isnan(table.std.at["mbert-base", "avg"])
    assert table.n_seeds.at["mbert-base", "sw"] == 1
    assert "seeds cover different languages" in caplog.text


def test_missing_source_leaves_gap_empty(records):
    without_source = [r for r in records if not (r["model_name"] == HOSTILE and r["language"] == SOURCE)]
    table = build_leaderboard(without_source).tasks["xnli"]
    assert math.isnan(table.mean.at[HOSTILE, SOURCE_COLUMN])
    assert math.isnan(table.mean.at[HOSTILE, "gap"])
    assert table.mean.at[HOSTILE, "avg"] == pytest.approx(expected_average(records, "xnli", HOSTILE))


def test_overall_empty_without_every_task(records):
    without_wikiann = [r for r in records if not (r["task"] == "wikiann" and r["model_name"] == HOSTILE)]
    board = build_leaderboard(without_wikiann)
    assert math.isnan(board.overall.mean.at[HOSTILE, "overall"])
    assert math.isnan(board.overall.mean.at[HOSTILE, "wikiann"])


# ---------------------------------------------------------------------------
# Invalid input


def test_duplicate_records_raise(records):
    duplicate = copy.deepcopy(next(r for r in records if r["model_name"] == HOSTILE and r["task"] == "xnli"))
    with pytest.raises(ValueError, match="duplicate") as raised:
        build_leaderboard([*records, duplicate])
    message = str(raised.value)
    assert repr(HOSTILE) in message
    assert repr(duplicate["language"]) in message
    assert f"seed={duplicate['seed']}" in message


def test_empty_records_raise():
    with pytest.raises(ValueError, match="no result records"):
        build_leaderboard([])


def test_conflicting_source_language_raises(records):
    changed = copy.deepcopy(records)
    changed[0]["source_language"] = "de"
    changed[0]["is_source"] = changed[0]["language"] == "de"
    with pytest.raises(ValueError, match="source_language"):
        build_leaderboard(changed)


def test_percent_score_raises(records):
    changed = copy.deepcopy(records)
    metric = changed[0]["main_metric"]
    changed[0]["scores"][metric] = 71.0
    with pytest.raises(ValueError, match="fractions"):
        build_leaderboard(changed)


def test_missing_field_raises(records):
    changed = copy.deepcopy(records)
    del changed[0]["scores"]
    with pytest.raises(ValueError, match="scores"):
        build_leaderboard(changed)


def test_one_name_for_two_models_raises(records):
    changed = copy.deepcopy(records)
    extra = copy.deepcopy(next(r for r in changed if r["model_name"] == HOSTILE))
    extra["seed"] = 99
    extra["model"] = "another/model"
    with pytest.raises(ValueError, match="model_name"):
        build_leaderboard([*changed, extra])


# ---------------------------------------------------------------------------
# Writers


def test_markdown_contains_numbers(board):
    text = to_markdown(board)
    for task, table in board.tasks.items():
        assert f"## {task}" in text
        for model in table.mean.index:
            for column in table.mean.columns:
                value = table.mean.at[model, column]
                if not math.isnan(value):
                    assert f"{value * 100:.1f}" in text, f"{task} {model} {column}"


def test_markdown_marks_best_and_units(board):
    text = to_markdown(board)
    xnli = board.tasks["xnli"]
    best_source = xnli.mean[SOURCE_COLUMN][xnli.best[SOURCE_COLUMN]].iloc[0]
    best_std = xnli.std[SOURCE_COLUMN][xnli.best[SOURCE_COLUMN]].iloc[0]
    assert f"**{best_source * 100:.1f} ± {best_std * 100:.1f}**" in text
    assert text.count("in percent with one decimal") == len(board.tasks) + 1
    assert "## Overall" in text
    assert "<b>" not in text


def test_markdown_missing_cell_is_empty(board):
    section = to_markdown(board).split("## wikiann", 1)[1].split("## ", 1)[0]
    wikiann_row = next(line for line in section.splitlines() if line.startswith("| Evil"))
    cells = [cell.strip() for cell in wikiann_row.strip("|").split("|")]
    sw_index = 1 + list(board.tasks["wikiann"].mean.columns).index("sw")
    assert cells[sw_index] == ""


def test_csv_parses_with_pandas(board, records):
    frame = pd.read_csv(io.StringIO(to_csv(board)))
    assert set(frame["scope"]) == {"task", "overall"}
    by_language = language_scores(records)
    task_rows = frame[frame["scope"] == "task"]
    for row in task_rows.itertuples(index=False):
        language = SOURCE if row.column == SOURCE_COLUMN else row.column
        key = (row.task, row.model_name, language)
        if row.column in ("avg", "gap"):
            continue
        if key in by_language:
            assert row.mean == pytest.approx(statistics.mean(by_language[key]))
        else:
            assert math.isnan(row.mean)


def test_csv_best_and_source_columns(board):
    frame = pd.read_csv(io.StringIO(to_csv(board)))
    xnli_gap = frame[(frame["task"] == "xnli") & (frame["column"] == "gap")]
    best_models = set(xnli_gap.loc[xnli_gap["is_best"], "model_name"])
    assert best_models == set(board.tasks["xnli"].best.index[board.tasks["xnli"].best["gap"]])
    assert set(frame.loc[frame["is_source"], "column"]) == {SOURCE_COLUMN}
    assert HOSTILE in set(frame["model_name"])


def test_json_parses(board, records):
    document = json.loads(to_json(board))
    assert document["score_unit"] == "fraction"
    wikiann = document["tasks"]["wikiann"]
    assert wikiann["source_language"] == SOURCE
    assert wikiann["target_languages"] == TARGETS
    rows = {row["model_name"]: row["cells"] for row in wikiann["rows"]}
    assert rows[HOSTILE]["sw"]["mean"] is None
    assert rows["mbert-base"]["avg"]["mean"] == pytest.approx(expected_average(records, "wikiann", "mbert-base"))
    overall_rows = {row["model_name"]: row["cells"] for row in document["overall"]["rows"]}
    assert overall_rows["mbert-base"]["overall"]["best"] is True


def test_latex_booktabs_and_escaping(board):
    text = to_latex(board)
    table_count = len(board.tasks) + 1
    assert text.count(r"\toprule") == table_count
    assert text.count(r"\midrule") == table_count
    assert text.count(r"\bottomrule") == table_count
    assert r"Evil \textless{}b\textgreater{}\&" in text
    assert "<b>" not in text
    assert r"\textbf{" in text


def test_latex_contains_numbers(board):
    text = to_latex(board)
    value = board.tasks["xnli"].mean.at["mbert-base", "avg"]
    spread = board.tasks["xnli"].std.at["mbert-base", "avg"]
    assert f"{value * 100:.1f} $\\pm$ {spread * 100:.1f}" in text


class CellCollector(HTMLParser):
    """Collect the decoded text of every td and th element."""

    def __init__(self):
        super().__init__()
        self.cells: list[str] = []
        self.tables = 0
        self._depth = 0

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables += 1
        if tag in ("td", "th"):
            self._depth += 1
            self.cells.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._depth -= 1

    def handle_data(self, data):
        if self._depth:
            self.cells[-1] += data


def test_html_escapes_hostile_name(board):
    page = to_html(board)
    assert "<b>" not in page
    assert "Evil &lt;b&gt;&amp;&quot; model" in page
    collector = CellCollector()
    collector.feed(page)
    assert HOSTILE in collector.cells


def test_html_is_self_contained(board):
    page = to_html(board)
    assert re.search(r"https?://", page) is None
    assert re.search(r"\b(src|href)\s*=", page) is None
    assert "<style>" in page
    assert "<script>" in page
    assert "addEventListener" in page


def test_html_table_count(board):
    collector = CellCollector()
    collector.feed(to_html(board))
    assert collector.tables == len(board.tasks) + 1


# ---------------------------------------------------------------------------
# Output folder and plots


def test_write_leaderboard_all_formats(board, tmp_path):
    written = write_leaderboard(board, tmp_path)
    names = {path.name for path in written}
    expected = {
        "leaderboard.md",
        "leaderboard.csv",
        "leaderboard.tex",
        "leaderboard.json",
        "leaderboard.html",
        "transfer_gap.png",
        *(f"heatmap_{task}.png" for task in board.tasks),
    }
    assert names == expected
    for path in written:
        assert path.is_file()
        assert path.stat().st_size > 0


def test_write_leaderboard_png_signature(board, tmp_path):
    written = write_leaderboard(board, tmp_path, formats=("png",))
    assert len(written) == len(board.tasks) + 1
    for path in written:
        assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_written_text_files_parse(board, tmp_path):
    write_leaderboard(board, tmp_path, formats=("csv", "json"))
    frame = pd.read_csv(tmp_path / "leaderboard.csv")
    document = json.loads((tmp_path / "leaderboard.json").read_text(encoding="utf-8"))
    assert len(frame) > 0
    assert set(document["tasks"]) == set(board.tasks)


def test_unknown_format_raises(board, tmp_path):
    with pytest.raises(ValueError, match="xlsx"):
        write_leaderboard(board, tmp_path, formats=("md", "xlsx"))


def test_plot_names_with_mathtext(records, tmp_path):
    # "$^$" is invalid mathtext, so drawing fails unless the plot escapes dollar signs.
    renamed = copy.deepcopy(records)
    for record in renamed:
        if record["model_name"] == "mbert-base":
            record["model_name"] = "_m$^$bert {x}"
    board = build_leaderboard(renamed)
    gap_plot = leaderboard.plot_transfer_gap(board, tmp_path / "gap.png")
    heatmap = leaderboard.plot_heatmap(board.tasks["xnli"], tmp_path / "heatmap.png")
    assert gap_plot.read_bytes()[:8] == PNG_SIGNATURE
    assert heatmap.read_bytes()[:8] == PNG_SIGNATURE
