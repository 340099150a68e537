"""Tests for xbench.encoders and xbench.predict with the real M-BERT and MiniLM tokenizers.

Token classification is checked with oracle logits: each row gets logits whose
maximum sits on one label id per position. Positions that own no word get the
maximum on a decoy tag that no gold sentence uses, so a prediction read from
the wrong position shows up as that decoy.
"""

from __future__ import annotations

import itertools
import random
import string

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertForTokenClassification

from xbench.data import Example
from xbench.encoders import (
    IGNORE_INDEX,
    WINDOW_OVERLAP,
    decode_predictions,
    encode_classification,
    encode_tokens,
    plan_windows,
)
from xbench.predict import plan_batches, predict_logits

TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
TAG2ID = {tag: index for index, tag in enumerate(TAGS)}
ID2TAG = dict(enumerate(TAGS))
# No gold sentence below uses I-LOC, so it marks a prediction read off a non-owned position.
DECOY = "I-LOC"

ZWSP = "\u200b"
COMBINING_ACUTE = "\u0301"
RLM = "\u200f"
ALM = "\u061c"

WIKIANN_SENTENCE = Example(
    uid="wikiann:1",
    texts=("Angela", "Merkel", ZWSP, "Paris", COMBINING_ACUTE, "Deutsche", "Bank", "."),
    label=("B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "I-ORG", "O"),
)
ARABIC_SENTENCE = Example(
    uid="wikiann-ar:1",
    texts=("قال", "مدير", "جامعة" + ALM, RLM, "القاهرة", ALM, RLM + "مصر", "."),
    label=("O", "O", "B-ORG", "O", "I-ORG", "O", "B-LOC", "O"),
)


def oracle_from_labels(encoded) -> list[np.ndarray]:
    """Logits with the maximum on the encoded label at owned positions, on DECOY elsewhere."""
    rows = []
    for labels, owned in zip(encoded.labels, encoded.owned_words):
        logits = np.zeros((len(labels), len(TAGS)))
        for position, (label, word) in enumerate(zip(labels, owned)):
            if word >= 0:
                assert label != IGNORE_INDEX, f"owned position {position} has no label"
                logits[position, label] = 1.0
            else:
                logits[position, TAG2ID[DECOY]] = 1.0
        rows.append(logits)
    return rows


def oracle_from_gold(encoded, gold: list[tuple[str, ...]]) -> list[np.ndarray]:
    """Logits with the maximum on the gold tag of the owned word, on DECOY elsewhere."""
    rows = []
    for row, owned in enumerate(encoded.owned_words):
        example = encoded.example_of_row[row]
        logits = np.zeros((len(owned), len(TAGS)))
        for position, word in enumerate(owned):
            tag = gold[example][word] if word >= 0 else DECOY
            logits[position, TAG2ID[tag]] = 1.0
        rows.append(logits)
    return rows


def owned_counts(encoded) -> list[list[int]]:
    """How many positions own each word, per example."""
    counts = [[0] * n for n in encoded.n_words]
    for row, owned in enumerate(encoded.owned_words):
        for word in owned:
            if word >= 0:
                counts[encoded.example_of_row[row]][word] += 1
    return counts


def subword_count(tokenizer, word: str) -> int:
    return len(tokenizer([[word]], is_split_into_words=True, add_special_tokens=False)["input_ids"][0])


@pytest.fixture(scope="module")
def minilm_tokenizer(minilm_dir):
    return AutoTokenizer.from_pretrained(str(minilm_dir))


# --------------------------------------------------------------------------
# Token classification: alignment and windows
# --------------------------------------------------------------------------


def long_ner_sentence(n_words: int) -> Example:
    vocabulary = [
        "Angela", "Merkel", "besuchte", "Straßburg", "und", "القاهرة", "ירושלים", "Συνέδριο",
        "東京都", "Weltgesundheitsorganisation", ",", "Москва", "Zürich", "Universität", "in", "der",
    ]
    cycle = ["B-PER", "I-PER", "O", "B-ORG", "I-ORG", "I-ORG", "O", "B-LOC", "O"]
    words = tuple(vocabulary[index % len(vocabulary)] for index in range(n_words))
    tags = tuple(cycle[index % len(cycle)] for index in range(n_words))
    return Example(uid="long:1", texts=words, label=tags)


def test_long_sentence_windows_decode_to_gold(mbert_tokenizer):
    example = long_ner_sentence(200)
    assert DECOY not in example.label

    encoded = encode_tokens(mbert_tokenizer, [example], TAG2ID, max_length=32)
    tags = decode_predictions(encoded, oracle_from_gold(encoded, [example.label]), ID2TAG)

    assert len(encoded) > 1
    assert len(tags) == 1
    assert len(tags[0]) == 200
    assert tags[0] == list(example.label)


def test_long_sentence_rows_fit_max_length(mbert_tokenizer):
    example = long_ner_sentence(200)

    encoded = encode_tokens(mbert_tokenizer, [example], TAG2ID, max_length=32)

    assert max(encoded.lengths()) <= 32
    assert all(ids[0] == mbert_tokenizer.cls_token_id for ids in encoded.input_ids)
    assert all(ids[-1] == mbert_tokenizer.sep_token_id for ids in encoded.input_ids)
    assert encoded.stats["windowed_share"] == 1.0


def test_long_sentence_labels_aligned_with_owners(mbert_tokenizer):
    example = long_ner_sentence(200)

    encoded = encode_tokens(mbert_tokenizer, [example], TAG2ID, max_length=32)

    assert owned_counts(encoded) == [[1] * 200]
    for labels, owned in zip(encoded.labels, encoded.owned_words):
        for label, word in zip(labels, owned):
            if word >= 0:
                assert label == TAG2ID[example.label[word]], f"word {word}"


def test_long_sentence_oracle_from_labels(mbert_tokenizer):
    example = long_ner_sentence(200)

    encoded = encode_tokens(mbert_tokenizer, [example], TAG2ID, max_length=32)
    tags = decode_predictions(encoded, oracle_from_labels(encoded), ID2TAG)

    assert tags[0] == list(example.label)


def test_invisible_words_keep_alignment_mbert(mbert_tokenizer):
    assert subword_count(mbert_tokenizer, ZWSP) == 0

    encoded = encode_tokens(mbert_tokenizer, [WIKIANN_SENTENCE], TAG2ID, max_length=128)
    tags = decode_predictions(encoded, oracle_from_labels(encoded), ID2TAG)

    assert len(tags[0]) == len(WIKIANN_SENTENCE.texts)
    assert tags[0] == list(WIKIANN_SENTENCE.label)
    assert tags[0][3] == "B-LOC"
    assert tags[0][5] == "B-ORG"
    assert encoded.stats["zero_subword_words"] == 1.0


def test_invisible_words_keep_alignment_minilm(minilm_tokenizer):
    assert subword_count(minilm_tokenizer, ZWSP) == 0
    assert subword_count(minilm_tokenizer, COMBINING_ACUTE) == 0

    encoded = encode_tokens(minilm_tokenizer, [WIKIANN_SENTENCE], TAG2ID, max_length=128)
    tags = decode_predictions(encoded, oracle_from_labels(encoded), ID2TAG)

    assert len(tags[0]) == len(WIKIANN_SENTENCE.texts)
    assert tags[0] == list(WIKIANN_SENTENCE.label)
    assert encoded.stats["zero_subword_words"] == 2.0


def test_zero_subword_word_encoded_as_unk(minilm_tokenizer):
    encoded = encode_tokens(minilm_tokenizer, [WIKIANN_SENTENCE], TAG2ID, max_length=128)

    positions = {word: position for position, word in enumerate(encoded.owned_words[0]) if word >= 0}
    assert encoded.input_ids[0][positions[2]] == minilm_tokenizer.unk_token_id
    assert encoded.input_ids[0][positions[4]] == minilm_tokenizer.unk_token_id
    assert encoded.input_ids[0][positions[3]] != minilm_tokenizer.unk_token_id


def test_arabic_marks_one_prediction_per_word(mbert_tokenizer):
    encoded = encode_tokens(mbert_tokenizer, [ARABIC_SENTENCE], TAG2ID, max_length=128)
    tags = decode_predictions(encoded, oracle_from_labels(encoded), ID2TAG)

    assert len(tags[0]) == len(ARABIC_SENTENCE.texts)
    assert tags[0] == list(ARABIC_SENTENCE.label)
    assert owned_counts(encoded) == [[1] * len(ARABIC_SENTENCE.texts)]


def test_arabic_marks_in_short_windows(mbert_tokenizer):
    encoded = encode_tokens(mbert_tokenizer, [ARABIC_SENTENCE], TAG2ID, max_length=6)
    tags = decode_predictions(encoded, oracle_from_labels(encoded), ID2TAG)

    assert len(encoded) > 1
    assert tags[0] == list(ARABIC_SENTENCE.label)


def test_overlong_words_get_one_prediction(mbert_tokenizer):
    rng = random.Random(20240)
    word_300 = "".join(rng.choice(string.ascii_lowercase) for _ in range(300))
    word_99 = "".join(rng.choice(string.ascii_lowercase) for _ in range(99))
    cjk_300 = "".join(chr(0x4E00 + rng.randrange(2000)) for _ in range(300))
    example = Example(
        uid="long-words:1",
        texts=("Der", word_300, "Fluss", word_99, "fließt", cjk_300, "."),
        label=("B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "I-ORG"),
    )
    capacity = 16 - mbert_tokenizer.num_special_tokens_to_add(pair=False)
    assert subword_count(mbert_tokenizer, word_99) > capacity
    assert subword_count(mbert_tokenizer, cjk_300) > capacity

    encoded = encode_tokens(mbert_tokenizer, [example], TAG2ID, max_length=16)
    tags = decode_predictions(encoded, oracle_from_labels(encoded), ID2TAG)

    assert max(encoded.lengths()) <= 16
    assert len(tags[0]) == 7
    assert tags[0] == list(example.label)
    assert owned_counts(encoded) == [[1] * 7]
    assert encoded.stats["clamped_words"] == 2.0


def test_several_examples_keep_dataset_order(mbert_tokenizer):
    examples = [long_ner_sentence(60), WIKIANN_SENTENCE, ARABIC_SENTENCE, long_ner_sentence(5)]

    encoded = encode_tokens(mbert_tokenizer, examples, TAG2ID, max_length=24)
    tags = decode_predictions(encoded, oracle_from_labels(encoded), ID2TAG)

    assert [len(sentence) for sentence in tags] == [len(example.texts) for example in examples]
    assert tags == [list(example.label) for example in examples]


def test_decode_raises_on_unowned_word(mbert_tokenizer):
    encoded = encode_tokens(mbert_tokenizer, [WIKIANN_SENTENCE], TAG2ID, max_length=128)
    encoded.owned_words[0] = [-1 if word == 3 else word for word in encoded.owned_words[0]]

    with pytest.raises(RuntimeError) as caught:
        decode_predictions(encoded, oracle_from_labels(encoded), ID2TAG)

    assert "[3]" in str(caught.value)


# --------------------------------------------------------------------------
# plan_windows
# --------------------------------------------------------------------------


def random_cases(count: int, max_share: float = 1.0):
    rng = random.Random(7)
    for _ in range(count):
        capacity = rng.randint(1, 40)
        longest = int(capacity * max_share)
        if longest < 1:
            continue
        lengths = [rng.randint(1, longest) for _ in range(rng.randint(0, 80))]
        yield lengths, capacity


def test_plan_windows_covers_every_word():
    for lengths, capacity in random_cases(300):
        windows = plan_windows(lengths, capacity)
        covered = set(itertools.chain.from_iterable(range(start, end) for start, end in windows))
        assert covered == set(range(len(lengths))), (lengths, capacity, windows)
        assert windows[0][0] == 0, (lengths, capacity, windows)
        assert windows[-1][1] == len(lengths), (lengths, capacity, windows)


def test_plan_windows_within_capacity():
    for lengths, capacity in random_cases(300):
        for start, end in plan_windows(lengths, capacity):
            assert sum(lengths[start:end]) <= capacity, (lengths, capacity, start, end)
            assert end > start or not lengths, (lengths, capacity, start, end)


def test_plan_windows_starts_advance_without_gaps():
    for lengths, capacity in random_cases(300):
        windows = plan_windows(lengths, capacity)
        for (start, end), (next_start, _) in zip(windows, windows[1:]):
            assert next_start > start, (lengths, capacity, windows)
            assert next_start <= end, (lengths, capacity, windows)


def test_plan_windows_overlap_for_short_words():
    for lengths, capacity in random_cases(300, max_share=WINDOW_OVERLAP):
        windows = plan_windows(lengths, capacity)
        for (_, end), (next_start, _) in zip(windows, windows[1:]):
            assert next_start < end, (lengths, capacity, windows)


def test_plan_windows_overlap_is_half_window():
    windows = plan_windows([1] * 40, 10)

    assert windows == [(0, 10), (5, 15), (10, 20), (15, 25), (20, 30), (25, 35), (30, 40)]


def test_plan_windows_single_window_when_fits():
    assert plan_windows([3, 4, 3], 10) == [(0, 3)]


def test_plan_windows_rejects_word_over_capacity():
    with pytest.raises(ValueError):
        plan_windows([2, 11, 2], 10)


def test_plan_windows_each_window_adds_words():
    windows = plan_windows([5, 5, 10], 10)

    ends = [end for _, end in windows]
    assert ends == sorted(set(ends))


# --------------------------------------------------------------------------
# Length-sorted evaluation
# --------------------------------------------------------------------------


def tiny_bert(model_class, vocab_size: int, num_labels: int):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=num_labels,
        # Wider than the default 0.02, so that different inputs give clearly different logits.
        initializer_range=0.5,
    )
    model = model_class(config)
    model.eval()
    return model


def unbatched_logits(model, encoded, row: int) -> np.ndarray:
    inputs = {
        "input_ids": torch.tensor([encoded.input_ids[row]]),
        "attention_mask": torch.ones(1, len(encoded.input_ids[row]), dtype=torch.long),
    }
    if encoded.token_type_ids is not None:
        inputs["token_type_ids"] = torch.tensor([encoded.token_type_ids[row]])
    with torch.no_grad():
        return model(**inputs).logits[0].numpy()


def pair_examples() -> list[Example]:
    word_counts = [(1, 1), (30, 20), (3, 2), (70, 40), (8, 5), (2, 90), (12, 12)]
    examples = []
    for index, (first, second) in enumerate(word_counts):
        premise = " ".join(f"Wort{(index + k) % 13}" for k in range(first))
        hypothesis = " ".join(f"слово{(index * 3 + k) % 11}" for k in range(second))
        examples.append(Example(uid=f"pair:{index}", texts=(premise, hypothesis), label="neutral"))
    return examples


def test_predict_logits_in_dataset_order(mbert_tokenizer):
    label2id = {"entailment": 0, "neutral": 1, "contradiction": 2}
    encoded = encode_classification(mbert_tokenizer, pair_examples(), label2id, max_length=256)
    model = tiny_bert(BertForSequenceClassification, len(mbert_tokenizer), 3)
    batches = plan_batches(encoded.lengths(), token_budget=400)
    assert len(batches) > 1
    assert list(itertools.chain.from_iterable(batches)) != list(range(len(encoded)))

    model.train()

    outputs = predict_logits(model, encoded, mbert_tokenizer.pad_token_id, token_budget=400)

    assert model.training
    model.eval()
    expected = [unbatched_logits(model, encoded, row) for row in range(len(encoded))]
    distances = [np.abs(a - b).max() for a, b in itertools.combinations(expected, 2)]
    assert min(distances) > 1e-3
    for row in range(len(encoded)):
        assert np.allclose(outputs[row], expected[row], atol=1e-5), f"row {row}"


def test_predict_token_logits_trimmed_in_order(mbert_tokenizer):
    examples = [long_ner_sentence(90), WIKIANN_SENTENCE, long_ner_sentence(3), ARABIC_SENTENCE]
    encoded = encode_tokens(mbert_tokenizer, examples, TAG2ID, max_length=64)
    model = tiny_bert(BertForTokenClassification, len(mbert_tokenizer), len(TAGS))

    outputs = predict_logits(model, encoded, mbert_tokenizer.pad_token_id, token_budget=130)

    assert len(plan_batches(encoded.lengths(), token_budget=130)) > 1
    for row in range(len(encoded)):
        assert outputs[row].shape == (len(encoded.input_ids[row]), len(TAGS)), f"row {row}"
        assert np.allclose(outputs[row], unbatched_logits(model, encoded, row), atol=1e-5), f"row {row}"


def test_plan_batches_covers_rows_within_budget():
    rng = random.Random(3)
    lengths = [rng.randint(1, 300) for _ in range(500)]

    batches = plan_batches(lengths, token_budget=2000, max_batch=64)

    assert sorted(itertools.chain.from_iterable(batches)) == list(range(500))
    for batch in batches:
        assert len(batch) <= 64
        assert len(batch) * max(lengths[index] for index in batch) <= 2000


# --------------------------------------------------------------------------
# Classification truncation
# --------------------------------------------------------------------------


def test_truncated_share_counts_long_examples(mbert_tokenizer):
    label2id = {"negative": 0, "neutral": 1, "positive": 2}
    exact = "a " * 14
    over = "a " * 15
    assert len(mbert_tokenizer(exact)["input_ids"]) == 16
    assert len(mbert_tokenizer(over)["input_ids"]) == 17
    texts = [
        "Hallo Welt",
        " ".join(["Langer"] * 40),
        exact,
        over,
        " ".join(["مرحبا"] * 30),
    ]
    examples = [Example(uid=f"s:{index}", texts=(text,), label="neutral") for index, text in enumerate(texts)]

    encoded = encode_classification(mbert_tokenizer, examples, label2id, max_length=16)

    assert encoded.stats["truncated_share"] == pytest.approx(3 / 5)
    assert max(encoded.lengths()) <= 16
    assert encoded.input_ids[1][-1] == mbert_tokenizer.sep_token_id
    assert encoded.labels == [1] * 5


def test_truncated_share_counts_long_pairs(mbert_tokenizer):
    label2id = {"entailment": 0, "neutral": 1, "contradiction": 2}
    examples = [
        Example(uid="p:0", texts=("Kurz.", "Auch kurz."), label="entailment"),
        Example(uid="p:1", texts=("Kurz.", " ".join(["lang"] * 40)), label="neutral"),
    ]

    encoded = encode_classification(mbert_tokenizer, examples, label2id, max_length=16)

    assert encoded.stats["truncated_share"] == pytest.approx(1 / 2)
    assert encoded.token_type_ids is not None
    assert max(encoded.lengths()) <= 16
