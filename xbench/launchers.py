"""Launchers for the grid of (task, model, seed) units.

A benchmark study is a grid: every task, model and seed is one unit of work,
:func:`xbench.runner.run_unit`, which fine-tunes once and scores every
language. Two launchers run that same function:

* ``local`` (the default) is :func:`xbench.runner.run`: the units run one
  after another in this process, or in every rank under torchrun.
* ``ray`` is :func:`run_ray`: each unit is one Ray task, placed by Ray on
  any node with the CPUs and GPUs it requests.

The Ray driver plans every unit against the results store before it submits
anything, and a unit with nothing left to compute is counted as skipped and
not submitted. Workers write into the same run folder, so that folder (and
the data and model folders) must be on a file system that every node
mounts at the same path. Each Ray task changes into the driver's working
directory first, so relative paths in the config mean the same on every
node.

A unit that raises is retried up to ``max_retries`` times. A retry plans
against the store again, so it skips the results that earlier attempts
stored and reuses a finished fine-tuning. After the last attempt the unit is
reported as failed with its error, and the other units go on.

Test hook, off by default: when the driver's environment sets
``XBENCH_FAIL_ONCE`` to a file path that does not exist yet, the first unit
that stores a result creates that file and then raises. Tests use it to
check retries.
"""

from __future__ import annotations

import logging
import os
import traceback
from dataclasses import dataclass, field
from typing import Collection

from . import distributed
from .models import CHECKPOINT_INFO
from .runner import RunConfig, RunSetup, run_unit, setup_run, start_run, write_summary

logger = logging.getLogger(__name__)

RAY_INSTALL = 'pip install -e ".[ray]" (from the xbench source folder)'
FAIL_ONCE_ENV = "XBENCH_FAIL_ONCE"

PENDING, DONE, FAILED, SKIPPED = "pending", "done", "failed", "skipped"


class LauncherError(RuntimeError):
    """A launcher that cannot run here: a missing package or a wrong way of starting it."""


class InjectedFailure(RuntimeError):
    """The failure raised once by the XBENCH_FAIL_ONCE test hook."""


@dataclass(frozen=True)
class Unit:
    """One (task, model, seed) cell of the grid. ``model`` is the --model value as given."""

    task: str
    model: str
    seed: int

    def __str__(self) -> str:
        return f"{self.task} {self.model} seed {self.seed}"


@dataclass
class UnitOutcome:
    """The result of one unit: its status, its attempts and the languages each attempt stored."""

    unit: Unit
    status: str
    attempts: int = 0
    stored_per_attempt: list[list[str]] = field(default_factory=list)
    reused_checkpoint_per_attempt: list[bool] = field(default_factory=list)
    error: str | None = None

    @property
    def stored(self) -> list[str]:
        return [language for languages in self.stored_per_attempt for language in languages]


@dataclass
class GridReport:
    """The outcome of every unit of a grid, in grid order."""

    outcomes: list[UnitOutcome]

    def count(self, status: str) -> int:
        return sum(outcome.status == status for outcome in self.outcomes)

    @property
    def failed(self) -> list[UnitOutcome]:
        return [outcome for outcome in self.outcomes if outcome.status == FAILED]

    def to_table(self) -> str:
        from tabulate import tabulate

        rows = []
        for outcome in self.outcomes:
            error = (outcome.error or "").splitlines()[0][:120] if outcome.error else ""
            rows.append([outcome.unit.task, outcome.unit.model, outcome.unit.seed, outcome.status, outcome.attempts, ",".join(outcome.stored), error])
        table = tabulate(rows, headers=["task", "model", "seed", "status", "attempts", "stored", "error"], tablefmt="github")
        totals = f"{self.count(DONE)} done, {self.count(FAILED)} failed, {self.count(SKIPPED)} skipped"
        return f"{table}\n\n{totals}"


