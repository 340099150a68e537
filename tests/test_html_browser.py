"""The HTML leaderboard in a real browser: headless Chromium on a file:// page.

The test writes the page with :func:`xbench.leaderboard.to_html`, appends a
script that reads every table, clicks each column header twice and writes
what it saw as JSON into the page, and reads that back with ``--dump-dom``.
Chromium gets no server and no name resolution, so the page can load nothing
from outside. Without Chromium the test is skipped, except under CI (``CI``
set), where it fails.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from xbench.leaderboard import build_leaderboard, to_html, to_markdown
from xbench.results import ResultStore, load_records

FIXTURE_STORE = Path(__file__).resolve().parent / "fixtures" / "results_store"
CHROMIUM_TIMEOUT_S = 120
RESULT_ID = "xbench-browser-result"

# Extra models beside the fixture's two, so that sorting has more than two rows to order.
# Scores are distinct in every language column, and distil-mbert has no xnli de score.
# ar-bert and xlm-r-base have negative gaps (-4.2 and -10.0 points), which sort
# in the wrong order when compared as text.
EXTRA_SCORES = {
    "ar-bert": {"en": 0.5, "de": 0.571, "fr": 0.593, "sw": 0.463},
    "distil-mbert": {"en": 0.78, "de": 0.664, "fr": 0.723, "sw": 0.593},
    "xlm-r-base": {"en": 0.7, "de": 0.751, "fr": 0.8, "sw": 0.85},
}

# Reads every table, clicks each header twice, and stores rows, data-value
# attributes and aria-sort states as JSON in a <pre> element.
BROWSER_SCRIPT = """
(function () {
  "use strict";
  var output = {tables: []};
  function rowsOf(table) {
    return Array.prototype.map.call(table.tBodies[0].rows, function (row) {
      return {
        text: Array.prototype.map.call(row.cells, function (cell) { return cell.textContent.trim(); }),
        values: Array.prototype.map.call(row.cells, function (cell) { return cell.getAttribute("data-value"); })
      };
    });
  }
  function sortStates(table) {
    return Array.prototype.map.call(table.tHead.rows[0].cells, function (cell) { return cell.getAttribute("aria-sort"); });
  }
  try {
    var tables = Array.prototype.slice.call(document.querySelectorAll("table.leaderboard"));
    tables.forEach(function (table) {
      output.tables.push({
        heading: table.closest("section").querySelector("h2").textContent,
        headers: Array.prototype.map.call(table.tHead.rows[0].cells, function (cell) { return cell.textContent.trim(); }),
        initial: rowsOf(table),
        injectedElements: table.querySelectorAll("tbody b, tbody script, tbody img").length,
        clicks: []
      });
    });
    tables.forEach(function (table, tableIndex) {
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header) {
        var button = header.querySelector("button");
        var states = [];
        for (var click = 0; click < 2; click += 1) {
          button.click();
          states.push({rows: rowsOf(table), sortStates: sortStates(table)});
        }
        output.tables[tableIndex].clicks.push(states);
      });
      if (tableIndex === 0) {
        output.othersAfterFirstTable = tables.slice(1).map(rowsOf);
      }
    });
    output.resourceCount = performance.getEntriesByType("resource").length;
  } catch (error) {
    output.error = String(error && error.stack ? error.stack : error);
  }
  var result = document.createElement("pre");
  result.id = "%s";
  result.textContent = JSON.stringify(output);
  document.body.appendChild(result);
})();
""" % RESULT_ID


def _chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        reason = "Chromium is not installed. Install it with: apt-get install chromium"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (required when CI is set)")
        pytest.skip(reason)
    return path


def _write_extra_records(run_dir: Path) -> None:
    store = ResultStore(run_dir)
    for model, scores in EXTRA_SCORES.items():
        for task, metric in (("xnli", "accuracy"), ("wikiann", "f1")):
            for language, score in scores.items():
                if (model, task, language) == ("distil-mbert", "xnli", "de"):
                    continue
                if task == "wikiann":
                    score += 0.005
                store.write({
                    "task": task,
                    "model": f"./models/{model}",
                    "model_name": model,
                    "model_slug": model,
                    "seed": 1,
                    "language": language,
                    "source_language": "en",
                    "is_source": language == "en",
                    "main_metric": metric,
                    "scores": {metric: score},
                })


def _markdown_tables(markdown: str) -> list[dict]:
    """Parse the headings, headers and cell texts of the markdown pipe tables."""
    tables = []
    for section in markdown.split("\n## ")[1:]:
        lines = [line for line in section.splitlines() if line.startswith("|")]
        rows = [[_markdown_text(cell) for cell in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
        tables.append({"heading": _markdown_text(section.splitlines()[0]), "headers": rows[0], "rows": rows[2:]})
    return tables


def _markdown_text(cell: str) -> str:
    text = cell.strip()
    if text.startswith("**") and text.endswith("**"):
        text = text[2:-2]
    return re.sub(r"\\(.)", r"\1", text)


def _number(value: str | None) -> float | None:
    return None if value in (None, "") else float(value)


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    extra = tmp_path_factory.mktemp("extra-models")
    _write_extra_records(extra)
    return build_leaderboard(load_records([FIXTURE_STORE, extra]))


@pytest.fixture(scope="module")
def browser_output(board, tmp_path_factory) -> dict:
    chromium = _chromium()
    folder = tmp_path_factory.mktemp("browser")
    page = to_html(board)
    (folder / "leaderboard.html").write_text(page, encoding="utf-8")
    assert page.count("</body>") == 1
    driven = folder / "leaderboard-driven.html"
    driven.write_text(page.replace("</body>", f"<script>{BROWSER_SCRIPT}</script>\n</body>"), encoding="utf-8")

    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-breakpad",
        "--disable-domain-reliability",
        "--no-pings",
        "--no-first-run",
        "--no-default-browser-check",
        # Every host name fails to resolve, so nothing can leave the machine.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={folder / 'profile'}",
        "--dump-dom",
        driven.as_uri(),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
    found = re.search(rf'<pre id="{RESULT_ID}">(.*?)</pre>', completed.stdout, re.DOTALL)
    assert found, f"Chromium exited with {completed.returncode} and no result element:\n{completed.stderr[-4000:]}"
    output = json.loads(html.unescape(found.group(1)))
    assert "error" not in output, output.get("error")
    return output


def test_page_loads_no_resources(browser_output):
    assert browser_output["resourceCount"] == 0


def test_tables_match_markdown(board, browser_output):
    expected = _markdown_tables(to_markdown(board))
    tables = browser_output["tables"]
    assert [table["heading"] for table in tables] == [table["heading"] for table in expected]
    for table, markdown in zip(tables, expected):
        assert table["headers"] == markdown["headers"], table["heading"]
        assert [row["text"] for row in table["initial"]] == markdown["rows"], table["heading"]


def test_model_names_shown_as_text(browser_output):
    names = {row["text"][0] for table in browser_output["tables"] for row in table["initial"]}
    assert 'Evil <b>&" model' in names
    for table in browser_output["tables"]:
        assert table["injectedElements"] == 0, table["heading"]


def test_cell_values_match_frames(board, browser_output):
    tables = {table["heading"]: table for table in browser_output["tables"]}
    for name, frame_table in [*board.tasks.items(), ("Overall", board.overall)]:
        rows = tables[name]["initial"]
        assert [row["text"][0] for row in rows] == list(frame_table.mean.index)
        for row, (_, means) in zip(rows, frame_table.mean.iterrows()):
            for value, mean in zip(row["values"][1:], means):
                if math.isnan(mean):
                    assert value == "", (name, row["text"][0])
                else:
                    assert float(value) == pytest.approx(mean, rel=1e-12), (name, row["text"][0])


def test_header_click_sorts_rows(browser_output):
    for table in browser_output["tables"]:
        initial = sorted(map(tuple, (row["text"] for row in table["initial"])))
        for index, (first, second) in enumerate(table["clicks"][1:], start=1):
            where = (table["heading"], table["headers"][index])
            for state, ascending in ((first, True), (second, False)):
                assert sorted(tuple(row["text"]) for row in state["rows"]) == initial, where
                values = [_number(row["values"][index]) for row in state["rows"]]
                present = [value for value in values if value is not None]
                assert values[: len(present)] == present, f"{where}: empty cells are not last"
                assert present == sorted(present, reverse=not ascending), where


def test_header_click_sets_aria_sort(browser_output):
    for table in browser_output["tables"]:
        for index, (first, second) in enumerate(table["clicks"]):
            expected_first = [None] * len(table["headers"])
            expected_first[index] = "ascending"
            expected_second = [None] * len(table["headers"])
            expected_second[index] = "descending"
            assert first["sortStates"] == expected_first, (table["heading"], index)
            assert second["sortStates"] == expected_second, (table["heading"], index)


def test_language_column_sort_order(board, browser_output):
    table = next(table for table in browser_output["tables"] if table["heading"] == "xnli")
    column = table["headers"].index("de")
    scores = board.tasks["xnli"].mean["de"]
    present = scores.dropna()
    assert present.is_unique
    assert scores.isna().sum() == 1

    missing = list(scores.index[scores.isna()])
    ascending = list(present.sort_values().index) + missing
    descending = list(present.sort_values(ascending=False).index) + missing
    first, second = table["clicks"][column]
    assert [row["text"][0] for row in first["rows"]] == ascending
    assert [row["text"][0] for row in second["rows"]] == descending


def test_model_column_sorts_by_name(browser_output):
    table = next(table for table in browser_output["tables"] if table["heading"] == "xnli")
    first, second = table["clicks"][0]
    names = [row["text"][0] for row in table["initial"]]
    assert [row["text"][0] for row in first["rows"]] == sorted(names, key=str.casefold)
    assert [row["text"][0] for row in second["rows"]] == sorted(names, key=str.casefold, reverse=True)


def test_sort_leaves_other_tables(browser_output):
    others = [[row["text"] for row in table["initial"]] for table in browser_output["tables"][1:]]
    after = [[row["text"] for row in rows] for rows in browser_output["othersAfterFirstTable"]]
    assert after == others
