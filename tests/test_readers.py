"""Tests for xbench.readers and xbench.data on the hand-made files in fixtures/data.

Each test copies fixture files into a temporary data root, at the paths that the
real task files (tasks/*.yaml) declare, and loads them with LocalDataSource.
The fixtures hold Arabic and Hebrew text with U+200F (right-to-left mark) and
U+061C (Arabic letter mark), which must pass through the readers unchanged.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from xbench.data import LocalDataSource, MissingLanguageError
from xbench.readers import DataFormatError, read_conll, read_csv, read_text_labels, read_tsv
from xbench.tasks import load_task_file

FIXTURES = Path(__file__).parent / "fixtures" / "data"
TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"
RLM = "\u200f"
ALM = "\u061c"


@pytest.fixture(scope="module")
def xnli():
    return load_task_file(TASKS_DIR / "xnli.yaml")


@pytest.fixture(scope="module")
def wikiann():
    return load_task_file(TASKS_DIR / "wikiann.yaml")


@pytest.fixture(scope="module")
def sentiment():
    return load_task_file(TASKS_DIR / "sentiment.yaml")


def make_root(tmp_path: Path, layout: dict[str, str]) -> Path:
    """Copy fixture files to a data root: layout maps a relative path to a fixture name."""
    root = tmp_path / "data"
    for relative, fixture in layout.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FIXTURES / fixture, target)
    return root


# --------------------------------------------------------------------------
# TSV
# --------------------------------------------------------------------------


def test_tsv_unbalanced_quote_stays_one_example(tmp_path, xnli):
    root = make_root(tmp_path, {"xnli/test-he.tsv": "xnli_he_quote.tsv"})

    split = LocalDataSource(root).load(xnli, "he", "test")

    assert len(split.examples) == 3
    assert split.examples[0].texts == ('"הוא אמר שלום ויצא', "הוא לא אמר דבר.")
    assert split.examples[1].texts == ("הם הלכו הביתה.", '"הם נשארו"')
    assert split.examples[2].texts == ('ספר "טוב" מאוד נמכר.', "ספר נמכר.")
    assert [example.uid for example in split.examples] == ["test-he.tsv:2", "test-he.tsv:3", "test-he.tsv:4"]


def test_tsv_quote_fields_read_directly():
    rows = read_tsv(FIXTURES / "xnli_he_quote.tsv")

    assert len(rows) == 3
    assert rows[0].values["premise"] == '"הוא אמר שלום ויצא'
    assert rows[0].values["label"] == "contradiction"
    assert rows[1].line == 3


def test_tsv_wrong_column_count_names_line():
    path = FIXTURES / "xnli_bad_columns.tsv"

    with pytest.raises(DataFormatError) as caught:
        read_tsv(path)

    message = str(caught.value)
    assert f"{path}:3:" in message
    assert "expected 4" in message
    assert "found 5" in message


def test_tsv_keeps_rtl_marks_and_maps_codes(tmp_path, xnli):
    root = make_root(tmp_path, {"xnli/test-ar.tsv": "xnli_ar_codes.tsv"})

    split = LocalDataSource(root).load(xnli, "ar", "test")

    assert split.examples[0].texts[0].startswith(RLM)
    assert ALM in split.examples[1].texts[0]
    assert split.examples[2].texts[1].startswith(RLM)
    assert split.examples[0].texts[0] == RLM + "ذهب الولد إلى المدرسة صباحا."


def test_numeric_codes_map_per_task_file(tmp_path, xnli):
    root = make_root(tmp_path, {"xnli/test-ar.tsv": "xnli_ar_codes.tsv"})

    split = LocalDataSource(root).load(xnli, "ar", "test")

    codes = ["0", "1", "2"]
    assert [example.label for example in split.examples[:3]] == [xnli.label_aliases[code] for code in codes]
    assert [xnli.label_aliases[code] for code in codes] == list(xnli.labels)


def test_contradictory_alias_maps_to_contradiction(tmp_path, xnli):
    root = make_root(tmp_path, {"xnli/test-ar.tsv": "xnli_ar_codes.tsv"})

    split = LocalDataSource(root).load(xnli, "ar", "test")

    assert split.examples[3].label == "contradiction"
    assert split.examples[4].label == "entailment"
    assert {example.label for example in split.examples} <= set(xnli.labels)


def test_invalid_utf8_names_line_and_offset(tmp_path, xnli):
    data = (FIXTURES / "xnli_invalid_utf8.tsv").read_bytes()
    assert data.count(b"\xff") == 1
    offset = data.index(b"\xff")
    root = make_root(tmp_path, {"xnli/test-fr.tsv": "xnli_invalid_utf8.tsv"})
    path = root / "xnli" / "test-fr.tsv"

    with pytest.raises(DataFormatError) as caught:
        LocalDataSource(root).load(xnli, "fr", "test")

    message = str(caught.value)
    assert f"{path}:3:" in message
    assert f"byte offset {offset}" in message
    assert "0xff" in message


def test_unknown_label_names_line_and_fix(tmp_path, xnli):
    root = make_root(tmp_path, {"xnli/test-fr.tsv": "xnli_unknown_label.tsv"})
    path = root / "xnli" / "test-fr.tsv"

    with pytest.raises(DataFormatError) as caught:
        LocalDataSource(root).load(xnli, "fr", "test")

    message = str(caught.value)
    assert f"{path}:3:" in message
    assert "'maybe'" in message
    assert "label_aliases" in message
    assert "missing_labels" in message


def test_all_placeholder_test_split_rejected(tmp_path, xnli):
    root = make_root(tmp_path, {"xnli/test-ru.tsv": "xnli_all_placeholder.tsv"})

    with pytest.raises(DataFormatError) as caught:
        LocalDataSource(root).load(xnli, "ru", "test")

    message = str(caught.value)
    assert "all 3 rows" in message
    assert "placeholder" in message
    assert "test-ru.tsv" in message


def test_empty_text_counted_and_kept(tmp_path, xnli):
    root = make_root(tmp_path, {"xnli/test-de.tsv": "xnli_empty_text.tsv"})

    split = LocalDataSource(root).load(xnli, "de", "test")

    assert split.n_empty_text == 3
    assert len(split.examples) == 4
    assert split.n_total == 4
    assert split.examples[0].texts[0] == ""


def test_missing_language_file_names_path(tmp_path, xnli):
    root = make_root(tmp_path, {"xnli/test-ar.tsv": "xnli_ar_codes.tsv"})
    expected_path = root / "xnli" / "test-de.tsv"

    with pytest.raises(MissingLanguageError) as caught:
        LocalDataSource(root).load(xnli, "de", "test")

    assert str(expected_path) in str(caught.value)
    assert "'de'" in str(caught.value)


def test_language_outside_entry_rejected(tmp_path, xnli):
    root = make_root(
        tmp_path,
        {
            "xnli/mnli-dev_matched-en.csv": "mnli_quoted.csv",
            "xnli/mnli-dev_mismatched-en.csv": "mnli_plain.csv",
        },
    )

    with pytest.raises(MissingLanguageError) as caught:
        LocalDataSource(root).load(xnli, "de", "train")

    assert "'de'" in str(caught.value)
    assert "limited to other languages" in str(caught.value)


def test_split_records_files_and_hashes(tmp_path, xnli):
    root = make_root(tmp_path, {"xnli/test-ar.tsv": "xnli_ar_codes.tsv"})
    path = root / "xnli" / "test-ar.tsv"

    split = LocalDataSource(root).load(xnli, "ar", "test")

    assert split.files == [path]
    assert len(split.file_hashes[str(path)]) == 64


# --------------------------------------------------------------------------
# CSV (MultiNLI-style training files)
# --------------------------------------------------------------------------


def test_csv_quoted_commas_and_doubled_quotes():
    rows = read_csv(FIXTURES / "mnli_quoted.csv")

    assert len(rows) == 5
    assert rows[0].values["sentence1"] == "Well, I never thought so."
    assert rows[0].values["sentence2"] == 'He said "no" twice, then left.'
    assert rows[1].values["sentence1"] == "Zürich, Genève und Köln"
    assert rows[1].values["sentence2"] == 'The café "Zum Löwen" is closed.'
    assert rows[3].values["sentence1"] == "A premise over\r\ntwo lines."
    assert rows[3].values["sentence2"] == "A hypothesis, with a comma."


def test_csv_rows_start_on_their_physical_line():
    rows = read_csv(FIXTURES / "mnli_quoted.csv")

    assert [row.line for row in rows] == [2, 3, 4, 5, 7]


def test_csv_missing_label_excluded_and_counted(tmp_path, xnli, caplog):
    root = make_root(
        tmp_path,
        {
            "xnli/mnli-dev_matched-en.csv": "mnli_quoted.csv",
            "xnli/mnli-dev_mismatched-en.csv": "mnli_plain.csv",
        },
    )

    with caplog.at_level(logging.WARNING, logger="xbench.data"):
        split = LocalDataSource(root).load(xnli, "en", "train")

    assert split.n_missing_label == 1
    assert split.n_total == 7
    assert len(split.examples) == 6
    assert "-" not in [example.label for example in split.examples]
    assert "mnli-dev_matched-en.csv:4" not in [example.uid for example in split.examples]
    assert [example.label for example in split.examples] == [
        "entailment", "neutral", "contradiction", "neutral", "entailment", "contradiction",
    ]
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("excluded 1 of 7 rows" in message for message in warnings)


def test_csv_fields_map_picks_columns(tmp_path, xnli):
    root = make_root(
        tmp_path,
        {
            "xnli/mnli-dev_matched-en.csv": "mnli_quoted.csv",
            "xnli/mnli-dev_mismatched-en.csv": "mnli_plain.csv",
        },
    )

    split = LocalDataSource(root).load(xnli, "en", "train")

    assert split.examples[0].texts == ("Well, I never thought so.", 'He said "no" twice, then left.')
    assert split.examples[4].uid == "mnli-dev_mismatched-en.csv:2"


def test_csv_unterminated_quote_names_record_line(tmp_path):
    path = tmp_path / "unterminated.csv"
    path.write_text('sentence1,sentence2,label\nfine,row,neutral\n"open quote,never closed,neutral\n', encoding="utf-8")

    with pytest.raises(DataFormatError) as caught:
        read_csv(path)

    message = str(caught.value)
    assert f"{path}:3:" in message
    assert "quoting" in message


# --------------------------------------------------------------------------
# CoNLL (WikiANN-style)
# --------------------------------------------------------------------------


def test_conll_reads_rtl_and_invisible_tokens(tmp_path, wikiann):
    root = make_root(tmp_path, {"wikiann/ar/test-ar.tsv": "wikiann_mixed.conll"})

    split = LocalDataSource(root).load(wikiann, "ar", "test")

    assert len(split.examples) == 3
    assert split.examples[0].texts == ("جامعة", "القاهرة" + ALM, "في", RLM + "مصر", ".")
    assert split.examples[0].label == ("B-ORG", "I-ORG", "O", "B-LOC", "O")
    assert split.examples[1].texts[2] == "\u200b"
    assert split.examples[1].texts[4] == "\u0301"
    assert split.examples[1].label == ("B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "I-ORG", "O")
    assert [example.uid for example in split.examples] == ["test-ar.tsv:1", "test-ar.tsv:7", "test-ar.tsv:16"]


def test_conll_unknown_tag_names_its_line(tmp_path, wikiann):
    root = make_root(tmp_path, {"wikiann/de/test-de.tsv": "wikiann_bad_tag.conll"})
    path = root / "wikiann" / "de" / "test-de.tsv"

    with pytest.raises(DataFormatError) as caught:
        LocalDataSource(root).load(wikiann, "de", "test")

    assert f"{path}:7:" in str(caught.value)


def test_conll_unknown_tag_names_file_and_tag(tmp_path, wikiann):
    root = make_root(tmp_path, {"wikiann/de/test-de.tsv": "wikiann_bad_tag.conll"})
    path = root / "wikiann" / "de" / "test-de.tsv"

    with pytest.raises(DataFormatError) as caught:
        LocalDataSource(root).load(wikiann, "de", "test")

    message = str(caught.value)
    assert str(path) in message
    assert "'B-MISC'" in message
    assert "word 3" in message


def test_conll_non_iob2_tag_rejected(tmp_path, wikiann):
    root = make_root(tmp_path, {"wikiann/it/test-it.tsv": "wikiann_bad_scheme.conll"})
    path = root / "wikiann" / "it" / "test-it.tsv"

    with pytest.raises(DataFormatError) as caught:
        LocalDataSource(root).load(wikiann, "it", "test")

    message = str(caught.value)
    assert f"{path}:" in message
    assert "'X-PER'" in message
    assert "not IOB2" in message


def test_conll_whitespace_line_names_line():
    path = FIXTURES / "wikiann_whitespace_line.conll"

    with pytest.raises(DataFormatError) as caught:
        read_conll(path)

    message = str(caught.value)
    assert f"{path}:4:" in message
    assert "whitespace-only" in message


# --------------------------------------------------------------------------
# text_labels (UMSAB sentiment)
# --------------------------------------------------------------------------


def test_text_labels_codes_and_empty_text(tmp_path, sentiment):
    folder = "sentiment/xlm-t-umsab/arabic"
    root = make_root(
        tmp_path,
        {
            f"{folder}/test_text.txt": "sentiment_ar_text.txt",
            f"{folder}/test_labels.txt": "sentiment_ar_labels.txt",
        },
    )

    split = LocalDataSource(root).load(sentiment, "ar", "test")

    assert [example.label for example in split.examples] == ["positive", "negative", "neutral", "neutral", "positive"]
    assert split.examples[0].texts == (RLM + "أحب هذا الفيلم كثيرا",)
    assert split.examples[1].texts == ("الخدمة سيئة" + ALM + " جدا",)
    assert split.examples[4].texts == ("שלום " + RLM + "עולם",)
    assert split.n_empty_text == 2
    assert len(split.files) == 2


def test_text_labels_line_mismatch_names_both_files():
    text_path = FIXTURES / "sentiment_ar_text.txt"
    labels_path = FIXTURES / "sentiment_short_labels.txt"

    with pytest.raises(DataFormatError) as caught:
        read_text_labels(text_path, labels_path)

    message = str(caught.value)
    assert str(text_path) in message
    assert str(labels_path) in message
    assert f"{text_path} has 5 lines" in message
    assert f"{labels_path} has 4" in message
