"""Metrics, computed offline: accuracy, macro-F1 and seqeval entity F1.

``f1`` is seqeval's default (conlleval-compatible) entity-level micro F1,
the number XTREME reports for PAN-X. In that mode an ``I-X`` that follows
``O`` or another type starts a new entity. ``f1_strict`` is seqeval's strict
IOB2 mode, where such an ``I-X`` is not an entity at all.

All scores are fractions in [0, 1]. Bootstrap intervals resample examples
(sentences for token tasks) with a fixed seed.

A task may add its own metrics: a Python function ``(gold, pred) -> float``
named by dotted path, or an evaluate module. :func:`score_task` computes
the built-in scores of the task type plus the task's own metrics.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import numpy as np
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import IOB2
from sklearn.metrics import f1_score as sk_f1_score

from . import plugins
from .tasks import MetricSpec, TaskSpec

BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 12345


def accuracy(gold: list[str], pred: list[str]) -> float:
    _check_lengths(gold, pred)
    return float(np.mean([g == p for g, p in zip(gold, pred)])) if gold else 0.0


def macro_f1(gold: list[str], pred: list[str]) -> float:
    """Unweighted mean of per-class F1 over the classes in gold or predictions."""
    _check_lengths(gold, pred)
    labels = sorted(set(gold) | set(pred))
    return float(sk_f1_score(gold, pred, labels=labels, average="macro", zero_division=0))


def _check_lengths(gold: list, pred: list) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")


def check_word_counts(gold: list[list[str]], pred: list[list[str]], language: str) -> None:
    """Require one prediction per gold word in every sentence."""
    if len(gold) != len(pred):
        raise ValueError(f"{language}: {len(gold)} gold sentences but {len(pred)} predicted sentences")
    for index, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"{language}: sentence {index} has {len(g)} gold tags but {len(p)} predictions")


def entity_scores(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """Entity-level scores in default and strict mode, plus F1 per type."""
    scores = {
        "f1": float(f1_score(gold, pred, zero_division=0)),
        "precision": float(precision_score(gold, pred, zero_division=0)),
        "recall": float(recall_score(gold, pred, zero_division=0)),
        "f1_strict": float(f1_score(gold, pred, mode="strict", scheme=IOB2, zero_division=0)),
        "accuracy": float(np.mean([g == p for gs, ps in zip(gold, pred) for g, p in zip(gs, ps)])),
    }
    report = classification_report(gold, pred, output_dict=True, zero_division=0)
    # Types that occur only in the predictions are in seqeval's report too.
    for name, row in report.items():
        if name not in ("micro avg", "macro avg", "weighted avg"):
            scores[f"f1_{name}"] = float(row["f1-score"])
    return scores


def classification_scores(gold: list[str], pred: list[str]) -> dict[str, float]:
    return {"accuracy": accuracy(gold, pred), "macro_f1": macro_f1(gold, pred)}


def score(task_type: str, gold: list, pred: list) -> dict[str, float]:
    if task_type == "token_classification":
        return entity_scores(gold, pred)
    return classification_scores(gold, pred)


# --------------------------------------------------------------------------
# Metrics declared by a task
# --------------------------------------------------------------------------


def score_task(task: TaskSpec, gold: list, pred: list) -> dict[str, float]:
    """Score with the task type's built-in metrics plus the task's own metrics."""
    scores = score(task.task_type, gold, pred)
    for spec in task.custom_metrics:
        scores[spec.name] = metric_function(task, spec)(gold, pred)
    return scores


def metric_function(task: TaskSpec, spec: MetricSpec) -> Callable[[list, list], float]:
    """Return a function ``(gold, pred) -> float`` that computes one of the task's metrics.

    Raises :class:`~xbench.plugins.PluginError` when the function or module
    cannot be imported or loaded. The returned function raises ValueError
    when the metric returns something other than a number in [0, 1].
    """
    if spec.kind == "builtin":
        return lambda gold, pred: score(task.task_type, gold, pred)[spec.name]
    if spec.kind == "function":
        compute = plugins.import_callable(spec.target, "metric")
    elif spec.kind == "evaluate":
        compute = _evaluate_compute(task, spec, plugins.load_evaluate_module(spec.target))
    else:
        raise ValueError(f"metric {spec.name!r} of task {task.name} has unknown kind {spec.kind!r}.")

    def checked(gold: list, pred: list) -> float:
        return _check_metric_value(task, spec, compute(gold, pred))

    return checked


def _evaluate_compute(task: TaskSpec, spec: MetricSpec, module) -> Callable[[list, list], object]:
    label_ids = {label: index for index, label in enumerate(task.labels)}

    def to_ids(values: list) -> list:
        if task.is_token_task:
            return [[label_ids[tag] for tag in sentence] for sentence in values]
        return [label_ids[value] for value in values]

    def compute(gold: list, pred: list) -> object:
        references, predictions = (to_ids(gold), to_ids(pred)) if spec.label_ids else (gold, pred)
        result = module.compute(predictions=predictions, references=references, **spec.compute_args)
        if not isinstance(result, dict):
            return result
        if spec.key is not None:
            if spec.key not in result:
                raise ValueError(
                    f"metric {spec.name!r} of task {task.name}: evaluate module {spec.target!r} returned keys "
                    f"{sorted(result)}, not {spec.key!r}. Set 'key' to one of them."
                )
            return result[spec.key]
        if len(result) == 1:
            return next(iter(result.values()))
        if spec.name in result:
            return result[spec.name]
        raise ValueError(
            f"metric {spec.name!r} of task {task.name}: evaluate module {spec.target!r} returned several values "
            f"{sorted(result)}. Set 'key' in the task file to the one to report."
        )

    return compute


def _check_metric_value(task: TaskSpec, spec: MetricSpec, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(
            f"metric {spec.name!r} ({spec.target}) of task {task.name} returned {type(value).__name__} {value!r}; "
            "a metric must return one number in [0, 1]."
        )
    number = float(value)
    if math.isnan(number) or not 0.0 <= number <= 1.0:
        raise ValueError(
            f"metric {spec.name!r} ({spec.target}) of task {task.name} returned {number}; scores must be fractions "
            "in [0, 1], so return e.g. 0.75, not 75."
        )
    return number


# --------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------


def _entity_counts(gold: list[list[str]], pred: list[list[str]]) -> np.ndarray:
    """Per sentence: [correct entities, predicted entities, gold entities].

    seqeval scores a list of sentences as one sequence with breaks between
    sentences, so these counts summed over sentences give its micro F1.
    """
    counts = np.zeros((len(gold), 3))
    for index, (g, p) in enumerate(zip(gold, pred)):
        true_entities = set(get_entities(list(g)))
        pred_entities = set(get_entities(list(p)))
        counts[index] = (len(true_entities & pred_entities), len(pred_entities), len(true_entities))
    return counts


def _weights(n: int, samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=samples).astype(float)


def _f1_from_counts(counts: np.ndarray) -> np.ndarray:
    correct, predicted, true = counts[..., 0], counts[..., 1], counts[..., 2]
    denominator = predicted + true
    return np.divide(2 * correct, denominator, out=np.zeros_like(correct), where=denominator > 0)


def bootstrap_distribution(
    task_type: str,
    metric: str,
    gold: list,
    pred: list,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
    metric_fn: Callable[[list, list], float] | None = None,
) -> np.ndarray:
    """Scores of the metric on ``samples`` resamples of the examples.

    The same seed gives the same resamples for the same number of examples,
    so two systems scored on one test set get paired resamples. With
    ``metric_fn``, each resample is scored by calling it on the resampled
    gold and predicted lists, which is slower than the built-in counts.
    """
    n = len(gold)
    if n == 0:
        return np.zeros(0)
    weights = _weights(n, samples, seed)
    if metric_fn is not None:
        return _resampled_scores(weights, gold, pred, metric_fn)
    if task_type == "token_classification":
        if metric not in ("f1",):
            raise ValueError(f"bootstrap supports f1 for token tasks, not {metric!r}")
        return _f1_from_counts(weights @ _entity_counts(gold, pred))
    correct = np.array([g == p for g, p in zip(gold, pred)], dtype=float)
    if metric == "accuracy":
        return weights @ correct / n
    if metric == "macro_f1":
        labels = sorted(set(gold) | set(pred))
        gold_onehot = np.array([[g == label for label in labels] for g in gold], dtype=float)
        pred_onehot = np.array([[p == label for label in labels] for p in pred], dtype=float)
        tp = weights @ (gold_onehot * pred_onehot)
        fp = weights @ ((1 - gold_onehot) * pred_onehot)
        fn = weights @ (gold_onehot * (1 - pred_onehot))
        denominator = 2 * tp + fp + fn
        f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
        return f1.mean(axis=1)
    raise ValueError(f"no bootstrap for metric {metric!r}; pass metric_fn to score resamples with a function")


def _resampled_scores(weights: np.ndarray, gold: list, pred: list, metric_fn: Callable[[list, list], float]) -> np.ndarray:
    """Score each resample, where ``weights[i, j]`` is how often example j is drawn in resample i."""
    positions = np.arange(weights.shape[1])
    values = np.empty(weights.shape[0])
    for row, counts in enumerate(weights.astype(int)):
        drawn = np.repeat(positions, counts)
        values[row] = metric_fn([gold[index] for index in drawn], [pred[index] for index in drawn])
    return values


def bootstrap_ci(
    task_type: str,
    metric: str,
    gold: list,
    pred: list,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
    metric_fn: Callable[[list, list], float] | None = None,
) -> tuple[float, float]:
    """Percentile 95% confidence interval of the metric."""
    distribution = bootstrap_distribution(task_type, metric, gold, pred, samples, seed, metric_fn)
    if distribution.size == 0:
        return (0.0, 0.0)
    low, high = np.percentile(distribution, [2.5, 97.5])
    return (float(low), float(high))


# Built-in metrics whose bootstrap sums counts instead of rescoring each resample.
_COUNTED_BOOTSTRAP = {
    "token_classification": ("f1",),
    "sequence_classification": ("accuracy", "macro_f1"),
    "sequence_pair_classification": ("accuracy", "macro_f1"),
}


def task_bootstrap_ci(task: TaskSpec, metric: str, gold: list, pred: list, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Bootstrap 95% interval of any metric of the task, built-in or its own."""
    metric_fn = None
    if metric not in _COUNTED_BOOTSTRAP[task.task_type]:
        spec = task.metric_spec(metric) or MetricSpec(name=metric, kind="builtin")
        metric_fn = metric_function(task, spec)
    return bootstrap_ci(task.task_type, metric, gold, pred, samples, seed, metric_fn)


def majority_baseline(task_type: str, main_metric: str, gold: list, train_labels) -> tuple[str, float]:
    """Score of predicting the most frequent training label everywhere.

    ``train_labels`` is a list of labels or a mapping from label to count.
    Without training labels the most frequent gold label is used. Token
    tasks predict ``O`` for every word, which finds no entity.
    """
    label, pred = majority_predictions(task_type, gold, train_labels)
    return label, score(task_type, gold, pred)[main_metric]


def majority_predictions(task_type: str, gold: list, train_labels) -> tuple[str, list]:
    """Return the majority label and the predictions that use it everywhere.

    ``train_labels`` is as in :func:`majority_baseline`.
    """
    if task_type == "token_classification":
        return "O", [["O"] * len(sentence) for sentence in gold]
    counts = Counter(train_labels) if train_labels else Counter(gold)
    majority = counts.most_common(1)[0][0]
    return majority, [majority] * len(gold)


def task_majority_baseline(task: TaskSpec, gold: list, train_labels) -> tuple[str, float]:
    """Score of the majority-label baseline on the task's main metric, built-in or its own."""
    label, pred = majority_predictions(task.task_type, gold, train_labels)
    return label, score_task(task, gold, pred)[task.main_metric]
