"""Tests for xbench.metrics against real seqeval and scikit-learn.

The bootstrap tests rebuild single resamples with the same weights that
xbench.metrics draws, and score them with seqeval or scikit-learn directly.
"""

from __future__ import annotations

import numpy as np
import pytest
from seqeval.metrics import f1_score as seqeval_f1
from sklearn.metrics import f1_score as sklearn_f1

from xbench import metrics
from xbench.readers import read_conll

TOKEN = "token_classification"
PAIR = "sequence_pair_classification"
TYPES = ("PER", "ORG", "LOC")


def perturb(tags: list[str], sentence: int) -> list[str]:
    """Change some tags of a gold sentence by a fixed rule, to act as predictions."""
    result = []
    for position, tag in enumerate(tags):
        rule = (sentence * 31 + position * 7) % 10
        if rule == 0 and tag.startswith("B-"):
            result.append("I-" + tag[2:])
        elif rule == 1 and tag == "O":
            result.append("B-LOC")
        elif rule == 2 and tag != "O":
            swapped = TYPES[(TYPES.index(tag[2:]) + 1) % len(TYPES)]
            result.append(tag[:2] + swapped)
        elif rule == 3:
            result.append("O")
        else:
            result.append(tag)
    return result


@pytest.fixture(scope="module")
def wikiann_sample(data_dir):
    rows = read_conll(data_dir / "wikiann" / "de" / "test-de.tsv")[:300]
    gold = [list(row.values["tags"]) for row in rows]
    pred = [perturb(tags, index) for index, tags in enumerate(gold)]
    return gold, pred