@dataclass(frozen=True)
class RayOptions:
    """Cluster address, resources per unit and retry limit of the Ray launcher."""

    # None lets Ray choose: RAY_ADDRESS, else the cluster started last on
    # this machine, else a new local instance.
    address: str | None = None
    cpus_per_run: float = 1
    gpus_per_run: float = 0
    max_retries: int = 2

    def __post_init__(self):
        if self.cpus_per_run <= 0:
            raise ValueError(f"--cpus-per-run must be positive, got {self.cpus_per_run}.")
        if self.gpus_per_run < 0:
            raise ValueError(f"--gpus-per-run must be 0 or more, got {self.gpus_per_run}.")
        if self.max_retries < 0:
            raise ValueError(f"--max-retries must be 0 or more, got {self.max_retries}.")


def import_ray():
    """Import Ray, or raise a :class:`LauncherError` that names the install command."""
    try:
        import ray
    except ImportError as error:
        raise LauncherError(f"--launcher ray needs the ray package, which cannot be imported ({error}). Install it with: {RAY_INSTALL}") from None
    return ray


def plan_grid(setup: RunSetup) -> tuple[list[UnitOutcome], list[Unit]]:
    """Check every unit against the store. Return all outcomes (skipped ones final) and the units to submit."""
    outcomes, pending = [], []
    for task_run in setup.task_runs():
        unit = Unit(task_run.task.name, task_run.ref.spec, task_run.seed)
        task_run.check_languages_available()
        if task_run.plan():
            outcomes.append(UnitOutcome(unit, PENDING))
            pending.append(unit)
        else:
            logger.info("%s: every result exists, not submitted", unit)
            outcomes.append(UnitOutcome(unit, SKIPPED))
    return outcomes, pending


def run_ray(config: RunConfig, options: RayOptions) -> GridReport:
    """Run every unit of the grid as a Ray task, then write results.json and the leaderboard.

    Uses the Ray connection of this process when there is one. Otherwise it
    connects to ``options.address`` and disconnects at the end. The store is
    current throughout, but results.json and the leaderboard are written once,
    after the last unit: halfway through, seeds that cover different languages
    would only produce warnings.
    """
    ray = import_ray()
    if distributed.is_distributed():
        raise LauncherError(
            "--launcher ray starts its own worker processes and cannot run under torchrun or accelerate launch. "
            "Start it with plain python or xbench."
        )
    setup = start_run(config)
    outcomes, pending = plan_grid(setup)
    skipped_note = " The others have all their results." if len(pending) < len(outcomes) else ""
    logger.info("Units to submit: %d of %d.%s", len(pending), len(outcomes), skipped_note)
    if pending:
        connected_here = not ray.is_initialized()
        if connected_here:
            _connect(ray, options.address)
        elif options.address:
            logger.warning("This process is already connected to Ray, so --ray-address %s is ignored", options.address)
        try:
            _run_units(ray, setup, pending, {outcome.unit: outcome for outcome in outcomes}, options)
        finally:
            if connected_here:
                ray.shutdown()
    report = GridReport(outcomes)
    logger.info("Units:\n%s", report.to_table())
    write_summary(setup.config.output, banner=setup.config.banner, echo=True)
    return report


def _connect(ray, address: str | None) -> None:
    try:
        ray.init(address=address)
    except (ConnectionError, ValueError) as error:
        where = f"--ray-address {address}" if address else "the Ray cluster found from RAY_ADDRESS or this machine"
        raise LauncherError(
            f"Connecting to {where} failed: {str(error).rstrip('.')}. Start the cluster with 'ray start', "
            "or pass its HOST:PORT as --ray-address."
        ) from error


