"""Resuming runs of the offline demo through the real command line.

Every run is a separate ``python -m xbench run --preset demo`` process, so a
run can be killed with SIGKILL halfway, as a crash or an out-of-memory kill
would end it. The demo fine-tunes a tiny model on CPU with fixed seeds, so a
resumed run must store the same scores as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xbench.demo import DEMO_TASKS
from xbench.leaderboard import build_leaderboard
from xbench.models import CHECKPOINT_INFO
from xbench.results import SCHEMA, load_records

LANGUAGES = ("en", "de", "ar")
ALL_KEYS = {(task, language) for task in DEMO_TASKS for language in LANGUAGES}
RUN_TIMEOUT_S = 300
POLL_INTERVAL_S = 0.02
RUNNER_INFO = re.compile(r"\d\d:\d\d:\d\d INFO xbench\.runner: (.*)$")


def _demo_command(output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "xbench", "run", "--preset", "demo", "--output", str(output), *extra]


def _demo_env() -> dict[str, str]:
    # The demo needs no network. The offline switches make any attempt fail instead of waiting.
    # One thread: the demo took 10 s on one thread and 13 s on two on a 2-core machine.
    # Every run of a comparison uses the same setting, so scores stay comparable.
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


def _run_demo(output: Path, log_path: Path, *extra: str) -> str:
    """Run the demo to completion and return its log."""
    with log_path.open("w", encoding="utf-8") as log:
        completed = subprocess.run(
            _demo_command(output, *extra),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_demo_env(),
            cwd=output.parent,
            timeout=RUN_TIMEOUT_S,
        )
    text = log_path.read_text(encoding="utf-8")
    assert completed.returncode == 0, f"demo run into {output} failed:\n{text[-4000:]}"
    return text


def _result_files(run_dir: Path) -> list[Path]:
    store = run_dir / "store"
    if not store.is_dir():
        return []
    return sorted(path for path in store.rglob("*.json") if not path.name.startswith("."))


def _temporary_files(run_dir: Path) -> list[Path]:
    return sorted(path for path in run_dir.rglob("*") if path.name.endswith(".tmp"))


def _records_by_key(run_dir: Path) -> dict[tuple[str, str], dict]:
    """Read every stored result, checking that each (task, language) appears once."""
    records: dict[tuple[str, str], dict] = {}
    for path in _result_files(run_dir):
        record = json.loads(path.read_text(encoding="utf-8"))
        key = (record["task"], record["language"])
        assert key not in records, f"{key} is stored twice, again in {path}"
        assert path.name == f"{record['language']}.json"
        records[key] = record
    return records


def _store_snapshot(run_dir: Path) -> dict[Path, tuple[int, bytes]]:
    return {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in _result_files(run_dir)}


def _checkpoint_infos(run_dir: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in sorted((run_dir / "checkpoints").rglob(CHECKPOINT_INFO))}


def _predictions(run_dir: Path, record: dict) -> str:
    return (run_dir / record["predictions_file"]).read_text(encoding="utf-8")


def _logged_tasks(log: str, message: str) -> list[str]:
    """Return the task names of the runner's info messages that contain ``message``.

    Progress bars share the log stream and rewrite their line with carriage
    returns, so a message may follow a bar on the same line.
    """
    tasks = []
    for line in re.split(r"[\r\n]", log):
        found = RUNNER_INFO.search(line)
        if found and message in found.group(1):
            tasks.append(found.group(1).split()[0].rstrip(":"))
    return sorted(tasks)


def _assert_same_results(run_dir: Path, reference_dir: Path, keys) -> None:
    """Check that the records of ``keys`` match the reference run's scores and predictions."""
    records = _records_by_key(run_dir)
    reference = _records_by_key(reference_dir)
    for key in sorted(keys):
        record, expected = records[key], reference[key]
        assert record["scores"] == expected["scores"], key
        assert record["ci95"] == expected["ci95"], key
        assert record["n_examples"] == expected["n_examples"], key
        assert record["fine_tuning"]["best_epoch"] == expected["fine_tuning"]["best_epoch"], key
        assert record["fine_tuning"]["dev_scores"] == expected["fine_tuning"]["dev_scores"], key
        assert record["fine_tuning"]["loss_log"] == expected["fine_tuning"]["loss_log"], key
        assert _predictions(run_dir, record) == _predictions(reference_dir, expected), key


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """An uninterrupted demo run."""
    folder = tmp_path_factory.mktemp("reference")
    run_dir = folder / "run"
    _run_demo(run_dir, folder / "run.log")
    return run_dir


def test_reference_run_complete(reference_run: Path):
    records = _records_by_key(reference_run)
    assert set(records) == ALL_KEYS
    assert len(_result_files(reference_run)) == len(ALL_KEYS)
    assert _temporary_files(reference_run) == []


def test_demo_tokenizer_splits_words(reference_run: Path):
    for key, record in _records_by_key(reference_run).items():
        assert record["diagnostics"]["unk_rate"] < 0.5, key