def classification_sample(n: int, correct_share: float, seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    labels = ["entailment", "neutral", "contradiction"]
    gold = [labels[index] for index in rng.integers(0, 3, size=n)]
    pred = [g if rng.random() < correct_share else labels[(labels.index(g) + 1) % 3] for g in gold]
    return gold, pred


# --------------------------------------------------------------------------
# Entity scores
# --------------------------------------------------------------------------


def test_i_start_default_mode_counts():
    scores = metrics.entity_scores([["B-PER", "I-PER"]], [["I-PER", "I-PER"]])

    assert scores["f1"] == 1.0


def test_i_start_strict_mode_rejects():
    scores = metrics.entity_scores([["B-PER", "I-PER"]], [["I-PER", "I-PER"]])

    assert scores["f1_strict"] == 0.0


def test_prediction_only_type_in_per_type_f1():
    gold = [["B-PER", "I-PER", "O", "O"], ["O", "B-LOC"]]
    pred = [["B-PER", "I-PER", "B-MISC", "I-MISC"], ["O", "B-LOC"]]

    scores = metrics.entity_scores(gold, pred)

    assert scores["f1_MISC"] == 0.0
    assert scores["f1_PER"] == 1.0
    assert scores["f1_LOC"] == 1.0
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == 1.0
    assert scores["f1"] == pytest.approx(0.8)


def test_token_accuracy_counts_words():
    scores = metrics.entity_scores([["B-PER", "O", "O", "B-LOC"]], [["B-PER", "O", "B-ORG", "O"]])

    assert scores["accuracy"] == 0.5


def test_check_word_counts_names_sentence():
    with pytest.raises(ValueError) as caught:
        metrics.check_word_counts([["O", "O"], ["O"]], [["O", "O"], ["O", "O"]], "de")

    assert "sentence 1" in str(caught.value)
    assert "de" in str(caught.value)


def test_entity_counts_reproduce_seqeval(wikiann_sample):
    gold, pred = wikiann_sample
    scores = metrics.entity_scores(gold, pred)
    assert 0.2 < scores["f1"] < 0.95

    correct, predicted, true = metrics._entity_counts(gold, pred).sum(axis=0)

    assert 2 * correct / (predicted + true) == pytest.approx(scores["f1"], rel=1e-12)
    assert correct / predicted == pytest.approx(scores["precision"], rel=1e-12)
    assert correct / true == pytest.approx(scores["recall"], rel=1e-12)


def test_perturbation_uses_default_mode(wikiann_sample):
    gold, pred = wikiann_sample

    scores = metrics.entity_scores(gold, pred)

    assert scores["f1_strict"] < scores["f1"]


def test_bootstrap_f1_matches_seqeval_on_resamples(wikiann_sample):
    gold, pred = wikiann_sample
    distribution = metrics.bootstrap_distribution(TOKEN, "f1", gold, pred, samples=50, seed=11)
    weights = metrics._weights(len(gold), 50, 11)

    for sample in range(5):
        counts = weights[sample].astype(int)
        resampled_gold = [gold[index] for index in range(len(gold)) for _ in range(counts[index])]
        resampled_pred = [pred[index] for index in range(len(pred)) for _ in range(counts[index])]
        expected = seqeval_f1(resampled_gold, resampled_pred)
        assert distribution[sample] == pytest.approx(expected, rel=1e-12), f"resample {sample}"


def test_bootstrap_ci_contains_token_f1(wikiann_sample):
    gold, pred = wikiann_sample
    point = metrics.entity_scores(gold, pred)["f1"]

    low, high = metrics.bootstrap_ci(TOKEN, "f1", gold, pred)

    assert low <= point <= high
    assert low < high


# --------------------------------------------------------------------------
# Classification scores and bootstrap
# --------------------------------------------------------------------------


def test_macro_f1_matches_sklearn():
    gold, pred = classification_sample(400, 0.6, seed=1)

    assert metrics.macro_f1(gold, pred) == pytest.approx(sklearn_f1(gold, pred, average="macro"), rel=1e-12)


def test_macro_f1_includes_prediction_only_class():
    gold = ["a", "a", "b", "b"]
    pred = ["a", "c", "b", "b"]

    expected = sklearn_f1(gold, pred, labels=["a", "b", "c"], average="macro", zero_division=0)

    assert metrics.macro_f1(gold, pred) == pytest.approx(expected, rel=1e-12)
    assert metrics.macro_f1(gold, pred) < sklearn_f1(gold, pred, labels=["a", "b"], average="macro")


def test_accuracy_value():
    assert metrics.accuracy(["a", "b", "a", "c"], ["a", "b", "b", "b"]) == 0.5


def test_accuracy_rejects_length_mismatch():
    with pytest.raises(ValueError):
        metrics.accuracy(["a", "b"], ["a"])


def test_bootstrap_macro_f1_matches_weighted_sklearn():
    gold, pred = classification_sample(120, 0.6, seed=2)
    labels = sorted(set(gold) | set(pred))
    distribution = metrics.bootstrap_distribution(PAIR, "macro_f1", gold, pred, samples=20, seed=5)
    weights = metrics._weights(len(gold), 20, 5)

    for sample in range(20):
        expected = sklearn_f1(gold, pred, labels=labels, average="macro", sample_weight=weights[sample], zero_division=0)
        assert distribution[sample] == pytest.approx(expected, rel=1e-9), f"resample {sample}"


def test_bootstrap_accuracy_matches_weighted_mean():
    gold, pred = classification_sample(120, 0.6, seed=3)
    correct = np.array([g == p for g, p in zip(gold, pred)], dtype=float)
    distribution = metrics.bootstrap_distribution(PAIR, "accuracy", gold, pred, samples=20, seed=5)
    weights = metrics._weights(len(gold), 20, 5)

    for sample in range(20):
        expected = np.average(correct, weights=weights[sample])
        assert distribution[sample] == pytest.approx(expected, rel=1e-12), f"resample {sample}"


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1"])
def test_bootstrap_ci_contains_point(metric):
    gold, pred = classification_sample(300, 0.7, seed=4)
    point = metrics.classification_scores(gold, pred)[metric]

    low, high = metrics.bootstrap_ci(PAIR, metric, gold, pred)

    assert low <= point <= high
    assert low < high


def test_accuracy_ci_narrows_with_more_examples():
    small_gold, small_pred = classification_sample(50, 0.7, seed=6)
    large_gold, large_pred = classification_sample(2000, 0.7, seed=6)

    small_low, small_high = metrics.bootstrap_ci(PAIR, "accuracy", small_gold, small_pred)
    large_low, large_high = metrics.bootstrap_ci(PAIR, "accuracy", large_gold, large_pred)

    assert large_high - large_low < (small_high - small_low) / 3


def test_bootstrap_same_seed_same_resamples():
    gold, pred = classification_sample(100, 0.7, seed=7)

    first = metrics.bootstrap_distribution(PAIR, "accuracy", gold, pred, samples=30)
    second = metrics.bootstrap_distribution(PAIR, "accuracy", gold, pred, samples=30)

    assert np.array_equal(first, second)


def test_bootstrap_rejects_strict_token_metric():
    with pytest.raises(ValueError):
        metrics.bootstrap_distribution(TOKEN, "f1_strict", [["O"]], [["O"]])


# --------------------------------------------------------------------------
# Majority baseline
# --------------------------------------------------------------------------


def test_majority_baseline_classification():
    gold = ["neutral", "entailment", "entailment", "contradiction"]
    train = ["entailment", "neutral", "entailment", "contradiction", "entailment"]

    label, value = metrics.majority_baseline(PAIR, "accuracy", gold, train)

    assert label == "entailment"
    assert value == 0.5


def test_majority_baseline_classification_macro_f1():
    gold = ["neutral", "entailment", "entailment", "contradiction"]
    train = ["neutral", "neutral", "entailment"]

    label, value = metrics.majority_baseline(PAIR, "macro_f1", gold, train)

    assert label == "neutral"
    assert value == pytest.approx(sklearn_f1(gold, ["neutral"] * 4, average="macro", zero_division=0))


def test_majority_baseline_ner_finds_nothing(wikiann_sample):
    gold, _ = wikiann_sample

    label, value = metrics.majority_baseline(TOKEN, "f1", gold, [])

    assert label == "O"
    assert value == 0.0


def test_majority_baseline_ner_accuracy():
    gold = [["B-PER", "I-PER", "O"], ["O", "O", "B-LOC", "O"]]

    _, value = metrics.majority_baseline(TOKEN, "accuracy", gold, [])

    assert value == pytest.approx(4 / 7)
