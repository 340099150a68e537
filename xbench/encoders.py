"""Encoders: from examples to model inputs, and from model outputs back.

Only this module handles tokenisation and word alignment. Predictions leave it
per example (per word for token classification) in dataset order.

Token classification follows XTREME: the first subword of each word carries
the word's label, later subwords are left out of the loss (label -100), and
the word's prediction is read at its first subword.

Policy for hard words (named constants below):

* A word that yields zero subwords, for example one made only of zero-width
  or control characters, or a lone combining mark under an accent-stripping
  tokenizer, is encoded as the tokenizer's unknown token. It still gets a
  prediction from the model and shifts no later label.
* A word that yields more than ``MAX_SUBWORDS_PER_WORD`` subwords keeps its
  first ones. The label sits on the first subword, so only context is lost.
* A sentence longer than ``--max-seq-length`` subwords is split into
  overlapping windows at word boundaries. Each word's prediction is taken
  from the window where it has the most context on both sides. Nothing is
  truncated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .data import Example

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
# A word with more subwords than this keeps only its first ones.
MAX_SUBWORDS_PER_WORD = 24
# Share of a window that the next window repeats, so that every word near a
# window edge also appears with context in a neighbouring window.
WINDOW_OVERLAP = 0.5
# Examples tokenised per tokenizer call.
TOKENIZE_BATCH = 1024


@dataclass
class EncodedSplit:
    """Model inputs for one split, with the map back to examples.

    Each row is one model input. Classification has one row per example.
    Token classification has one row per window, and ``owned_words[row]``
    gives, for each position, the index of the word whose prediction this
    position provides (-1 elsewhere).
    """

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list  # int per row, or one int per position
    example_of_row: list[int]
    n_examples: int
    owned_words: list[list[int]] | None = None
    n_words: list[int] | None = None
    stats: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


def _unk_rate(tokenizer, rows: list[list[int]]) -> float:
    unk = tokenizer.unk_token_id
    special = set(tokenizer.all_special_ids)
    total = hits = 0
    for ids in rows:
        for token in ids:
            if token in special and token != unk:
                continue
            total += 1
            hits += token == unk
    return hits / total if total else 0.0


def encode_classification(tokenizer, examples: list[Example], label2id: dict[str, int], max_length: int, desc: str = "tokenize") -> EncodedSplit:
    """Tokenise one or two texts per example, truncating to ``max_length``."""
    input_ids: list[list[int]] = []
    token_type_ids: list[list[int]] = []
    n_truncated = 0
    for start in tqdm(range(0, len(examples), TOKENIZE_BATCH), desc=desc, unit="batch", leave=False):
        batch = examples[start : start + TOKENIZE_BATCH]
        first = [example.texts[0] for example in batch]
        second = [example.texts[1] for example in batch] if len(batch[0].texts) > 1 else None
        full = tokenizer(first, second, truncation=False, add_special_tokens=True, verbose=False)
        cut = tokenizer(first, second, truncation=True, max_length=max_length, add_special_tokens=True)
        n_truncated += sum(len(ids) > max_length for ids in full["input_ids"])
        input_ids.extend(cut["input_ids"])
        if "token_type_ids" in cut:
            token_type_ids.extend(cut["token_type_ids"])
    encoded = EncodedSplit(
        input_ids=input_ids,
        token_type_ids=token_type_ids or None,
        labels=[label2id[example.label] for example in examples],
        example_of_row=list(range(len(examples))),
        n_examples=len(examples),
    )
    encoded.stats = {
        "unk_rate": _unk_rate(tokenizer, input_ids),
        "truncated_share": n_truncated / len(examples) if examples else 0.0,
    }
    return encoded


def plan_windows(word_lengths: list[int], capacity: int) -> list[tuple[int, int]]:
    """Split words into overlapping windows of at most ``capacity`` subwords.

    Returns (start, end) word ranges. Every word must fit in ``capacity``.
    Consecutive windows share about ``WINDOW_OVERLAP`` of a window.
    """
    if any(length > capacity for length in word_lengths):
        raise ValueError("every word must fit in a window; clamp word lengths first")
    n = len(word_lengths)
    if sum(word_lengths) <= capacity:
        return [(0, n)]
    windows = []
    start = 0
    while True:
        end, total = start, 0
        while end < n and total + word_lengths[end] <= capacity:
            total += word_lengths[end]
            end += 1
        windows.append((start, end))
        if end >= n:
            return windows
        next_start, repeated = end, 0
        while next_start - 1 > start and repeated + word_lengths[next_start - 1] <= capacity * WINDOW_OVERLAP:
            next_start -= 1
            repeated += word_lengths[next_start]
        next_start = max(next_start, start + 1)
        # The next window must reach at least one word past this one.
        while sum(word_lengths[next_start : end + 1]) > capacity:
            next_start += 1
        start = next_start


def _best_window(windows: list[tuple[int, int]], n_words: int) -> list[int]:
    """For each word, the window where it has the most context on both sides."""
    owner = [-1] * n_words
    best = [-1] * n_words
    for index, (start, end) in enumerate(windows):
        for word in range(start, end):
            context = min(word - start, end - 1 - word)
            if context > best[word]:
                best[word] = context
                owner[word] = index
    return owner


def encode_tokens(tokenizer, examples: list[Example], label2id: dict[str, int], max_length: int, desc: str = "tokenize") -> EncodedSplit:
    """Tokenise word lists, label first subwords, and window long sentences."""
    capacity = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    if capacity < 1:
        raise ValueError(f"--max-seq-length {max_length} leaves no room for words after the special tokens.")
    max_word = min(MAX_SUBWORDS_PER_WORD, capacity)
    unk = tokenizer.unk_token_id
    prefix, suffix = special_tokens_around_words(tokenizer)
    encoded = EncodedSplit([], None, [], [], len(examples), owned_words=[], n_words=[])
    n_windowed = n_empty_words = n_long_words = 0
    for start in tqdm(range(0, len(examples), TOKENIZE_BATCH), desc=desc, unit="batch", leave=False):
        batch = examples[start : start + TOKENIZE_BATCH]
        tokenized = tokenizer([list(example.texts) for example in batch], is_split_into_words=True, add_special_tokens=False)
        for offset, example in enumerate(batch):
            index = start + offset
            n_words = len(example.texts)
            pieces: list[list[int]] = [[] for _ in range(n_words)]
            for token_id, word in zip(tokenized["input_ids"][offset], tokenized.word_ids(offset)):
                if word is not None:
                    pieces[word].append(token_id)
            for word in range(n_words):
                if not pieces[word]:
                    pieces[word] = [unk]
                    n_empty_words += 1
                elif len(pieces[word]) > max_word:
                    pieces[word] = pieces[word][:max_word]
                    n_long_words += 1
            windows = plan_windows([len(p) for p in pieces], capacity)
            if len(windows) > 1:
                n_windowed += 1
            owner = _best_window(windows, n_words)
            tags = example.label
            for window_index, (first, last) in enumerate(windows):
                ids: list[int] = []
                labels: list[int] = []
                owned: list[int] = []
                for word in range(first, last):
                    for position, token_id in enumerate(pieces[word]):
                        ids.append(token_id)
                        is_first = position == 0
                        labels.append(label2id[tags[word]] if is_first else IGNORE_INDEX)
                        owned.append(word if is_first and owner[word] == window_index else -1)
                with_special = prefix + ids + suffix
                lead, pad_after = len(prefix), len(suffix)
                encoded.input_ids.append(with_special)
                encoded.labels.append([IGNORE_INDEX] * lead + labels + [IGNORE_INDEX] * pad_after)
                encoded.owned_words.append([-1] * lead + owned + [-1] * pad_after)
                encoded.example_of_row.append(index)
            encoded.n_words.append(n_words)
    if n_empty_words:
        logger.info("%s: %d words yield no subwords and are encoded as the unknown token", desc, n_empty_words)
    if n_long_words:
        logger.info("%s: %d words keep only their first %d subwords", desc, n_long_words, max_word)
    encoded.stats = {
        "unk_rate": _unk_rate(tokenizer, encoded.input_ids),
        "windowed_share": n_windowed / len(examples) if examples else 0.0,
        "zero_subword_words": float(n_empty_words),
        "clamped_words": float(n_long_words),
    }
    return encoded


def special_tokens_around_words(tokenizer) -> tuple[list[int], list[int]]:
    """Return the special tokens the tokenizer puts before and after one sequence.

    Read off by encoding a probe word, so it works for any tokenizer's
    template (``[CLS] ... [SEP]`` for BERT, ``<s> ... </s>`` for XLM-R).
    """
    probe = tokenizer(["probe"], is_split_into_words=True, add_special_tokens=True)
    word_ids = probe.word_ids(0)
    positions = [index for index, word in enumerate(word_ids) if word is not None]
    ids = probe["input_ids"]
    return list(ids[: positions[0]]), list(ids[positions[-1] + 1 :])


def encode(task_is_token: bool, tokenizer, examples: list[Example], label2id: dict[str, int], max_length: int, desc: str = "tokenize") -> EncodedSplit:
    if task_is_token:
        return encode_tokens(tokenizer, examples, label2id, max_length, desc)
    return encode_classification(tokenizer, examples, label2id, max_length, desc)


def decode_predictions(encoded: EncodedSplit, row_logits: list[np.ndarray], id2label: dict[int, str]) -> list:
    """Map per-row logits back to one label per example, or one tag per word.

    Raises if any word ends up without a prediction, naming the example.
    """
    if encoded.owned_words is None:
        predictions: list = [None] * encoded.n_examples
        for row, logits in enumerate(row_logits):
            predictions[encoded.example_of_row[row]] = id2label[int(np.argmax(logits))]
        return predictions
    tags: list[list[str | None]] = [[None] * n for n in encoded.n_words]
    for row, logits in enumerate(row_logits):
        example = encoded.example_of_row[row]
        for position, word in enumerate(encoded.owned_words[row]):
            if word >= 0:
                tags[example][word] = id2label[int(np.argmax(logits[position]))]
    for example, sentence in enumerate(tags):
        missing = [word for word, tag in enumerate(sentence) if tag is None]
        if missing:
            raise RuntimeError(f"example {example}: words {missing} got no prediction; the word alignment is broken")
    return tags