def test_killed_run_resumes(reference_run: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    killed_log = tmp_path / "killed.log"
    with killed_log.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(
            _demo_command(run_dir), stdout=log, stderr=subprocess.STDOUT, env=_demo_env(), cwd=tmp_path,
        )
    try:
        # Kill as soon as the first result is stored. The other eight results and two
        # fine-tunings take several seconds, so the kill lands in the middle of the run.
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while process.poll() is None and not _result_files(run_dir) and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL_S)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)

    killed_output = killed_log.read_text(encoding="utf-8")
    assert process.returncode == -signal.SIGKILL, f"the run ended before the kill:\n{killed_output[-4000:]}"
    stored_before = _store_snapshot(run_dir)
    assert 1 <= len(stored_before) < len(ALL_KEYS)
    # A SIGKILL during a write can leave a temporary file, which readers skip.
    leftovers_after_kill = _temporary_files(run_dir)
    finished_before = {
        task for task in DEMO_TASKS if {(task, language) for language in LANGUAGES} <= set(_records_by_key(run_dir))
    }

    log = _run_demo(run_dir, tmp_path / "resumed.log")

    records = _records_by_key(run_dir)
    assert set(records) == ALL_KEYS
    assert len(_result_files(run_dir)) == len(ALL_KEYS)
    assert _temporary_files(run_dir) == leftovers_after_kill
    for key, record in records.items():
        assert record["schema"] == SCHEMA, key
        assert record["is_source"] == (record["language"] == "en"), key
    loaded = load_records([run_dir])
    assert len(loaded) == len(ALL_KEYS)
    assert set(build_leaderboard(loaded).tasks) == set(DEMO_TASKS)

    # Results stored before the kill are kept as they are.
    for path, (mtime, content) in stored_before.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was rewritten"
        assert path.read_bytes() == content, f"{path} changed"
    assert _logged_tasks(log, "every result exists, nothing to do") == sorted(finished_before)

    _assert_same_results(run_dir, reference_run, ALL_KEYS)


def test_finished_run_rerun_computes_nothing(reference_run: Path, tmp_path: Path):
    stored = _store_snapshot(reference_run)
    infos = _checkpoint_infos(reference_run)
    predictions = {path: path.stat().st_mtime_ns for path in (reference_run / "predictions").rglob("*.jsonl")}
    checkpoint_dirs = sorted(path for path in (reference_run / "checkpoints").rglob("*") if path.is_dir())

    log = _run_demo(reference_run, tmp_path / "rerun.log")

    assert _logged_tasks(log, "every result exists, nothing to do") == sorted(DEMO_TASKS)
    # "fine-tuning" matches both training and loading a finished fine-tuning.
    assert _logged_tasks(log, "fine-tuning") == []
    assert len(stored) == len(ALL_KEYS)
    assert _store_snapshot(reference_run) == stored
    assert len(infos) == len(DEMO_TASKS)
    assert _checkpoint_infos(reference_run) == infos
    assert len(predictions) == len(ALL_KEYS)
    assert {path: path.stat().st_mtime_ns for path in (reference_run / "predictions").rglob("*.jsonl")} == predictions
    assert sorted(path for path in (reference_run / "checkpoints").rglob("*") if path.is_dir()) == checkpoint_dirs


def test_added_language_reuses_fine_tuning(reference_run: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    first_log = _run_demo(run_dir, tmp_path / "first.log", "--target-langs", "de")

    first_keys = {(task, language) for task in DEMO_TASKS for language in ("en", "de")}
    assert set(_records_by_key(run_dir)) == first_keys
    assert _logged_tasks(first_log, ": fine-tuning") == sorted(DEMO_TASKS)
    stored = _store_snapshot(run_dir)
    infos = _checkpoint_infos(run_dir)
    assert len(infos) == len(DEMO_TASKS)

    log = _run_demo(run_dir, tmp_path / "second.log", "--target-langs", "de,ar")

    records = _records_by_key(run_dir)
    assert set(records) == ALL_KEYS
    assert len(_result_files(run_dir)) == len(ALL_KEYS)
    assert _temporary_files(run_dir) == []
    for path, (mtime, content) in stored.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was rewritten"
        assert path.read_bytes() == content, f"{path} changed"
    new_files = {path.relative_to(run_dir / "store") for path in set(_result_files(run_dir)) - set(stored)}
    assert {path.name for path in new_files} == {"ar.json"}
    assert len(new_files) == len(DEMO_TASKS)

    # The fine-tuning does not depend on the target languages, so it is loaded, not repeated.
    assert _checkpoint_infos(run_dir) == infos
    assert _logged_tasks(log, "reusing the finished fine-tuning") == sorted(DEMO_TASKS)
    assert _logged_tasks(log, ": fine-tuning") == []
    assert _logged_tasks(log, "result exists, skipped") == sorted(DEMO_TASKS * 2)

    # A model loaded from its checkpoint scores as the model it was saved from.
    _assert_same_results(run_dir, reference_run, {(task, "ar") for task in DEMO_TASKS})
