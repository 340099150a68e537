"""Data-parallel runs on CPU: two processes with gloo, under torchrun and accelerate launch.

What is compared with a single process, and why it must be equal:

* Training is not compared. With two ranks each step splits the global batch
  in two, the length-grouped sampler builds other batches, and the
  gradients are averaged over per-rank means, so the weights differ from a
  single-process run in the last bits or more.
* Evaluation is compared exactly. The two-process run's checkpoint is copied
  into a fresh run folder and scored there by one process. The scores and
  the per-word predictions of every language must equal those of the
  two-process run. Rank 1 scored its languages with the weights it held in
  memory, so equality also shows that both ranks kept the same epoch as the
  checkpoint that rank 0 saved. Both sides score the same fixed examples
  with the same weights on one CPU thread each, so nothing else can differ.

The torchrun runs go through a small wrapper of ``run_benchmark.py`` that
records, per rank, every file that it renames into place and every model
that it saves. That shows which ranks write.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from xbench.models import CHECKPOINT_INFO
from xbench.results import load_records

REPO_ROOT = Path(__file__).resolve().parent.parent
LAUNCH_TIMEOUT_S = 300
LANGUAGES = {"en", "de", "fr"}
TRAIN_EXAMPLES = 16
BATCH_SIZE = 4
EPOCHS = 2

# Runs run_benchmark.py after wrapping os.replace (the last step of every
# atomic write) and save_pretrained to log what this rank writes.
WRITE_AUDIT = """
import os
import runpy
import sys

log_path = os.environ["XBENCH_TEST_WRITE_LOG"] + ".rank-" + os.environ.get("RANK", "0")
original_replace = os.replace


def logged_replace(source, destination, *args, **kwargs):
    original_replace(source, destination, *args, **kwargs)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"replace {os.path.abspath(destination)}\\n")


os.replace = logged_replace

import transformers

original_save = transformers.PreTrainedModel.save_pretrained


def logged_save(self, directory, *args, **kwargs):
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"save_pretrained {os.path.abspath(directory)}\\n")
    return original_save(self, directory, *args, **kwargs)


transformers.PreTrainedModel.save_pretrained = logged_save
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _run_arguments(data_dir: Path, tokenizer_dir: Path, output: Path) -> list[str]:
    return [
        "--tasks", "wikiann",
        "--model", f"tiny-random:{tokenizer_dir}",
        "--data-dir", str(data_dir),
        "--target-langs", "de,fr",
        "--max-train-examples", str(TRAIN_EXAMPLES),
        "--max-eval-examples", "10",
        "--max-dev-examples", "10",
        "--epochs", str(EPOCHS),
        "--batch-size", str(BATCH_SIZE),
        "--max-seq-length", "32",
        "--output", str(output),
    ]


def _environment(write_log: Path | None = None, home: Path | None = None) -> dict[str, str]:
    # One thread per process, as in the single-process comparison run.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if write_log is not None:
        env["XBENCH_TEST_WRITE_LOG"] = str(write_log)
    if home is not None:
        # accelerate launch reads its default config from HF_HOME; an empty one means none.
        env["HF_HOME"] = str(home)
    return env


def _launch(command: list[str], env: dict[str, str], log_path: Path) -> str:
    with log_path.open("w", encoding="utf-8") as log:
        completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=log_path.parent, timeout=LAUNCH_TIMEOUT_S)
    text = log_path.read_text(encoding="utf-8")
    assert completed.returncode == 0, f"{' '.join(command[:6])} ... failed:\n{text[-4000:]}"
    return text


def _torchrun(script: Path, arguments: list[str], env: dict[str, str], log_path: Path) -> str:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(script), *arguments]
    return _launch(command, env, log_path)


def _audited_torchrun(folder: Path, arguments: list[str], name: str) -> tuple[str, Path]:
    audit = folder / "write_audit.py"
    audit.write_text(WRITE_AUDIT, encoding="utf-8")
    write_log = folder / f"{name}-writes"
    text = _torchrun(audit, [str(REPO_ROOT / "run_benchmark.py"), *arguments], _environment(write_log), folder / f"{name}.log")
    return text, write_log


def _writes(write_log: Path, rank: int) -> list[tuple[str, Path]]:
    path = Path(f"{write_log}.rank-{rank}")
    if not path.is_file():
        return []
    return [(kind, Path(target)) for kind, target in (line.split(" ", 1) for line in path.read_text(encoding="utf-8").splitlines())]


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _records(run_dir: Path) -> dict[str, dict]:
    return {record["language"]: record for record in load_records([run_dir / "store"])}


def _predictions(run_dir: Path, record: dict) -> list[dict]:
    lines = (run_dir / record["predictions_file"]).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _result_files(run_dir: Path) -> list[Path]:
    return sorted(path for path in (run_dir / "store").rglob("*.json") if not path.name.startswith("."))


