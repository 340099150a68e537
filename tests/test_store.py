"""The results store under concurrent writers, damaged files and the overwrite policies.

The concurrency tests start real Python processes that write through
:class:`xbench.results.ResultStore`, because the store's promise is about
several processes sharing one run folder.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xbench.results import SCHEMA, ResultExistsError, ResultStore, load_records

WRITER_TIMEOUT_S = 120
MODEL_SLUG = "model-a"

# Each writer waits for the start file, so that both processes write at the same time.
# "distinct" writes one record per index under its own language code, into seed folders
# that both writers create. "same" rewrites one record again and again with a payload
# that is large enough for a torn write to show.
WRITER_SCRIPT = """
import sys, time
from pathlib import Path
from xbench.results import ResultStore

run_dir, worker, count, mode, start_file = sys.argv[1:6]
count = int(count)
deadline = time.monotonic() + 60
while not Path(start_file).exists():
    if time.monotonic() > deadline:
        sys.exit("start file " + start_file + " did not appear within 60 s")
    time.sleep(0.001)
store = ResultStore(Path(run_dir))
for index in range(count):
    if mode == "distinct":
        store.write({"task": "task-%d" % (index % 5), "model_slug": "model-a", "seed": index,
                     "language": "w" + worker, "worker": worker, "index": index})
    else:
        store.write({"task": "task-0", "model_slug": "model-a", "seed": 1, "language": "en",
                     "worker": worker, "index": index, "padding": worker * 50000})