def _run_units(ray, setup: RunSetup, pending: list[Unit], outcomes: dict[Unit, UnitOutcome], options: RayOptions) -> None:
    """Submit the units, wait for them, and resubmit failed ones until they succeed or run out of retries."""
    # max_retries=0: this loop is the only retry policy, so that a retry skips
    # the languages that earlier attempts stored, whatever the overwrite policy.
    # Progress bars of parallel workers would interleave in the driver's log.
    remote = ray.remote(_run_unit_attempt).options(
        num_cpus=options.cpus_per_run,
        num_gpus=options.gpus_per_run,
        max_retries=0,
        runtime_env={"env_vars": {"TQDM_DISABLE": "1"}},
    )
    fail_once = os.environ.get(FAIL_ONCE_ENV) or None
    log_level = logging.getLogger("xbench").getEffectiveLevel()
    threads = max(1, int(options.cpus_per_run))

    def submit(unit: Unit):
        skip = outcomes[unit].stored
        return remote.remote(setup.config, unit, skip, os.getcwd(), fail_once, log_level, threads)

    in_flight = {submit(unit): unit for unit in pending}
    while in_flight:
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        unit = in_flight.pop(ready[0])
        outcome = outcomes[unit]
        try:
            attempt = ray.get(ready[0])
        except ray.exceptions.RayError as error:
            # The worker process or its node died, so the task returned nothing.
            attempt = {"stored": [], "reused_checkpoint": False, "error": f"{type(error).__name__}: {error}"}
        outcome.attempts += 1
        outcome.stored_per_attempt.append(list(attempt["stored"]))
        outcome.reused_checkpoint_per_attempt.append(bool(attempt["reused_checkpoint"]))
        if attempt["error"] is None:
            outcome.status, outcome.error = DONE, None
            logger.info("%s: done (attempt %d, stored %s)", unit, outcome.attempts, ",".join(attempt["stored"]) or "nothing")
            continue
        outcome.error = attempt["error"]
        if outcome.attempts <= options.max_retries:
            logger.warning("%s: attempt %d of %d failed: %s. Retrying.", unit, outcome.attempts, options.max_retries + 1, attempt["error"])
            in_flight[submit(unit)] = unit
        else:
            outcome.status = FAILED
            logger.error("%s: attempt %d of %d failed: %s\n%s", unit, outcome.attempts, options.max_retries + 1, attempt["error"], attempt.get("traceback", ""))


def _run_unit_attempt(
    config: RunConfig,
    unit: Unit,
    skip_languages: Collection[str],
    working_dir: str,
    fail_once: str | None,
    log_level: int,
    threads: int,
) -> dict:
    """Run one attempt of one unit inside a Ray worker. Errors are returned, not raised."""
    import torch

    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("xbench").setLevel(log_level)
    # A unit uses as many torch threads as the CPUs it reserved.
    torch.set_num_threads(threads)
    stored: list[str] = []
    reused = False

    def on_stored(record: dict) -> None:
        stored.append(record["language"])
        if fail_once:
            _fail_once(fail_once, unit, record["language"])

    try:
        if not os.path.isdir(working_dir):
            raise LauncherError(
                f"The driver's working directory {working_dir} does not exist on this node. "
                "Start the driver from a folder on the file system that every node shares."
            )
        os.chdir(working_dir)
        setup = setup_run(config, check=False)
        task = next(task for task in setup.tasks if task.name == unit.task)
        task_run = setup.task_run(task, unit.model, unit.seed)
        reused = (task_run.checkpoint_dir() / CHECKPOINT_INFO).is_file()
        run_unit(task_run, skip_languages=skip_languages, on_stored=on_stored)
    except Exception as error:
        return {"stored": stored, "reused_checkpoint": reused, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    return {"stored": stored, "reused_checkpoint": reused, "error": None}


def _fail_once(marker: str, unit: Unit, language: str) -> None:
    try:
        with open(marker, "x", encoding="utf-8") as handle:
            handle.write(f"{unit} {language}\n")
    except FileExistsError:
        return
    raise InjectedFailure(f"{FAIL_ONCE_ENV}={marker}: failing {unit} once, after storing {language}")