def _checkpoint_infos(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").rglob(CHECKPOINT_INFO))


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, data_dir, mbert_tokenizer_dir):
    """A two-process torchrun run that fine-tunes and scores en, de and fr."""
    folder = tmp_path_factory.mktemp("ddp")
    output = folder / "run"
    log, write_log = _audited_torchrun(folder, _run_arguments(data_dir, mbert_tokenizer_dir, output), "first")
    return {"output": output, "log": log, "write_log": write_log, "folder": folder}


def test_ddp_run_stores_each_language_once(ddp_run):
    files = _result_files(ddp_run["output"])
    languages = [path.stem for path in files]
    assert sorted(languages) == sorted(LANGUAGES)
    assert not list(ddp_run["output"].rglob("*.tmp"))


def test_ddp_run_shares_languages_across_ranks(ddp_run):
    records = _records(ddp_run["output"])
    ranks = {language: record["provenance"]["rank"] for language, record in records.items()}
    # Plan order is en, de, fr, dealt out round-robin over two ranks.
    assert ranks == {"en": 0, "de": 1, "fr": 0}
    assert {record["provenance"]["world_size"] for record in records.values()} == {2}


def test_ddp_run_writes_from_rank_zero_only(ddp_run):
    output = ddp_run["output"]
    rank_zero = _writes(ddp_run["write_log"], 0)
    rank_one = _writes(ddp_run["write_log"], 1)
    written_by_zero = {target for kind, target in rank_zero if _inside(target, output)}
    assert {path.resolve() for path in _result_files(output)} <= written_by_zero
    assert (output / "config.json").resolve() in written_by_zero
    assert (output / "results.json").resolve() in written_by_zero
    assert [target for kind, target in rank_zero if kind == "save_pretrained"] != []
    assert [target for kind, target in rank_one if _inside(target, output)] == []
    assert [target for kind, target in rank_one if kind == "save_pretrained"] == []


def test_ddp_run_trains_with_global_batch(ddp_run):
    info = json.loads(_checkpoint_infos(ddp_run["output"])[0].read_text(encoding="utf-8"))
    assert info["world_size"] == 2
    # --batch-size is the global batch: each rank takes half of it per step.
    assert info["steps"] == EPOCHS * math.ceil(TRAIN_EXAMPLES / BATCH_SIZE)
    assert len(info["dev_scores"]) == EPOCHS


def test_ddp_scores_equal_single_process(ddp_run, data_dir, mbert_tokenizer_dir, tmp_path):
    import torch

    from xbench.cli import build_parser, config_from_args
    from xbench.runner import run

    single = tmp_path / "single"
    shutil.copytree(ddp_run["output"] / "checkpoints", single / "checkpoints")
    args = build_parser().parse_args(["run", *_run_arguments(data_dir, mbert_tokenizer_dir, single)])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(config_from_args(args))
    finally:
        torch.set_num_threads(threads)

    parallel_records, single_records = _records(ddp_run["output"]), _records(single)
    assert sorted(single_records) == sorted(parallel_records)
    for language, record in parallel_records.items():
        assert single_records[language]["scores"] == record["scores"], language
        assert _predictions(single, single_records[language]) == _predictions(ddp_run["output"], record), language
        # The same fine-tuning record shows the copied checkpoint was reused, not retrained.
        assert single_records[language]["fine_tuning"] == record["fine_tuning"], language
        assert single_records[language]["provenance"]["world_size"] == 1, language


def test_ddp_resume_scores_only_missing_language(ddp_run, data_dir, mbert_tokenizer_dir, tmp_path):
    output = tmp_path / "run"
    shutil.copytree(ddp_run["output"], output)
    before = _records(output)
    info_path = _checkpoint_infos(output)[0]
    info_mtime = info_path.stat().st_mtime_ns
    store_dir = _result_files(output)[0].parent
    (store_dir / "fr.json").unlink()
    (output / before["fr"]["predictions_file"]).unlink()

    log, write_log = _audited_torchrun(tmp_path, _run_arguments(data_dir, mbert_tokenizer_dir, output), "resume")

    after = _records(output)
    written = {target for kind, target in _writes(write_log, 0) if _inside(target, output / "store")}
    assert written == {(store_dir / "fr.json").resolve()}
    assert "reusing the finished fine-tuning" in log
    assert info_path.stat().st_mtime_ns == info_mtime
    assert after["fr"]["scores"] == before["fr"]["scores"]
    assert _writes(write_log, 1) == []


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_accelerate_launch_two_processes(data_dir, mbert_tokenizer_dir, tmp_path):
    output = tmp_path / "run"
    # --multi_gpu selects accelerate's torchrun-based launcher. On a machine
    # without GPUs the processes train on CPU with gloo. --cpu would start a
    # single process unless given an MPI host file.
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
        str(REPO_ROOT / "run_benchmark.py"), *_run_arguments(data_dir, mbert_tokenizer_dir, output),
    ]
    _launch(command, _environment(home=tmp_path / "hf-home"), tmp_path / "accelerate.log")

    records = _records(output)
    assert sorted(records) == sorted(LANGUAGES)
    assert {record["provenance"]["rank"] for record in records.values()} == {0, 1}
    assert len(_checkpoint_infos(output)) == 1
