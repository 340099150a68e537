"""Tests for xbench.cache with the real MiniLM tokenizer and the built-in task files.

The tests replace ``xbench.cache.encode`` with a counting wrapper to
distinguish a hit from a miss, because a hit must not tokenise at all.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

import xbench.cache as cache
from xbench.cache import cached_encode
from xbench.data import Example
from xbench.encoders import encode
from xbench.models import label_maps, load_tokenizer, parse_model_spec
from xbench.tasks import TaskRegistry

DATA_HASHES = {"/data/xnli/test-de.tsv": "0" * 64}

PAIRS = [
    Example("test-de.tsv:2", ("Der Hund schläft im Garten.", "Ein Tier ruht."), "entailment"),
    Example("test-de.tsv:3", ("Sie kaufte drei Äpfel und eine Birne auf dem Markt.", "Sie kaufte nichts."), "contradiction"),
    Example("test-de.tsv:4", ("Es regnet.", "Morgen scheint die Sonne vielleicht."), "neutral"),
]
SENTENCES = [
    Example("test-de.tsv:1", ("Angela", "Merkel", "besuchte", "Paris", "."), ("B-PER", "I-PER", "O", "B-LOC", "O")),
    Example("test-de.tsv:7", ("Die", "Deutsche", "Bank", "\u200b", "wächst", "."), ("O", "B-ORG", "I-ORG", "O", "O", "O")),
    # Longer than max_length below, so it is split into windows.
    Example("test-de.tsv:9", tuple(f"Wort{index}" for index in range(40)), ("O",) * 40),
]
MAX_LENGTH = 32


class EncodeSpy:
    """Counts calls to xbench.cache.encode and passes them on."""

    def __init__(self):
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return encode(*args, **kwargs)


@pytest.fixture(scope="module")
def tokenizer(minilm_dir: Path):
    return load_tokenizer(parse_model_spec(str(minilm_dir)))


@pytest.fixture(scope="module")
def tasks():
    registry = TaskRegistry()
    return {"xnli": registry.get("xnli"), "wikiann": registry.get("wikiann")}


@pytest.fixture
def spy(monkeypatch) -> EncodeSpy:
    counter = EncodeSpy()
    monkeypatch.setattr(cache, "encode", counter)
    return counter


def call(task, tokenizer, examples, cache_dir: Path, max_length: int = MAX_LENGTH, data_hashes=None):
    _, label2id = label_maps(task)
    return cached_encode(task, tokenizer, examples, label2id, max_length, data_hashes or DATA_HASHES, cache_dir, "test")


def cache_files(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.rglob("*.npz"))


@pytest.mark.parametrize("task_name, examples", [("xnli", PAIRS), ("wikiann", SENTENCES)])
def test_hit_returns_identical_split(tasks, tokenizer, tmp_path, spy, task_name, examples):
    task = tasks[task_name]
    _, label2id = label_maps(task)
    expected = encode(task.is_token_task, tokenizer, examples, label2id, MAX_LENGTH)

    first = call(task, tokenizer, examples, tmp_path)
    second = call(task, tokenizer, examples, tmp_path)

    assert spy.calls == 1
    assert len(cache_files(tmp_path)) == 1
    assert first == expected
    assert second == expected


def test_hit_keeps_python_int_types(tasks, tokenizer, tmp_path):
    call(tasks["wikiann"], tokenizer, SENTENCES, tmp_path)

    loaded = call(tasks["wikiann"], tokenizer, SENTENCES, tmp_path)

    assert type(loaded.input_ids[0][0]) is int
    assert type(loaded.labels[0][0]) is int
    assert type(loaded.owned_words[0][0]) is int


def test_windowed_sentence_round_trips(tasks, tokenizer, tmp_path):
    call(tasks["wikiann"], tokenizer, SENTENCES, tmp_path)

    loaded = call(tasks["wikiann"], tokenizer, SENTENCES, tmp_path)

    assert len(loaded.input_ids) > len(SENTENCES)
    assert loaded.example_of_row.count(2) > 1


def other_tokenizer(tokenizer):
    changed = load_tokenizer(parse_model_spec(tokenizer.name_or_path))
    changed.add_tokens(["xbenchnewtoken"])
    return changed


KEY_CHANGES = {
    "tokenizer": lambda task, tokenizer, args: {**args, "tokenizer": other_tokenizer(tokenizer)},
    "data files": lambda task, tokenizer, args: {**args, "data_hashes": {"/data/xnli/test-de.tsv": "1" * 64}},
    "data hash string": lambda task, tokenizer, args: {**args, "data_hashes": "hub-revision-abc"},
    "subsample": lambda task, tokenizer, args: {**args, "examples": args["examples"][:2]},
    "example text": lambda task, tokenizer, args: {
        **args,
        "examples": [dataclasses.replace(args["examples"][0], texts=("Die Katze schläft.", "Ein Tier ruht."))] + args["examples"][1:],
    },
    "max length": lambda task, tokenizer, args: {**args, "max_length": MAX_LENGTH + 1},
    "task name": lambda task, tokenizer, args: {**args, "task": dataclasses.replace(task, name="xnli-copy")},
    "task version": lambda task, tokenizer, args: {**args, "task": dataclasses.replace(task, version=task.version + 1)},
}


@pytest.mark.parametrize("change", sorted(KEY_CHANGES))
def test_changed_key_part_misses(tasks, tokenizer, tmp_path, spy, change):
    args = {"task": tasks["xnli"], "tokenizer": tokenizer, "examples": PAIRS, "max_length": MAX_LENGTH, "data_hashes": DATA_HASHES}
    call(args["task"], args["tokenizer"], args["examples"], tmp_path, args["max_length"], args["data_hashes"])
    changed = KEY_CHANGES[change](tasks["xnli"], tokenizer, args)

    call(changed["task"], changed["tokenizer"], changed["examples"], tmp_path, changed["max_length"], changed["data_hashes"])

    assert spy.calls == 2
    assert len(cache_files(tmp_path)) == 2


def test_encoder_version_change_misses(tasks, tokenizer, tmp_path, spy, monkeypatch):
    call(tasks["xnli"], tokenizer, PAIRS, tmp_path)
    monkeypatch.setattr(cache, "encoder_version", lambda: "another encoder")

    call(tasks["xnli"], tokenizer, PAIRS, tmp_path)

    assert spy.calls == 2


def test_tokenizer_call_state_keeps_key(tasks, tokenizer, tmp_path, spy):
    fresh = load_tokenizer(parse_model_spec(tokenizer.name_or_path))
    used = load_tokenizer(parse_model_spec(tokenizer.name_or_path))
    used(["ein Satz"], ["noch einer"], truncation=True, max_length=8)
    used(["ein Satz"], padding="max_length", max_length=8)
    call(tasks["xnli"], fresh, PAIRS, tmp_path)

    call(tasks["xnli"], used, PAIRS, tmp_path)

    assert spy.calls == 1


def test_moved_data_folder_hits(tasks, tokenizer, tmp_path, spy):
    call(tasks["xnli"], tokenizer, PAIRS, tmp_path, data_hashes={"/data/xnli/test-de.tsv": "0" * 64})

    call(tasks["xnli"], tokenizer, PAIRS, tmp_path, data_hashes={"/elsewhere/xnli/test-de.tsv": "0" * 64})

    assert spy.calls == 1


CORRUPTIONS = {
    "garbage": lambda path: path.write_bytes(b"not a numpy archive"),
    "truncated": lambda path: path.write_bytes(path.read_bytes()[:200]),
    "empty": lambda path: path.write_bytes(b""),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_file_rebuilds(tasks, tokenizer, tmp_path, spy, caplog, corruption):
    task = tasks["wikiann"]
    expected = call(task, tokenizer, SENTENCES, tmp_path)
    [path] = cache_files(tmp_path)
    CORRUPTIONS[corruption](path)

    with caplog.at_level(logging.WARNING, logger="xbench.cache"):
        rebuilt = call(task, tokenizer, SENTENCES, tmp_path)
    again = call(task, tokenizer, SENTENCES, tmp_path)

    assert rebuilt == expected
    assert spy.calls == 2
    assert "unreadable tokenisation cache file" in caplog.text
    assert again == expected


def test_file_with_other_key_rebuilds(tasks, tokenizer, tmp_path, spy, caplog):
    task = tasks["xnli"]
    call(task, tokenizer, PAIRS, tmp_path)
    [path] = cache_files(tmp_path)
    call(task, tokenizer, PAIRS[:1], tmp_path)
    other = next(candidate for candidate in cache_files(tmp_path) if candidate != path)
    path.write_bytes(other.read_bytes())

    with caplog.at_level(logging.WARNING, logger="xbench.cache"):
        rebuilt = call(task, tokenizer, PAIRS, tmp_path)

    assert len(rebuilt) == len(PAIRS)
    assert spy.calls == 3
    assert "stored key differs" in caplog.text


def test_unwritable_cache_still_returns_split(tasks, tokenizer, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")

    with caplog.at_level(logging.WARNING, logger="xbench.cache"):
        encoded = call(tasks["xnli"], tokenizer, PAIRS, blocker / "cache")

    assert len(encoded) == len(PAIRS)
    assert "could not write" in caplog.text


def test_no_temporary_files_left(tasks, tokenizer, tmp_path):
    call(tasks["xnli"], tokenizer, PAIRS, tmp_path)

    leftovers = [path for path in tmp_path.rglob("*") if path.is_file() and path.suffix != ".npz"]

    assert leftovers == []


def test_default_cache_dir_reads_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("XBENCH_CACHE_DIR", str(tmp_path / "override"))

    assert cache.default_cache_dir() == tmp_path / "override"


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("XBENCH_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    assert cache.default_cache_dir() == tmp_path / "xbench" / "encoded"


def _runner_config(data_dir: Path, tokenizer_dir: Path, output: Path, cache_dir: Path, use_cache: bool = True):
    from xbench.runner import RunConfig

    return RunConfig(
        tasks=["wikiann"],
        models=[f"tiny-random:{tokenizer_dir}"],
        output=output,
        data_dir=data_dir,
        target_langs=["de"],
        max_train_examples=8,
        max_eval_examples=5,
        max_dev_examples=5,
        epochs=1,
        batch_size=4,
        max_seq_length=32,
        cache_dir=cache_dir,
        use_cache=use_cache,
    )


def test_second_run_reads_every_split_from_cache(data_dir, mbert_tokenizer_dir, tmp_path, spy):
    from xbench.runner import run

    first = run(_runner_config(data_dir, mbert_tokenizer_dir, tmp_path / "first", tmp_path / "cache"))
    calls_after_first = spy.calls
    second = run(_runner_config(data_dir, mbert_tokenizer_dir, tmp_path / "second", tmp_path / "cache"))
    # train, dev and the en and de test splits are tokenised once, in the first run only.
    assert calls_after_first == 4
    assert spy.calls == calls_after_first
    assert [record["scores"] for record in second] == [record["scores"] for record in first]


def test_no_cache_writes_no_files(data_dir, mbert_tokenizer_dir, tmp_path, spy):
    from xbench.runner import run

    run(_runner_config(data_dir, mbert_tokenizer_dir, tmp_path / "run", tmp_path / "cache", use_cache=False))
    assert not (tmp_path / "cache").exists()


def test_max_length_beyond_positions_rejected(data_dir, mbert_tokenizer_dir, tmp_path):
    from xbench.runner import run

    config = _runner_config(data_dir, mbert_tokenizer_dir, tmp_path / "run", tmp_path / "cache")
    config.max_seq_length = 600
    with pytest.raises(ValueError, match="--max-seq-length 600 is longer than the 512 positions"):
        run(config)
