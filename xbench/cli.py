"""Command line: ``xbench run``, ``xbench tasks list|show|validate`` and ``xbench leaderboard``.

The command line parses flags into a :class:`~xbench.runner.RunConfig` and
calls the library. ``python run_benchmark.py`` takes the same flags as
``xbench run``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__

logger = logging.getLogger("xbench")


def _int_list(text: str) -> list[int]:
    try:
        return [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _str_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", type=_str_list, default=None, help="Comma-separated task names (default: xnli,wikiann,sentiment; see 'xbench tasks list').")
    parser.add_argument("--model", action="append", default=None, help=(
        "Model to fine-tune: a local model folder or a Hugging Face Hub id (default: bert-base-multilingual-cased). "
        "Also 'tiny-random:TOKENIZER' for a tiny random BERT on a tokenizer, and 'random-init:MODEL' for MODEL's "
        "architecture with random weights. Repeat the flag to run several models."))
    parser.add_argument("--models", type=_str_list, default=None, help="Comma-separated models, same forms as --model, run after those of --model (default: none).")
    parser.add_argument("--data-dir", type=Path, default=None, help="Local data root laid out as the task files' local sources say (default: none, so data comes from the Hugging Face Hub).")
    parser.add_argument("--output", type=Path, default=None, help="Run folder for results, predictions, checkpoints and tables (default: runs/xbench). Rerunning with the same folder resumes.")
    parser.add_argument("--source-lang", default=None, help="Language to fine-tune on (default: each task's source_language, en).")
    parser.add_argument("--target-langs", type=_str_list, default=None, help="Comma-separated languages to score (default: every language the task declares).")
    parser.add_argument("--max-train-examples", type=int, default=None, help="Train on at most this many examples, chosen at random with a fixed seed (default: all; quick preset: 2000).")
    parser.add_argument("--max-eval-examples", type=int, default=None, help="Score at most this many test examples per language, chosen the same way (default: all; quick preset: 500).")
    parser.add_argument("--max-dev-examples", type=int, default=None, help="Use at most this many source-language dev examples for epoch selection (default: all; quick preset: 300).")
    parser.add_argument("--epochs", type=float, default=None, help="Training epochs (default: the task file's, e.g. 5 for xnli, 10 for wikiann; quick preset: 3).")
    parser.add_argument("--learning-rate", type=float, default=None, help="Peak AdamW learning rate (default: the task file's, 2e-5; quick preset: 5e-5).")
    parser.add_argument("--batch-size", type=int, default=None, help="Training batch size in examples, summed over all processes under torchrun or accelerate launch (default: the task file's, 32).")
    parser.add_argument("--max-seq-length", type=int, default=None, help="Maximum subword tokens per model input (default: the task file's, 128). Longer NER sentences are split into windows.")
    parser.add_argument("--seed", type=int, default=None, help="Random seed for fine-tuning (default: 1).")
    parser.add_argument("--seeds", type=_int_list, default=None, help="Comma-separated seeds; fine-tunes once per seed and reports mean and standard deviation (default: the one seed of --seed).")
    parser.add_argument("--preset", choices=["quick", "demo"], default=None, help=(
        "'quick': a subsampled first look that ends in minutes on a CPU. 'demo': bundled toy data and a tiny model "
        "built on the fly; needs no network, data or download, and its scores mean nothing."))
    parser.add_argument("--overwrite", choices=["skip", "recompute", "fail"], default="skip", help="What to do with results already in the run folder: skip them (default), recompute them, or fail.")
    parser.add_argument("--tasks-dir", type=Path, action="append", default=None, help="Folder of extra task files (*.yaml), added to the built-in tasks. Repeatable (default: built-in tasks only).")
    parser.add_argument("--cache-dir", type=Path, default=None, help="Folder for tokenised splits reused across runs (default: $XBENCH_CACHE_DIR, else ~/.cache/xbench/encoded).")
    parser.add_argument("--no-cache", action="store_true", help="Tokenise every split afresh and write no cache files (default: off, so cached tokenisation is reused).")
    parser.add_argument("--skip-training", action="store_true", help="Evaluate --model as given; it must be a checkpoint fine-tuned for the task with the same labels.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log debug messages.")
    launch = parser.add_argument_group("launcher", "Where the task x model x seed units run. See docs/scaling-out.md.")
    launch.add_argument("--launcher", choices=["local", "ray"], default="local", help=(
        "'local' (default): one unit after another in this process, or in every rank under torchrun. "
        "'ray': each unit is a Ray task; needs Ray (pip install -e \".[ray]\" in the xbench folder) and a run folder that every node shares."))
    launch.add_argument("--ray-address", default=None, help="Ray cluster to connect to, as 'auto' or HOST:PORT (default: RAY_ADDRESS, else the cluster started last on this machine, else a new local instance).")
    launch.add_argument("--cpus-per-run", type=float, default=None, help="CPUs Ray reserves for each unit; also its torch thread count (default: 1).")
    launch.add_argument("--gpus-per-run", type=float, default=None, help="GPUs Ray reserves for each unit (default: 0).")
    launch.add_argument("--max-retries", type=int, default=None, help="Times Ray reruns a failed unit; a rerun resumes from the results store (default: 2).")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xbench", description="Zero-shot cross-lingual transfer benchmark.")
    parser.add_argument("--version", action="version", version=f"xbench {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run_parser = commands.add_parser("run", help="Fine-tune on the source language and score every target language.")
    add_run_arguments(run_parser)

    tasks_parser = commands.add_parser("tasks", help="List, show and validate task files.")
    tasks_commands = tasks_parser.add_subparsers(dest="tasks_command", required=True)
    list_parser = tasks_commands.add_parser("list", help="Show each task with its languages and data sources.")
    list_parser.add_argument("--tasks-dir", type=Path, action="append", default=None, help="Folder of extra task files. Repeatable.")
    show_parser = tasks_commands.add_parser("show", help="Print a task as YAML after merging what it extends.")
    show_parser.add_argument("name", help="Task name, as in 'xbench tasks list'.")
    show_parser.add_argument("--tasks-dir", type=Path, action="append", default=None, help="Folder of extra task files. Repeatable.")
    validate_parser = tasks_commands.add_parser("validate", help="Check task files, their code and (with --data-dir) their data, without training.")
    validate_parser.add_argument("files", nargs="+", type=Path, help="Task files (*.yaml). A file may extend a file given before it.")
    validate_parser.add_argument("--data-dir", type=Path, default=None, help="Local data root: check that each file the run reads exists and that its first records parse.")
    validate_parser.add_argument("--tasks-dir", type=Path, action="append", default=None, help="Folder of extra task files that the files may extend. Repeatable.")

    board_parser = commands.add_parser("leaderboard", help="Collect stored results of many runs into tables.")
    board_parser.add_argument("results", nargs="+", type=Path, help="Run folders, store folders or result JSON files.")
    board_parser.add_argument("--output", type=Path, default=None, help="Folder for leaderboard.{md,csv,tex,json,html} and PNG plots (default: print markdown only).")

    compare_parser = commands.add_parser("compare", help="Per-language difference between two runs, with paired bootstrap p-values.")
    compare_parser.add_argument("run_a", type=Path, help="Run folder of system A.")
    compare_parser.add_argument("run_b", type=Path, help="Run folder of system B.")

    pretrain_parser = commands.add_parser("pretrain", help="Pretrain a small multilingual BERT with MLM (and NSP) on a corpus folder.")
    add_pretrain_arguments(pretrain_parser)
    return parser


def setup_logging(verbose: bool = False) -> None:
    from . import distributed

    # Under torchrun, ranks other than 0 log warnings and errors only and
    # show no progress bars. This runs before tqdm is imported.
    distributed.quiet_other_ranks()
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level if distributed.is_main() else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    import transformers

    transformers.logging.set_verbosity_warning()


def config_from_args(args: argparse.Namespace):
    from .runner import RunConfig

    seeds = args.seeds or [args.seed if args.seed is not None else 1]
    config = RunConfig(
        tasks=args.tasks or ["xnli", "wikiann", "sentiment"],
        models=_models_from_args(args),
        output=args.output or Path("runs/xbench"),
        data_dir=args.data_dir,
        source_lang=args.source_lang,
        target_langs=args.target_langs,
        max_train_examples=args.max_train_examples,
        max_eval_examples=args.max_eval_examples,
        max_dev_examples=args.max_dev_examples,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        max_seq_length=args.max_seq_length,
        seeds=seeds,
        overwrite=args.overwrite,
        task_dirs=args.tasks_dir,
        skip_training=args.skip_training,
        preset=args.preset,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
    )
    if args.preset == "demo":
        from .demo import demo_config

        config = demo_config(config, explicit_tasks=args.tasks is not None, explicit_model=args.model is not None, explicit_output=args.output is not None)
    return config


def _models_from_args(args: argparse.Namespace) -> list[str]:
    models = list(dict.fromkeys((args.model or []) + (args.models or [])))
    return models or ["bert-base-multilingual-cased"]


RAY_FLAGS = {"ray_address": "--ray-address", "cpus_per_run": "--cpus-per-run", "gpus_per_run": "--gpus-per-run", "max_retries": "--max-retries"}


def command_run(args: argparse.Namespace) -> int:
    if args.launcher == "ray":
        return command_run_ray(args)
    given = [flag for name, flag in RAY_FLAGS.items() if getattr(args, name) is not None]
    if given:
        logger.error("Only --launcher ray uses %s. Add --launcher ray, or remove those options.", ", ".join(given))
        return 2
    from .runner import run

    run(config_from_args(args))
    return 0


def command_run_ray(args: argparse.Namespace) -> int:
    from .launchers import LauncherError, RayOptions, import_ray, run_ray

    given = {"address": args.ray_address, "cpus_per_run": args.cpus_per_run, "gpus_per_run": args.gpus_per_run, "max_retries": args.max_retries}
    options = RayOptions(**{name: value for name, value in given.items() if value is not None})
    try:
        import_ray()
        report = run_ray(config_from_args(args), options)
    except LauncherError as error:
        logger.error("%s", error)
        return 2
    return 1 if report.failed else 0


def command_tasks_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from .tasks import TaskRegistry, default_task_dirs

    registry = TaskRegistry(default_task_dirs() + (args.tasks_dir or []))
    rows = []
    for name in registry.names():
        task = registry.get(name)
        sources = []
        if task.hub:
            sources.append(f"hub: {task.hub.dataset}")
        if task.local:
            sources.append("local")
        rows.append([name, task.task_type, task.main_metric, task.source_language, ",".join(task.target_languages), "; ".join(sources)])
    print(tabulate(rows, headers=["task", "type", "main metric", "source", "targets", "sources"], tablefmt="github"))
    return 0


def command_tasks_show(args: argparse.Namespace) -> int:
    from .tasks import TaskRegistry, default_task_dirs
    from .validate import describe_task

    print(describe_task(TaskRegistry(default_task_dirs() + (args.tasks_dir or [])), args.name), end="")
    return 0


def command_tasks_validate(args: argparse.Namespace) -> int:
    from .validate import format_report, validate_task_files

    results = validate_task_files(args.files, data_dir=args.data_dir, task_dirs=args.tasks_dir)
    print(format_report(results, data_checked=args.data_dir is not None))
    return 0 if all(not errors for errors in results.values()) else 1


def command_leaderboard(args: argparse.Namespace) -> int:
    from . import leaderboard
    from .results import load_records

    records = load_records(args.results)
    if not records:
        print(f"No results found in {', '.join(map(str, args.results))}.", file=sys.stderr)
        return 1
    board = leaderboard.build_leaderboard(records)
    banners = _run_banners(args.results)
    markdown = "".join(f"> {banner}\n\n" for banner in banners) + leaderboard.to_markdown(board)
    print(markdown)
    if args.output:
        for path in leaderboard.write_leaderboard(board, args.output):
            logger.info("wrote %s", path)
        if banners:
            # The demo's warning travels with its scores into the Markdown table.
            (Path(args.output) / "leaderboard.md").write_text(markdown, encoding="utf-8")
    for banner in banners:
        logger.warning("These results include a run marked: %s", banner)
    return 0


def _run_banners(paths: list[Path]) -> list[str]:
    """Return the distinct banners (such as the demo's) in the config.json of the given run folders."""
    import json

    banners: list[str] = []
    for path in paths:
        config = Path(path) / "config.json"
        if not config.is_file():
            continue
        banner = json.loads(config.read_text(encoding="utf-8")).get("banner")
        if banner and banner not in banners:
            banners.append(banner)
    return banners


def command_compare(args: argparse.Namespace) -> int:
    from .compare import compare_runs, comparisons_to_markdown

    print(comparisons_to_markdown(compare_runs(args.run_a, args.run_b)))
    return 0


def add_pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    from .pretrain import LR_SCHEDULES, MODEL_SIZES, PretrainConfig

    defaults = PretrainConfig(corpus=Path("."))
    parser.add_argument("--corpus", type=Path, required=True, help="Folder with one UTF-8 <lang>.txt per language and one segment per line. A blank line ends a document.")
    parser.add_argument("--output", type=Path, default=None, help="Folder for checkpoints, loss_log.jsonl and the final model (required unless --check-contamination-only). Rerunning the same command resumes from the latest checkpoint.")
    vocabulary = parser.add_mutually_exclusive_group()
    vocabulary.add_argument("--tokenizer", default=None, help="Existing WordPiece tokenizer: a folder (e.g. M-BERT's vocab.txt and tokenizer.json) or a hub id.")
    vocabulary.add_argument("--train-tokenizer", type=int, default=None, metavar="VOCAB_SIZE", help="Train a cased WordPiece vocabulary of this many pieces on the chosen languages instead.")
    parser.add_argument("--model-size", choices=list(MODEL_SIZES), default=defaults.model_size, help=f"Encoder shape (default: {defaults.model_size}). tiny: 2 layers, hidden 128; small: 4 layers, hidden 256; base: 12 layers, hidden 768.")
    parser.add_argument("--objectives", type=lambda text: tuple(_str_list(text)), default=defaults.objectives, help="'mlm' or 'mlm,nsp' (default: mlm,nsp).")
    parser.add_argument("--languages", type=lambda text: tuple(_str_list(text)), default=None, help="Comma-separated languages to train on (default: every <lang>.txt in --corpus).")
    parser.add_argument("--max-lines-per-language", type=int, default=None, help="Use only the first N segments of each file (default: all).")
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps, help=f"Optimizer steps to train for (default: {defaults.max_steps}). Raise it and rerun to continue a finished run.")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help=f"Sequences per step (default: {defaults.batch_size}).")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate, help=f"Peak AdamW learning rate (default: {defaults.learning_rate}).")
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps, help=f"Steps of linear warmup from 0 to the peak learning rate (default: {defaults.warmup_steps}).")
    parser.add_argument("--lr-schedule", choices=list(LR_SCHEDULES), default=defaults.lr_schedule, help="'linear': decay to 0 at --max-steps, as BERT (default). 'constant': keep the peak rate, so a run can be extended exactly.")
    parser.add_argument("--max-seq-length", type=int, default=defaults.max_seq_length, help=f"Maximum tokens per sequence, also the model's position embeddings (default: {defaults.max_seq_length}).")
    parser.add_argument("--sampling-exponent", type=float, default=defaults.sampling_exponent, metavar="ALPHA", help=f"Languages are sampled with probability proportional to (segments)^ALPHA (default: {defaults.sampling_exponent}, as M-BERT).")
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"Seed of weight initialisation, sampling and masking (default: {defaults.seed}).")
    parser.add_argument("--save-every", type=int, default=defaults.save_every, metavar="STEPS", help=f"Write a checkpoint every this many steps (default: {defaults.save_every}).")
    parser.add_argument("--logging-steps", type=int, default=defaults.logging_steps, help=f"Log the mean loss of each objective every this many steps (default: {defaults.logging_steps}).")
    parser.add_argument("--overwrite", action="store_true", help="Delete the pretraining run in --output (checkpoints, loss log and model) and start over, also when its settings differ.")
    parser.add_argument("--data-dir", type=Path, default=None, help="Benchmark data root for the contamination check (default: $XBENCH_DATA_DIR). Without either, the check is skipped.")
    parser.add_argument("--tasks", type=lambda text: tuple(_str_list(text)), default=None, help="Tasks whose test splits the contamination check reads (default: every task).")
    parser.add_argument("--tasks-dir", type=Path, action="append", default=None, help="Folder of extra task files. Repeatable.")
    parser.add_argument("--check-contamination-only", action="store_true", help="Only count corpus lines that occur in the tasks' test splits, then stop.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log debug messages.")


