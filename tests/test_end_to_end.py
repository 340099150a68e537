"""End-to-end runs of the real pipeline on real data files.

The tiny model is a randomly initialised BERT on M-BERT's real tokenizer,
so the scores are noise. These tests check that every declared language is
scored, that predictions line up with the stored results, and that the
tables are written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xbench.metrics import accuracy, entity_scores, macro_f1
from xbench.runner import RunConfig, run
from xbench.tasks import TaskRegistry

EXPECTED_LANGUAGES = {"xnli": 12, "wikiann": 20, "sentiment": 6}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@pytest.fixture(scope="module")
def tiny_run(data_dir: Path, mbert_tokenizer_dir: Path, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("e2e")
    config = RunConfig(
        tasks=["xnli", "wikiann", "sentiment"],
        models=[f"tiny-random:{mbert_tokenizer_dir}"],
        output=output,
        data_dir=data_dir,
        max_train_examples=24,
        max_eval_examples=6,
        max_dev_examples=6,
        epochs=1,
        batch_size=8,
        max_seq_length=64,
    )
    run(config)
    return output


def test_every_declared_language_scored(tiny_run: Path):
    rows = json.loads((tiny_run / "results.json").read_text(encoding="utf-8"))
    registry = TaskRegistry()
    for task_name, expected in EXPECTED_LANGUAGES.items():
        task = registry.get(task_name)
        main_rows = [row for row in rows if row["task"] == task_name and row["main"]]
        assert len(main_rows) == expected
        assert {row["language"] for row in main_rows} == set(task.languages)
        assert all(row["metric"] == task.main_metric for row in main_rows)


def test_source_language_marked(tiny_run: Path):
    rows = json.loads((tiny_run / "results.json").read_text(encoding="utf-8"))
    sources = {(row["task"], row["language"]) for row in rows if row["is_source"]}
    assert sources == {("xnli", "en"), ("wikiann", "en"), ("sentiment", "en")}


def test_scores_are_fractions_with_counts(tiny_run: Path):
    rows = json.loads((tiny_run / "results.json").read_text(encoding="utf-8"))
    for row in rows:
        assert 0.0 <= row["score"] <= 1.0, row
        assert row["n_examples"] == 6, row
        assert row["seed"] == 1
        assert row["model"].startswith("tiny-random:")


def test_scores_recomputed_from_predictions(tiny_run: Path):
    records = [json.loads(path.read_text(encoding="utf-8")) for path in (tiny_run / "store").rglob("*.json")]
    assert len(records) == sum(EXPECTED_LANGUAGES.values())
    for record in records:
        rows = _read_jsonl(tiny_run / record["predictions_file"])
        assert len(rows) == record["n_examples"]
        gold = [row["gold"] for row in rows]
        pred = [row["pred"] for row in rows]
        if record["task"] == "wikiann":
            assert [len(row["pred"]) for row in rows] == [len(row["words"]) for row in rows]
            assert entity_scores(gold, pred)["f1"] == record["scores"]["f1"]
        elif record["task"] == "xnli":
            assert accuracy(gold, pred) == record["scores"]["accuracy"]
        else:
            assert macro_f1(gold, pred) == record["scores"]["macro_f1"]


def test_records_carry_provenance(tiny_run: Path):
    record = json.loads(next((tiny_run / "store" / "xnli").rglob("de.json")).read_text(encoding="utf-8"))
    provenance = record["provenance"]
    assert provenance["packages"]["transformers"]
    assert len(provenance["tokenizer_sha256"]) == 64
    assert any(path.endswith("test-de.tsv") for path in provenance["data_files_sha256"])
    assert record["ci95"]["accuracy"][0] <= record["scores"]["accuracy"] <= record["ci95"]["accuracy"][1]
    assert "majority_baseline" in record["diagnostics"]


def test_leaderboard_files_written(tiny_run: Path):
    markdown = (tiny_run / "leaderboard.md").read_text(encoding="utf-8")
    csv_text = (tiny_run / "leaderboard.csv").read_text(encoding="utf-8")
    for task_name in EXPECTED_LANGUAGES:
        assert f"## {task_name}" in markdown
        assert task_name in csv_text
    assert "en (source)" in markdown


def test_rerun_skips_finished_results(tiny_run: Path, data_dir: Path, mbert_tokenizer_dir: Path, caplog):
    before = {path: path.stat().st_mtime_ns for path in (tiny_run / "store").rglob("*.json")}
    config = RunConfig(
        tasks=["sentiment"],
        models=[f"tiny-random:{mbert_tokenizer_dir}"],
        output=tiny_run,
        data_dir=data_dir,
        max_train_examples=24,
        max_eval_examples=6,
        max_dev_examples=6,
        epochs=1,
        batch_size=8,
        max_seq_length=64,
    )
    with caplog.at_level("INFO"):
        run(config)
    after = {path: path.stat().st_mtime_ns for path in (tiny_run / "store").rglob("*.json")}
    assert after == before
    assert "every result exists" in caplog.text
