"""Tests for the label-map check between fine-tuned checkpoints and task files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

from xbench.models import LabelMismatchError, check_label_maps, load_checkpoint
from xbench.tasks import load_task_file

TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"
WRONG_ORDER = ["contradiction", "entailment", "neutral"]


@pytest.fixture(scope="module")
def xnli():
    return load_task_file(TASKS_DIR / "xnli.yaml")


@pytest.fixture(scope="module")
def wikiann():
    return load_task_file(TASKS_DIR / "wikiann.yaml")


def tiny_config(labels: list[str]) -> BertConfig:
    return BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: index for index, label in enumerate(labels)},
    )


def save_tiny(model_class, labels: list[str], folder: Path) -> Path:
    torch.manual_seed(0)
    model_class(tiny_config(labels)).save_pretrained(folder)
    return folder


def test_wrong_label_order_raises(xnli):
    with pytest.raises(LabelMismatchError) as caught:
        check_label_maps(tiny_config(WRONG_ORDER), xnli, "checkpoints/xnli-en")

    message = str(caught.value)
    assert "checkpoints/xnli-en" in message
    assert str(WRONG_ORDER) in message
    assert str(list(xnli.labels)) in message
    assert "xnli" in message


def test_matching_label_order_passes(xnli):
    assert check_label_maps(tiny_config(list(xnli.labels)), xnli, "checkpoints/xnli-en") is None


def test_default_label_names_raise(xnli):
    config = BertConfig(num_labels=3)

    with pytest.raises(LabelMismatchError) as caught:
        check_label_maps(config, xnli, "checkpoints/unnamed")

    assert "LABEL_0" in str(caught.value)


def test_fewer_labels_raise(xnli):
    with pytest.raises(LabelMismatchError):
        check_label_maps(tiny_config(["entailment", "neutral"]), xnli, "checkpoints/two-way")


def test_load_checkpoint_wrong_order_raises(tmp_path, xnli):
    folder = save_tiny(BertForSequenceClassification, WRONG_ORDER, tmp_path / "wrong-order")

    with pytest.raises(LabelMismatchError) as caught:
        load_checkpoint(folder, xnli)

    assert str(folder) in str(caught.value)


def test_load_checkpoint_matching_labels_loads(tmp_path, xnli):
    folder = save_tiny(BertForSequenceClassification, list(xnli.labels), tmp_path / "right-order")

    model = load_checkpoint(folder, xnli)

    assert isinstance(model, BertForSequenceClassification)
    assert [model.config.id2label[index] for index in range(3)] == list(xnli.labels)


def test_load_checkpoint_token_task(tmp_path, wikiann):
    folder = save_tiny(BertForTokenClassification, list(wikiann.labels), tmp_path / "ner")

    model = load_checkpoint(folder, wikiann)

    assert isinstance(model, BertForTokenClassification)


def test_load_checkpoint_classifier_for_ner_raises(tmp_path, wikiann):
    folder = save_tiny(BertForSequenceClassification, WRONG_ORDER, tmp_path / "xnli-head")

    with pytest.raises(LabelMismatchError):
        load_checkpoint(folder, wikiann)