def command_pretrain(args: argparse.Namespace) -> int:
    import os

    from .pretrain import PretrainConfig, check_contamination_only, format_contamination, pretrain

    data_dir = args.data_dir or (Path(os.environ["XBENCH_DATA_DIR"]) if os.environ.get("XBENCH_DATA_DIR") else None)
    config = PretrainConfig(
        corpus=args.corpus, output=args.output, tokenizer=args.tokenizer, train_tokenizer=args.train_tokenizer,
        model_size=args.model_size, objectives=args.objectives, languages=args.languages,
        max_lines_per_language=args.max_lines_per_language, max_steps=args.max_steps, batch_size=args.batch_size,
        learning_rate=args.learning_rate, warmup_steps=args.warmup_steps, lr_schedule=args.lr_schedule,
        max_seq_length=args.max_seq_length, sampling_exponent=args.sampling_exponent, seed=args.seed,
        save_every=args.save_every, logging_steps=args.logging_steps, data_dir=data_dir, tasks=args.tasks,
        task_dirs=tuple(args.tasks_dir) if args.tasks_dir else None, overwrite=args.overwrite,
    )
    if args.check_contamination_only:
        print(format_contamination(check_contamination_only(config)))
        return 0
    pretrain(config)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "verbose", False))
    from .data import DataFormatError, HubUnavailableError, MissingLanguageError
    from .models import LabelMismatchError, ModelNotFoundError
    from .results import ResultExistsError
    from .tasks import TaskFileError

    expected_errors = (
        DataFormatError, HubUnavailableError, MissingLanguageError, LabelMismatchError,
        ModelNotFoundError, ResultExistsError, TaskFileError, FileNotFoundError, KeyError, ValueError,
    )
    try:
        if args.command == "run":
            return command_run(args)
        if args.command == "tasks":
            commands = {"list": command_tasks_list, "show": command_tasks_show, "validate": command_tasks_validate}
            return commands[args.tasks_command](args)
        if args.command == "leaderboard":
            return command_leaderboard(args)
        if args.command == "compare":
            return command_compare(args)
        if args.command == "pretrain":
            return command_pretrain(args)
    except expected_errors as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        logger.error("%s", message)
        logger.debug("Traceback:", exc_info=True)
        return 2
    except KeyboardInterrupt:
        logger.error("Interrupted. Finished results are stored; run the same command again to resume.")
        return 130
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
