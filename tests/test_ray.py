"""The Ray launcher on a local Ray instance: 2 CPUs, no dashboard, no usage reporting.

The grid is wikiann (en and de) x two tiny random models x seeds 1 and 2, on
a few real examples. The tiny models differ in their tokenizer: M-BERT's, and
the demo's vocabulary built from the bundled toy texts. Tests that need Ray
skip when it is not installed, and fail when CI is set.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

from xbench.launchers import DONE, FAIL_ONCE_ENV, FAILED, SKIPPED, RayOptions, run_ray
from xbench.runner import RunConfig, run

LANGUAGES = ["en", "de"]
SEEDS = [1, 2]


def _require(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required when CI is set)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def ray_instance():
    """A Ray instance started by this test module on this machine only, shut down at the end."""
    try:
        import ray
    except ImportError:
        _require('ray is not installed; pip install -e ".[test]"')
    previous = os.environ.get("RAY_USAGE_STATS_ENABLED")
    # Ray's usage statistics would be sent to an outside server.
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # address="local" always starts a new instance, never joins another cluster.
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        if previous is None:
            os.environ.pop("RAY_USAGE_STATS_ENABLED", None)
        else:
            os.environ["RAY_USAGE_STATS_ENABLED"] = previous


@pytest.fixture(scope="module")
def models(tmp_path_factory, mbert_tokenizer_dir) -> list[str]:
    from xbench.demo import build_demo_tokenizer

    demo_tokenizer = build_demo_tokenizer(tmp_path_factory.mktemp("demo") / "demo-tokenizer")
    return [f"tiny-random:{mbert_tokenizer_dir}", f"tiny-random:{demo_tokenizer}"]


def _grid_config(output: Path, data_dir: Path, models: list[str], seeds: list[int] = SEEDS) -> RunConfig:
    return RunConfig(
        tasks=["wikiann"],
        models=models,
        output=output,
        data_dir=data_dir,
        target_langs=["de"],
        max_train_examples=8,
        max_eval_examples=10,
        max_dev_examples=5,
        epochs=1,
        batch_size=4,
        max_seq_length=32,
        seeds=seeds,
    )


def _result_files(run_dir: Path) -> list[Path]:
    return sorted(path for path in (run_dir / "store").rglob("*.json") if not path.name.startswith("."))


@pytest.fixture(scope="module")
def ray_grid(ray_instance, tmp_path_factory, data_dir, models):
    """The 2 x 2 grid on Ray, with one unit made to fail once after storing its first result."""
    folder = tmp_path_factory.mktemp("ray-grid")
    marker = folder / "failed-once"
    os.environ[FAIL_ONCE_ENV] = str(marker)
    try:
        report = run_ray(_grid_config(folder / "run", data_dir, models), RayOptions(max_retries=2))
    finally:
        os.environ.pop(FAIL_ONCE_ENV, None)
    return {"report": report, "output": folder / "run", "marker": marker}


def test_ray_grid_runs_every_unit(ray_grid):
    report = ray_grid["report"]
    assert report.count(DONE) == 4
    assert report.count(FAILED) == 0
    assert report.count(SKIPPED) == 0


def test_ray_grid_stores_each_result_once(ray_grid, models):
    files = _result_files(ray_grid["output"])
    keys = {(path.parent.parent.name, path.parent.name, path.stem) for path in files}
    assert len(files) == len(models) * len(SEEDS) * len(LANGUAGES)
    assert len(keys) == len(files)


def test_ray_retry_resumes_from_store(ray_grid):
    retried = [outcome for outcome in ray_grid["report"].outcomes if outcome.attempts > 1]
    assert ray_grid["marker"].is_file()
    assert len(retried) == 1
    outcome = retried[0]
    assert outcome.attempts == 2
    # The first attempt stored en and then failed; the retry scored only de.
    assert outcome.stored_per_attempt == [["en"], ["de"]]
    # The retry reused the fine-tuning of the first attempt.
    assert outcome.reused_checkpoint_per_attempt == [False, True]


def test_ray_second_invocation_submits_nothing(ray_grid, data_dir, models):
    output = ray_grid["output"]
    before = {path: path.stat().st_mtime_ns for path in _result_files(output)}

    report = run_ray(_grid_config(output, data_dir, models), RayOptions())

    assert report.count(SKIPPED) == 4
    assert report.count(DONE) == 0
    assert all(outcome.attempts == 0 for outcome in report.outcomes)
    assert {path: path.stat().st_mtime_ns for path in _result_files(output)} == before


def test_ray_leaderboard_equals_local(ray_grid, data_dir, models, tmp_path):
    import torch

    threads = torch.get_num_threads()
    # Each Ray unit ran on one thread (--cpus-per-run 1), so the local run does too.
    torch.set_num_threads(1)
    try:
        run(_grid_config(tmp_path / "local", data_dir, models))
    finally:
        torch.set_num_threads(threads)

    for name in ("leaderboard.md", "leaderboard.csv"):
        ray_board = (ray_grid["output"] / name).read_text(encoding="utf-8")
        local_board = (tmp_path / "local" / name).read_text(encoding="utf-8")
        assert ray_board == local_board, name


def test_ray_cli_failed_unit_exit_code(ray_instance, data_dir, models, tmp_path, monkeypatch, caplog):
    from xbench.cli import main

    monkeypatch.setenv(FAIL_ONCE_ENV, str(tmp_path / "failed-once"))
    caplog.set_level(logging.INFO, logger="xbench")
    output = tmp_path / "run"
    code = main([
        "run", "--launcher", "ray", "--max-retries", "0",
        "--tasks", "wikiann", "--models", models[0], "--seeds", "1,2",
        "--data-dir", str(data_dir), "--target-langs", "de", "--output", str(output),
        "--max-train-examples", "8", "--max-eval-examples", "10", "--max-dev-examples", "5",
        "--epochs", "1", "--batch-size", "4", "--max-seq-length", "32",
    ])

    assert code == 1
    assert "1 done, 1 failed, 0 skipped" in caplog.text
    assert "InjectedFailure" in caplog.text
    # The other unit went on: both of its languages plus the failed unit's first one.
    assert len(_result_files(output)) == 3


def test_ray_launcher_without_ray_names_install(monkeypatch, tmp_path, caplog):
    from xbench.cli import main

    # None in sys.modules makes "import ray" raise ImportError.
    monkeypatch.setitem(sys.modules, "ray", None)
    code = main(["run", "--launcher", "ray", "--tasks", "wikiann", "--output", str(tmp_path / "run")])

    assert code == 2
    assert 'pip install -e ".[ray]"' in caplog.text
    assert not (tmp_path / "run").exists()


def test_ray_flags_need_ray_launcher(tmp_path, caplog):
    from xbench.cli import main

    code = main(["run", "--tasks", "wikiann", "--max-retries", "1", "--output", str(tmp_path / "run")])

    assert code == 2
    assert "Only --launcher ray uses --max-retries" in caplog.text


def test_models_flag_adds_to_model():
    from xbench.cli import build_parser, config_from_args

    args = build_parser().parse_args(["run", "--model", "a", "--models", "b, c,a"])

    assert config_from_args(args).models == ["a", "b", "c"]
