"""Paired comparison of two runs, language by language.

Both runs must have scored the same test examples (same ids in the same
order). For each (task, language, seed) the same bootstrap resamples are
applied to both systems' predictions, and the two-sided p-value is the share
of resamples whose score difference has the other sign than zero allows:
``p = min(1, 2 * (k + 1) / (B + 1))``, where ``k`` is the smaller of the
counts of resamples with ``diff <= 0`` and with ``diff >= 0``, and ``B`` is
the number of resamples.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .metrics import BOOTSTRAP_SAMPLES, bootstrap_distribution, score
from .results import load_records

SIGNIFICANCE_LEVEL = 0.05


@dataclass(frozen=True)
class Comparison:
    """Scores of systems A and B on one (task, language, seed)."""

    task: str
    language: str
    seed: int
    metric: str
    model_a: str
    model_b: str
    score_a: float
    score_b: float
    diff_low: float
    diff_high: float
    p_value: float
    n_examples: int

    @property
    def diff(self) -> float:
        return self.score_a - self.score_b

    @property
    def significant(self) -> bool:
        return self.p_value < SIGNIFICANCE_LEVEL


def _predictions(run_dir: Path, record: dict) -> tuple[list[str], list, list]:
    path = Path(record["predictions_file"])
    if not path.is_absolute():
        path = run_dir / path
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [row["uid"] for row in rows], [row["gold"] for row in rows], [row["pred"] for row in rows]


def _run_root(path: Path) -> Path:
    """Return the run folder of a path given on the command line."""
    path = Path(path)
    return path.parent if path.name == "store" else path


def compare_runs(run_a: Path, run_b: Path, samples: int = BOOTSTRAP_SAMPLES) -> list[Comparison]:
    """Compare every (task, language, seed) scored in both runs."""
    root_a, root_b = _run_root(run_a), _run_root(run_b)
    records_a = {(r["task"], r["language"], r["seed"]): r for r in load_records([run_a])}
    records_b = {(r["task"], r["language"], r["seed"]): r for r in load_records([run_b])}
    shared = sorted(set(records_a) & set(records_b))
    if not shared:
        raise ValueError(f"{run_a} and {run_b} share no (task, language, seed) result to compare.")
    comparisons = []
    for key in shared:
        record_a, record_b = records_a[key], records_b[key]
        uids_a, gold_a, pred_a = _predictions(root_a, record_a)
        uids_b, gold_b, pred_b = _predictions(root_b, record_b)
        if uids_a != uids_b or gold_a != gold_b:
            raise ValueError(
                f"{key[0]} {key[1]} seed {key[2]}: the two runs scored different examples. "
                "Compare runs made with the same data and --max-eval-examples."
            )
        metric = record_a["main_metric"]
        task_type = record_a["task_type"]
        # NOTE: only the built-in metrics (accuracy, macro_f1, NER f1) can be
        # resampled here. A task whose main metric is a custom function fails
        # with a ValueError that names the metric.
        dist_a = bootstrap_distribution(task_type, metric, gold_a, pred_a, samples)
        dist_b = bootstrap_distribution(task_type, metric, gold_b, pred_b, samples)
        diff = dist_a - dist_b
        # (k + 1) / (B + 1): a bootstrap with B resamples cannot show a p-value below 1 / (B + 1).
        tail = min(int(np.sum(diff <= 0)), int(np.sum(diff >= 0)))
        p_value = min(1.0, 2 * (tail + 1) / (len(diff) + 1))
        low, high = np.percentile(diff, [2.5, 97.5])
        comparisons.append(
            Comparison(
                task=key[0], language=key[1], seed=key[2], metric=metric,
                model_a=record_a["model_name"], model_b=record_b["model_name"],
                score_a=score(task_type, gold_a, pred_a)[metric], score_b=score(task_type, gold_b, pred_b)[metric],
                diff_low=float(low), diff_high=float(high), p_value=p_value, n_examples=len(gold_a),
            )
        )
    return comparisons


def comparisons_to_markdown(comparisons: list[Comparison]) -> str:
    from tabulate import tabulate

    rows = [
        [c.task, c.language, c.seed, c.metric, f"{100 * c.score_a:.1f}", f"{100 * c.score_b:.1f}",
         f"{100 * c.diff:+.1f}", f"[{100 * c.diff_low:+.1f}, {100 * c.diff_high:+.1f}]", f"{c.p_value:.3f}",
         "yes" if c.significant else "no"]
        for c in comparisons
    ]
    first = comparisons[0]
    header = (
        f"A = {first.model_a}, B = {first.model_b}. Scores in percent; diff = A - B with its bootstrap 95% interval. "
        f"Paired bootstrap, {BOOTSTRAP_SAMPLES} resamples; significant means p < {SIGNIFICANCE_LEVEL}.\n\n"
    )
    table = tabulate(rows, headers=["task", "language", "seed", "metric", "A", "B", "diff", "diff 95% CI", "p", "significant"], tablefmt="github")
    n_significant = sum(c.significant for c in comparisons)
    return header + table + f"\n\n{n_significant} of {len(comparisons)} differences are significant.\n"
