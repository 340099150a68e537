"""Metrics, computed offline: accuracy, macro-F1 and seqeval entity F1.

``f1`` is seqeval's default (conlleval-compatible) entity-level micro F1,
the number XTREME reports for PAN-X. In that mode an ``I-X`` that follows
``O`` or another type starts a new entity. ``f1_strict`` is seqeval's strict
IOB2 mode, where such an ``I-X`` is not an entity at all.

All scores are fractions in [0, 1]. Bootstrap intervals resample examples
(sentences for token tasks) with a fixed seed.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import IOB2
from sklearn.metrics import f1_score as sk_f1_score

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


def bootstrap_distribution(task_type: str, metric: str, gold: list, pred: list, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Scores of the metric on ``samples`` resamples of the examples.

    The same seed gives the same resamples for the same number of examples,
    so two systems scored on one test set get paired resamples.
    """
    n = len(gold)
    if n == 0:
        return np.zeros(0)
    weights = _weights(n, samples, seed)
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
    raise ValueError(f"no bootstrap for metric {metric!r}")


def bootstrap_ci(task_type: str, metric: str, gold: list, pred: list, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile 95% confidence interval of the metric."""
    distribution = bootstrap_distribution(task_type, metric, gold, pred, samples, seed)
    if distribution.size == 0:
        return (0.0, 0.0)
    low, high = np.percentile(distribution, [2.5, 97.5])
    return (float(low), float(high))


def majority_baseline(task_type: str, main_metric: str, gold: list, train_labels: list) -> tuple[str, float]:
    """Score of predicting the most frequent training label everywhere.

    Token tasks predict ``O`` for every word, which finds no entity.
    """
    if task_type == "token_classification":
        pred = [["O"] * len(sentence) for sentence in gold]
        return "O", entity_scores(gold, pred)[main_metric]
    majority = Counter(train_labels).most_common(1)[0][0]
    pred = [majority] * len(gold)
    return majority, classification_scores(gold, pred)[main_metric]