"""


def _start_writers(run_dir: Path, mode: str, count: int, start_file: Path) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", WRITER_SCRIPT, str(run_dir), worker, str(count), mode, str(start_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for worker in ("0", "1")
    ]


def _wait_for_writers(writers: list[subprocess.Popen]) -> None:
    for writer in writers:
        _, stderr = writer.communicate(timeout=WRITER_TIMEOUT_S)
        assert writer.returncode == 0, f"writer process failed:\n{stderr}"


def _temporary_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.name.endswith(".tmp"))


def _write_record(store: ResultStore, language: str, config_hash: str = "hash-a") -> Path:
    return store.write({
        "task": "xnli",
        "model_slug": MODEL_SLUG,
        "seed": 1,
        "language": language,
        "config_hash": config_hash,
        "scores": {"accuracy": 0.5},
    })


# ---------------------------------------------------------------------------
# Concurrent writers


def test_concurrent_distinct_writes_lose_nothing(tmp_path: Path):
    count = 200
    start_file = tmp_path / "start"
    store = ResultStore(tmp_path / "run")
    writers = _start_writers(store.run_dir, "distinct", count, start_file)
    # Give both interpreters time to import xbench, then release them together.
    time.sleep(1.0)
    start_file.touch()
    _wait_for_writers(writers)

    files = sorted(store.root.rglob("*.json"))
    assert len(files) == 2 * count

    seen = set()
    for path in files:
        record = json.loads(path.read_text(encoding="utf-8"))
        assert record["schema"] == SCHEMA
        assert path == store.path_for(record["task"], record["model_slug"], record["seed"], record["language"])
        seen.add((record["worker"], record["index"]))
    expected = {(worker, index) for worker in ("0", "1") for index in range(count)}
    assert seen == expected

    assert _temporary_files(store.root) == []
    assert len(load_records([store.run_dir])) == 2 * count


def test_concurrent_same_record_stays_whole(tmp_path: Path):
    count = 150
    start_file = tmp_path / "start"
    store = ResultStore(tmp_path / "run")
    path = store.path_for("task-0", MODEL_SLUG, 1, "en")
    writers = _start_writers(store.run_dir, "same", count, start_file)
    time.sleep(1.0)
    start_file.touch()

    # Read while both processes replace the file. Every read must see one whole record,
    # and once the file exists it must never be missing, because os.replace is atomic.
    reads = 0
    vanished = 0
    torn = []
    while any(writer.poll() is None for writer in writers):
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if reads:
                vanished += 1
            continue
        reads += 1
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            torn.append(f"{error}: {len(text)} characters")
            continue
        if record["padding"] != record["worker"] * 50000:
            torn.append(f"padding of worker {record['worker']} mixed with other content")
    _wait_for_writers(writers)

    assert torn == []
    assert vanished == 0
    assert reads > 0

    final = json.loads(path.read_text(encoding="utf-8"))
    assert final["worker"] in ("0", "1")
    assert final["padding"] == final["worker"] * 50000
    assert final["index"] == count - 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["en.json"]
    assert _temporary_files(store.root) == []


# ---------------------------------------------------------------------------
# Reading a store with leftovers


def test_load_records_skips_leftovers(tmp_path: Path, caplog):
    store = ResultStore(tmp_path / "run")
    good = {_write_record(store, language) for language in ("en", "de", "ar")}
    folder = store.path_for("xnli", MODEL_SLUG, 1, "en").parent

    # A temporary file named the way atomic_write_text names them. It contains a whole
    # record for a language whose write never finished, so it must not be read.
    leftover = json.loads((folder / "en.json").read_text(encoding="utf-8"))
    leftover["language"] = "sw"
    (folder / ".sw.json.k2j4x9.tmp").write_text(json.dumps(leftover), encoding="utf-8")
    whole_record = (folder / "de.json").read_text(encoding="utf-8")
    truncated = folder / "fr.json"
    truncated.write_text(whole_record[: len(whole_record) // 2], encoding="utf-8")
    empty = folder / "hi.json"
    empty.write_text("", encoding="utf-8")
    not_utf8 = folder / "zh.json"
    not_utf8.write_bytes(b'{"schema": "\xff\xfe"}')

    with caplog.at_level(logging.WARNING, logger="xbench.results"):
        records = load_records([store.run_dir])

    assert sorted(record["language"] for record in records) == ["ar", "de", "en"]
    assert sorted(str(path) for path in good) == sorted(str(folder / f"{language}.json") for language in ("ar", "de", "en"))

    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 3
    for damaged in (truncated, empty, not_utf8):
        assert any(str(damaged) in message for message in warnings), f"no warning names {damaged}"
    assert not any(".tmp" in message for message in warnings)


def test_load_records_reads_single_file(tmp_path: Path):
    store = ResultStore(tmp_path / "run")
    path = _write_record(store, "de")
    records = load_records([path])
    assert [record["language"] for record in records] == ["de"]


def test_load_records_missing_path_raises(tmp_path: Path):
    missing = tmp_path / "no-such-run"
    with pytest.raises(FileNotFoundError, match="no-such-run"):
        load_records([missing])


def test_store_get_ignores_truncated_record(tmp_path: Path, caplog):
    store = ResultStore(tmp_path / "run")
    path = _write_record(store, "en")
    path.write_text(path.read_text(encoding="utf-8")[:40], encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="xbench.results"):
        existing = store.get("xnli", MODEL_SLUG, 1, "en")
    assert existing is None
    assert str(path) in caplog.text


# ---------------------------------------------------------------------------
# Overwrite policies


@pytest.mark.parametrize("policy", ["skip", "recompute", "fail"])
def test_should_compute_missing_result(tmp_path: Path, policy: str):
    store = ResultStore(tmp_path / "run")
    assert store.should_compute("xnli", MODEL_SLUG, 1, "en", "hash-a", policy) is True


def test_skip_policy_same_config_skips(tmp_path: Path):
    store = ResultStore(tmp_path / "run")
    _write_record(store, "en", config_hash="hash-a")
    assert store.should_compute("xnli", MODEL_SLUG, 1, "en", "hash-a", "skip") is False


def test_skip_policy_other_config_raises(tmp_path: Path):
    store = ResultStore(tmp_path / "run")
    _write_record(store, "en", config_hash="hash-a")
    with pytest.raises(ResultExistsError, match="hash-b"):
        store.should_compute("xnli", MODEL_SLUG, 1, "en", "hash-b", "skip")


@pytest.mark.parametrize("requested_hash", ["hash-a", "hash-b"])
def test_recompute_policy_computes(tmp_path: Path, requested_hash: str):
    store = ResultStore(tmp_path / "run")
    _write_record(store, "en", config_hash="hash-a")
    assert store.should_compute("xnli", MODEL_SLUG, 1, "en", requested_hash, "recompute") is True


@pytest.mark.parametrize("requested_hash", ["hash-a", "hash-b"])
def test_fail_policy_raises(tmp_path: Path, requested_hash: str):
    store = ResultStore(tmp_path / "run")
    path = _write_record(store, "en", config_hash="hash-a")
    with pytest.raises(ResultExistsError) as raised:
        store.should_compute("xnli", MODEL_SLUG, 1, "en", requested_hash, "fail")
    assert str(path) in str(raised.value)


def test_unreadable_result_is_recomputed(tmp_path: Path):
    store = ResultStore(tmp_path / "run")
    path = _write_record(store, "en", config_hash="hash-a")
    path.write_text("{", encoding="utf-8")
    assert store.should_compute("xnli", MODEL_SLUG, 1, "en", "hash-a", "skip") is True


def test_policy_checks_one_language_only(tmp_path: Path):
    store = ResultStore(tmp_path / "run")
    _write_record(store, "en", config_hash="hash-a")
    assert store.should_compute("xnli", MODEL_SLUG, 1, "de", "hash-b", "fail") is True


def test_unknown_policy_raises(tmp_path: Path):
    store = ResultStore(tmp_path / "run")
    _write_record(store, "en", config_hash="hash-a")
    with pytest.raises(ValueError, match="Recompute"):
        store.should_compute("xnli", MODEL_SLUG, 1, "en", "hash-a", "Recompute")
