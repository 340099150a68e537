"""Tests for user task files: inheritance, validation, custom code and end-to-end runs.

The user task in fixtures/tasks/ner_misc is named entity recognition with a
MISC type, stored as JSON Lines (a format no built-in task uses) and read by
a loader module beside the task file. A metric module beside it adds a
MISC-only F1. Each test copies that folder to a temporary folder, as a user
would keep it outside the repository.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml

from xbench import cli
from xbench.metrics import score_task, task_bootstrap_ci, task_majority_baseline
from xbench.readers import DataFormatError, read_head, read_rows
from xbench.runner import RunConfig, run
from xbench.tasks import TaskFileError, TaskRegistry, default_task_dirs, load_task_file
from xbench.validate import check_tasks, describe_task, validate_task_file, validate_task_files

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tasks"
BUILTIN_TASKS = Path(__file__).resolve().parent.parent / "tasks"
TASK_FILE = "ner-misc.yaml"


@pytest.fixture()
def user_dir(tmp_path: Path) -> Path:
    """A copy of the user task folder: task file, loader, metric and data."""
    folder = tmp_path / "user"
    shutil.copytree(FIXTURES / "ner_misc", folder)
    return folder


def write_variant(folder: Path, name: str, edit) -> Path:
    """Write a changed copy of the user task file into ``folder`` and return its path."""
    raw = yaml.safe_load((FIXTURES / "ner_misc" / TASK_FILE).read_text(encoding="utf-8"))
    edit(raw)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def write_yaml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def only_error(errors: list[str]) -> str:
    assert len(errors) == 1, errors
    return errors[0]


# --------------------------------------------------------------------------
# Validation errors, one per kind of mistake
# --------------------------------------------------------------------------


def test_user_task_valid_with_data(user_dir: Path):
    assert validate_task_file(user_dir / TASK_FILE, data_dir=user_dir / "data") == []


def test_unknown_key_suggests_close_name(user_dir: Path):
    path = write_variant(user_dir, "typo", lambda raw: raw.update(lables=raw.pop("labels")))

    errors = validate_task_file(path)

    assert f"{path}: lables: unknown key. Did you mean 'labels'?" in errors[0]
    assert f"{path}: labels: missing required key." in errors[1]


def test_unknown_nested_key_names_key_path(user_dir: Path):
    path = write_variant(user_dir, "nested", lambda raw: raw["training"].update(epoch=3))

    message = only_error(validate_task_file(path))

    assert message.startswith(f"{path}: training.epoch: unknown key.")
    assert "Did you mean 'epochs'?" in message


def test_duplicate_label_named(user_dir: Path):
    path = write_variant(user_dir, "duplicate", lambda raw: raw["labels"].append("B-MISC"))

    message = only_error(validate_task_file(path))

    assert message.startswith(f"{path}: labels:")
    assert "repeated: ['B-MISC']" in message


def test_unknown_metric_suggests_close_name(user_dir: Path):
    path = write_variant(user_dir, "metric", lambda raw: raw["metrics"].__setitem__(1, "presicion"))

    message = only_error(validate_task_file(path))

    assert message.startswith(f"{path}: metrics[1]: metric 'presicion' does not exist for token_classification.")
    assert "Did you mean 'precision'?" in message


def test_metric_of_other_task_type_rejected(user_dir: Path):
    path = write_variant(user_dir, "macro", lambda raw: raw["metrics"].append("macro_f1"))

    message = only_error(validate_task_file(path))

    assert "metrics[4]: metric 'macro_f1' does not exist for token_classification" in message
    assert "Available: f1, f1_strict, precision, recall, accuracy" in message


def test_main_metric_must_be_listed(user_dir: Path):
    path = write_variant(user_dir, "main", lambda raw: raw.update(main_metric="f1_strict"))

    message = only_error(validate_task_file(path))

    assert message.startswith(f"{path}: main_metric: 'f1_strict' is not listed in metrics")


def test_language_name_instead_of_code(user_dir: Path):
    path = write_variant(user_dir, "name", lambda raw: raw.update(target_languages=["de", "german"]))

    message = only_error(validate_task_file(path))

    assert message.startswith(f"{path}: target_languages[1]: 'german' is not a valid BCP-47 language code.")


def test_underscore_language_code_gets_fix(user_dir: Path):
    path = write_variant(user_dir, "underscore", lambda raw: raw.update(target_languages=["pt_BR"]))

    message = only_error(validate_task_file(path))

    assert "target_languages[0]" in message
    assert "write 'pt-BR'" in message


def test_language_with_script_accepted(user_dir: Path):
    path = write_variant(user_dir, "script", lambda raw: raw.update(target_languages=["sr-Latn", "zh-Hans"]))

    assert validate_task_file(path) == []


def test_missing_data_file_named(user_dir: Path):
    path = write_variant(user_dir, "missing", lambda raw: raw.update(target_languages=["de", "it"]))

    message = only_error(validate_task_file(path, data_dir=user_dir / "data"))

    assert message.startswith(f"{path}: sources.local.splits.test[0].path: test file not found for language 'it':")
    assert str(user_dir / "data" / "ner-misc" / "it" / "test.jsonl") in message
    assert "remove 'it' from target_languages" in message


def test_missing_source_train_file_named(user_dir: Path):
    (user_dir / "data" / "ner-misc" / "en" / "train.jsonl").unlink()

    message = only_error(validate_task_file(user_dir / TASK_FILE, data_dir=user_dir / "data"))

    assert "sources.local.splits.train[0].path: train file not found for language 'en'" in message
    assert "remove 'en' from source_language" in message


def test_unparseable_first_lines_named(user_dir: Path):
    def use_conll(raw):
        for split in ("train", "dev", "test"):
            raw["sources"]["local"]["splits"][split][0]["format"] = "conll"

    path = write_variant(user_dir, "conll", use_conll)

    errors = validate_task_file(path, data_dir=user_dir / "data")

    assert len(errors) == 4
    assert errors[0].startswith(f"{path}: sources.local.splits.train[0]: the first 5 records do not parse as format 'conll':")
    assert f"{user_dir / 'data' / 'ner-misc' / 'en' / 'train.jsonl'}:1: expected 2 tab-separated columns" in errors[0]


def test_unknown_label_in_first_records_named(user_dir: Path):
    path = write_variant(user_dir, "nomisc", lambda raw: raw.update(labels=["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]))

    errors = validate_task_file(path, data_dir=user_dir / "data")

    assert errors[0].startswith(f"{path}: sources.local.splits.train[0]:")
    assert str(user_dir / "data" / "ner-misc" / "en" / "train.jsonl") in errors[0]
    assert "has tag 'B-MISC', which is not in the task's tag set" in errors[0]


def test_unknown_path_placeholder_suggested(user_dir: Path):
    def bad_placeholder(raw):
        raw["sources"]["local"]["splits"]["test"][0]["path"] = "ner-misc/{lng}/test.jsonl"

    path = write_variant(user_dir, "placeholder", bad_placeholder)

    message = only_error(validate_task_file(path))

    assert message.startswith(f"{path}: sources.local.splits.test[0].path: unknown placeholder {{lng}}")
    assert "Did you mean '{lang}'?" in message


def test_bad_metric_attribute_named(user_dir: Path):
    path = write_variant(user_dir, "attribute", lambda raw: raw["metrics"].__setitem__(3, "nermisc_metrics:misc_f2"))

    message = only_error(validate_task_file(path))

    assert message.startswith(f"{path}: metrics[3]: metric 'nermisc_metrics:misc_f2': 'nermisc_metrics' has no attribute 'misc_f2'.")
    assert "misc_f1" in message


def test_bad_metric_module_named(user_dir: Path):
    path = write_variant(user_dir, "module", lambda raw: raw["metrics"].__setitem__(3, "xbench_no_such_module:entity_f1"))

    message = only_error(validate_task_file(path))

    assert "metrics[3]: metric 'xbench_no_such_module:entity_f1': no module named 'xbench_no_such_module'" in message
    assert "put xbench_no_such_module.py beside the task file" in message


def test_bad_loader_path_named(user_dir: Path):
    def bad_loader(raw):
        raw["sources"]["local"]["splits"]["dev"][0]["format"] = "nermisc_loaders:read_json"

    path = write_variant(user_dir, "loader", bad_loader)

    message = only_error(validate_task_file(path))

    assert message.startswith(f"{path}: sources.local.splits.dev[0].format: loader 'nermisc_loaders:read_json'")
    assert "has no attribute 'read_json'" in message


def test_metric_returning_percent_rejected(user_dir: Path):
    (user_dir / "percent_metrics.py").write_text("def word_percent(gold, pred):\n    return 100.0\n", encoding="utf-8")
    path = write_variant(user_dir, "percent", lambda raw: raw["metrics"].append("percent_metrics:word_percent"))

    message = only_error(validate_task_file(path))

    assert "metrics[4]: metric 'word_percent' failed on a sample" in message
    assert "scores must be fractions in [0, 1]" in message


def test_hub_evaluate_id_offline_names_local_path(user_dir: Path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = write_variant(user_dir, "hub", lambda raw: raw["metrics"].append({"name": "seqeval_f1", "evaluate": "seqeval"}))

    message = only_error(validate_task_file(path))

    assert message.startswith(f"{path}: metrics[4]: evaluate module 'seqeval' is a hub id, but hub access is disabled")
    assert "evaluate: ./seqeval" in message


def test_hub_evaluate_id_unreachable_names_local_path(user_dir: Path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_EVALUATE_OFFLINE", raising=False)
    # Port 9 on loopback has no listener here, so the connection is refused at once.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    path = write_variant(user_dir, "hub", lambda raw: raw["metrics"].append({"name": "seqeval_f1", "evaluate": "seqeval"}))

    message = only_error(validate_task_file(path))

    assert "127.0.0.1 is unreachable" in message
    assert "name it by local path" in message


def test_local_evaluate_module_scores(user_dir: Path):
    shutil.copytree(FIXTURES / "word_accuracy", user_dir / "word_accuracy")
    path = write_variant(user_dir, "evaluate", lambda raw: raw["metrics"].append({"evaluate": "./word_accuracy"}))
    assert validate_task_file(path) == []
    task = load_task_file(path)
    gold = [["B-PER", "O", "B-MISC"], ["O"]]
    pred = [["B-PER", "O", "O"], ["O"]]

    scores = score_task(task, gold, pred)

    assert scores["word_accuracy"] == 0.75


def test_validation_error_blocks_run_before_training(user_dir: Path, tmp_path: Path):
    write_variant(user_dir, TASK_FILE.removesuffix(".yaml"), lambda raw: raw.update(target_languages=["de", "it"]))
    output = tmp_path / "run"
    config = RunConfig(
        tasks=["ner-misc"], models=["tiny-random:no-tokenizer-needed"], output=output,
        data_dir=user_dir / "data", task_dirs=[user_dir],
    )

    with pytest.raises(TaskFileError) as caught:
        run(config)

    assert "test file not found for language 'it'" in str(caught.value)
    assert not (output / "checkpoints").exists()


def test_check_tasks_without_data_dir_needs_hub(user_dir: Path):
    task = load_task_file(user_dir / TASK_FILE)

    with pytest.raises(TaskFileError) as caught:
        check_tasks([task], data_dir=None)

    assert "sources.hub: missing, and no --data-dir was given" in str(caught.value)


def test_cli_validate_reports_and_fails(user_dir: Path, capsys):
    path = write_variant(user_dir, "duplicate", lambda raw: raw["labels"].append("O"))

    status = cli.main(["tasks", "validate", str(user_dir / TASK_FILE), str(path), "--data-dir", str(user_dir / "data")])

    output = capsys.readouterr().out
    assert status == 1
    assert f"{user_dir / TASK_FILE}: OK" in output
    assert "repeated: ['O']" in output
    assert "1 of 2 task file(s) valid." in output


def test_cli_show_prints_merged_task(user_dir: Path, tmp_path: Path, capsys):
    override = write_yaml(tmp_path / "override" / "ner-misc.yaml", "name: ner-misc\nextends: ner-misc\ntarget_languages: [de, fr]\n")

    status = cli.main(["tasks", "show", "ner-misc", "--tasks-dir", str(user_dir), "--tasks-dir", str(override.parent)])

    output = capsys.readouterr().out
    assert status == 0
    assert "# languages: en (source), de, fr" in output
    assert yaml.safe_load(output)["labels"][-1] == "I-MISC"


# --------------------------------------------------------------------------
# Inheritance
# --------------------------------------------------------------------------


def test_builtin_override_keeps_name(tmp_path: Path):
    write_yaml(tmp_path / "xnli.yaml", "name: xnli\nextends: xnli\ntarget_languages: [de, sw]\n")
    builtin = TaskRegistry().get("xnli")

    task = TaskRegistry(default_task_dirs() + [tmp_path]).get("xnli")

    assert task.target_languages == ("de", "sw")
    assert task.labels == builtin.labels
    assert task.label_aliases == builtin.label_aliases
    assert task.local == builtin.local
    assert task.extends == "xnli"


def test_override_chain_lists_both_files(tmp_path: Path):
    override = write_yaml(tmp_path / "xnli.yaml", "name: xnli\nextends: xnli\ntarget_languages: [de]\n")

    registry = TaskRegistry(default_task_dirs() + [tmp_path])

    assert registry.chain("xnli") == (BUILTIN_TASKS / "xnli.yaml", override)


def test_extends_merges_mappings_and_replaces_lists(tmp_path: Path):
    write_yaml(tmp_path / "xnli-short.yaml", """\
        name: xnli-short
        extends: xnli
        metrics: [accuracy]
        label_aliases: {ent: entailment}
        training: {epochs: 1}
        """)
    builtin = TaskRegistry().get("xnli")

    task = TaskRegistry(default_task_dirs() + [tmp_path]).get("xnli-short")

    assert task.metrics == ("accuracy",)
    assert task.training.epochs == 1
    assert task.training.learning_rate == builtin.training.learning_rate
    assert task.label_aliases == {**builtin.label_aliases, "ent": "entailment"}
    assert TaskRegistry(default_task_dirs() + [tmp_path]).get("xnli").training.epochs == builtin.training.epochs


def test_extends_takes_overridden_base(tmp_path: Path):
    write_yaml(tmp_path / "a" / "xnli.yaml", "name: xnli\nextends: xnli\ntarget_languages: [de]\n")
    write_yaml(tmp_path / "a" / "xnli-copy.yaml", "name: xnli-copy\nextends: xnli\n")

    task = TaskRegistry(default_task_dirs() + [tmp_path / "a"]).get("xnli-copy")

    assert task.target_languages == ("de",)


def test_null_removes_inherited_source(tmp_path: Path):
    write_yaml(tmp_path / "xnli-local.yaml", "name: xnli-local\nextends: xnli\nsources: {hub: null}\n")

    task = TaskRegistry(default_task_dirs() + [tmp_path]).get("xnli-local")

    assert task.hub is None
    assert task.local is not None


def test_extends_unknown_task_suggests(tmp_path: Path):
    path = write_yaml(tmp_path / "typo.yaml", "name: xnli-x\nextends: xnlj\n")

    message = only_error(validate_task_file(path))

    assert message.startswith(f"{path}: extends: unknown task 'xnlj'. Did you mean: xnli?")


def test_extends_own_name_needs_earlier_task(tmp_path: Path):
    path = write_yaml(tmp_path / "new.yaml", "name: brand-new\nextends: brand-new\n")

    message = only_error(validate_task_file(path))

    assert "extends its own name 'brand-new', but no earlier task file defines it" in message


def test_extends_cycle_rejected(tmp_path: Path):
    write_yaml(tmp_path / "a.yaml", "name: task-a\nextends: task-b\n")
    write_yaml(tmp_path / "b.yaml", "name: task-b\nextends: task-a\n")

    with pytest.raises(TaskFileError) as caught:
        TaskRegistry(default_task_dirs() + [tmp_path])

    assert "circular inheritance" in str(caught.value)


def test_extended_file_keeps_missing_key_errors(tmp_path: Path):
    path = write_yaml(tmp_path / "bad.yaml", "name: xnli-bad\nextends: xnli\nlabels: [entailment, entailment, neutral]\n")

    errors = validate_task_file(path)

    assert any("repeated: ['entailment']" in error for error in errors)


def test_validate_files_later_extends_earlier(user_dir: Path, tmp_path: Path):
    child = write_yaml(tmp_path / "child.yaml", "name: ner-misc-fr\nextends: ner-misc\ntarget_languages: [fr]\n")

    results = validate_task_files([user_dir / TASK_FILE, child], data_dir=user_dir / "data")

    assert results == {user_dir / TASK_FILE: [], child: []}


def test_missing_tasks_dir_named(tmp_path: Path):
    with pytest.raises(TaskFileError) as caught:
        TaskRegistry([tmp_path / "nowhere"])

    assert "tasks folder not found" in str(caught.value)


def test_describe_task_names_files(user_dir: Path):
    registry = TaskRegistry(default_task_dirs() + [user_dir])

    text = describe_task(registry, "ner-misc")

    assert text.startswith(f"# task ner-misc, read from {user_dir / TASK_FILE}")


# --------------------------------------------------------------------------
# Readers: first records only, and loaders
# --------------------------------------------------------------------------


def test_read_head_stops_before_bad_bytes(tmp_path: Path):
    path = tmp_path / "late.tsv"
    path.write_bytes(b"text\tlabel\n" + b"".join(b"row %d\tpositive\n" % i for i in range(8)) + b"bad \xff\tpositive\n")

    rows = read_head("tsv", path, records=3)

    assert [row.line for row in rows] == [2, 3, 4]
    with pytest.raises(DataFormatError):
        read_rows("tsv", path)


def test_read_head_counts_conll_sentences(tmp_path: Path):
    path = tmp_path / "head.conll"
    path.write_text("A\tB-PER\n\nB\tO\nC\tO\n\nD\tO\n\nE\tnot-a-column\textra\n", encoding="utf-8")

    rows = read_head("conll", path, records=3)

    assert [row.values["tokens"] for row in rows] == [["A"], ["B", "C"], ["D"]]


def test_read_head_invalid_utf8_same_offset_as_full_read(tmp_path: Path):
    path = tmp_path / "bad.tsv"
    path.write_bytes(b"a\tb\n1\t2\n\xc3(\t3\n")

    with pytest.raises(DataFormatError) as head_error:
        read_head("tsv", path, records=5)
    with pytest.raises(DataFormatError) as full_error:
        read_rows("tsv", path)

    assert str(head_error.value) == str(full_error.value)


def test_loader_returning_dicts_numbered(tmp_path: Path, monkeypatch):
    (tmp_path / "dict_loader_module.py").write_text(
        "def load(path, fields, labels_path):\n    return [{'text': 'a', 'label': 'x'}, {'text': 'b', 'label': 'y'}]\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    rows = read_rows("dict_loader_module:load", tmp_path / "any.txt")

    assert [(row.line, row.values["text"]) for row in rows] == [(1, "a"), (2, "b")]


def test_loader_returning_strings_rejected(tmp_path: Path, monkeypatch):
    (tmp_path / "str_loader_module.py").write_text("def load(path, fields, labels_path):\n    return ['a b']\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(DataFormatError) as caught:
        read_rows("str_loader_module.load", tmp_path / "any.txt")

    assert "returned a str as record 1" in str(caught.value)


# --------------------------------------------------------------------------
# Custom main metric: interval and baseline
# --------------------------------------------------------------------------


def test_custom_main_metric_interval_and_baseline(user_dir: Path):
    path = write_variant(user_dir, "main-misc", lambda raw: raw.update(main_metric="misc_f1"))
    task = load_task_file(path)
    gold = [["B-MISC", "O"], ["O", "B-PER"], ["B-MISC", "I-MISC"], ["O"]]
    pred = [["B-MISC", "O"], ["O", "O"], ["B-MISC", "O"], ["O"]]
    point = score_task(task, gold, pred)["misc_f1"]

    low, high = task_bootstrap_ci(task, "misc_f1", gold, pred, samples=50)
    label, baseline = task_majority_baseline(task, gold, [])

    assert point == 0.5
    assert low <= point <= high
    assert (label, baseline) == ("O", 0.0)


# --------------------------------------------------------------------------
# End to end with the tiny model
# --------------------------------------------------------------------------


def tiny_config(user_dir: Path, output: Path, tokenizer_dir: Path, task_dirs: list[Path]) -> RunConfig:
    return RunConfig(
        tasks=["ner-misc"],
        models=[f"tiny-random:{tokenizer_dir}"],
        output=output,
        data_dir=user_dir / "data",
        task_dirs=task_dirs,
        epochs=1,
        batch_size=4,
        max_seq_length=32,
    )


def stored_records(output: Path) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in (output / "store" / "ner-misc").rglob("*.json")}


def test_user_task_runs_end_to_end(user_dir: Path, tmp_path: Path, mbert_tokenizer_dir: Path):
    output = tmp_path / "run"

    run(tiny_config(user_dir, output, mbert_tokenizer_dir, [user_dir]))

    records = stored_records(output)
    assert set(records) == {"en", "de"}
    for record in records.values():
        assert record["main_metric"] == "f1"
        assert 0.0 <= record["scores"]["misc_f1"] <= 1.0
        assert "f1_MISC" in record["scores"]
    assert "## ner-misc" in (output / "leaderboard.md").read_text(encoding="utf-8")


def test_language_added_by_override_scored(user_dir: Path, tmp_path: Path, mbert_tokenizer_dir: Path, caplog):
    output = tmp_path / "run"
    run(tiny_config(user_dir, output, mbert_tokenizer_dir, [user_dir]))
    before = {language: record["created_at"] for language, record in stored_records(output).items()}
    override = write_yaml(tmp_path / "override" / "ner-misc.yaml", "name: ner-misc\nextends: ner-misc\ntarget_languages: [de, fr]\n")

    with caplog.at_level("INFO"):
        run(tiny_config(user_dir, output, mbert_tokenizer_dir, [user_dir, override.parent]))

    records = stored_records(output)
    assert set(records) == {"en", "de", "fr"}
    assert {language: records[language]["created_at"] for language in before} == before
    assert "reusing the finished fine-tuning" in caplog.text
    rows = json.loads((output / "results.json").read_text(encoding="utf-8"))
    assert {row["language"] for row in rows if row["main"]} == {"en", "de", "fr"}


def test_builtin_tasks_valid_against_data(data_dir: Path):
    results = validate_task_files(sorted(BUILTIN_TASKS.glob("*.yaml")), data_dir=data_dir)

    assert results == {path: [] for path in sorted(BUILTIN_TASKS.glob("*.yaml"))}


def test_data_root_one_level_up_named(data_dir):
    registry = TaskRegistry()
    with pytest.raises(TaskFileError) as caught:
        check_tasks([registry.get("xnli")], data_dir.parent)
    assert len(caught.value.errors) == 1
    assert "Point --data-dir at the folder that contains" in caught.value.errors[0]
    assert "xnli/test-{lang}.tsv" in caught.value.errors[0]


def test_validate_without_data_needs_train_split(tmp_path):
    task_file = tmp_path / "no-train.yaml"
    spec = yaml.safe_load((default_task_dirs()[0] / "sentiment.yaml").read_text(encoding="utf-8"))
    spec["name"] = "no-train"
    del spec["sources"]["local"]["splits"]["train"]
    task_file.write_text(yaml.safe_dump(spec), encoding="utf-8")
    errors = validate_task_files([task_file])[task_file]
    assert any("sources.local.splits.train: missing" in error for error in errors)
