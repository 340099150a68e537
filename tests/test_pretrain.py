"""Pretraining a tiny multilingual BERT on the real corpus with M-BERT's real tokenizer.

Runs are a few dozen steps of the tiny size on short slices of the corpus,
so they check the mechanics (losses, masking, pairs, resume, output folder),
not model quality.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import xbench.pretrain as pretrain_module
from xbench.cli import main
from xbench.pretrain import (
    IS_NEXT,
    IS_RANDOM,
    CorpusError,
    ExampleSampler,
    PretrainConfig,
    PretrainConfigError,
    check_contamination,
    language_probabilities,
    load_pretrained_tokenizer,
    make_batch,
    masking_collator,
    pretrain,
    pretraining_losses,
    read_corpus,
)

LANGUAGES = ("en", "de", "zh")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run this module's training on one torch thread, then restore the count.

    On a 2-core machine shared with other jobs, two threads mostly wait for
    each other: this file took 130 s of CPU with two threads and 52 s with
    one, under a load average of 4 to 5.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus_dir(data_dir: Path) -> Path:
    """The real pretraining corpus in XBENCH_DATA_DIR/corpus."""
    path = data_dir / "corpus"
    if not (path / "en.txt").is_file():
        reason = f"no pretraining corpus at {path}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (required when CI is set)")
        pytest.skip(reason)
    return path


def tiny_config(corpus_dir: Path, tokenizer_dir: Path, output: Path, **overrides) -> PretrainConfig:
    settings = dict(
        corpus=corpus_dir,
        output=output,
        tokenizer=str(tokenizer_dir),
        model_size="tiny",
        languages=LANGUAGES,
        max_lines_per_language=300,
        max_steps=8,
        batch_size=8,
        max_seq_length=32,
        learning_rate=1e-3,
        logging_steps=2,
        save_every=4,
    )
    settings.update(overrides)
    return PretrainConfig(**settings)


def read_loss_log(output: Path) -> list[dict]:
    lines = (output / "loss_log.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def without_times(entries: list[dict]) -> list[dict]:
    return [{key: value for key, value in entry.items() if key != "elapsed_s"} for entry in entries]


def assert_same_weights(output_a: Path, output_b: Path) -> None:
    weights_a = load_file(str(output_a / "model.safetensors"))
    weights_b = load_file(str(output_b / "model.safetensors"))
    assert weights_a.keys() == weights_b.keys()
    different = [name for name in weights_a if not torch.equal(weights_a[name], weights_b[name])]
    assert different == []


@pytest.fixture(scope="module")
def pretrained(corpus_dir: Path, mbert_tokenizer_dir: Path, tmp_path_factory) -> Path:
    """A 40-step MLM+NSP run of the tiny model."""
    output = tmp_path_factory.mktemp("pretrained")
    pretrain(tiny_config(corpus_dir, mbert_tokenizer_dir, output, max_steps=40, logging_steps=4, save_every=20))
    return output


# -- training ------------------------------------------------------------------


def test_mlm_loss_goes_down(pretrained: Path):
    entries = read_loss_log(pretrained)
    assert [entry["step"] for entry in entries] == list(range(4, 41, 4))
    first = sum(entry["mlm_loss"] for entry in entries[:2]) / 2
    last = sum(entry["mlm_loss"] for entry in entries[-2:]) / 2
    # A random model starts near ln(119547) = 11.7 nats. Learning the token
    # frequencies alone takes the loss down by more than a nat.
    assert first > 11.0
    assert last < first - 0.5


def test_loss_log_has_every_field(pretrained: Path):
    for entry in read_loss_log(pretrained):
        assert set(entry) == {"step", "mlm_loss", "nsp_loss", "nsp_accuracy", "lr", "elapsed_s"}
        assert 0.0 < entry["nsp_loss"] < 5.0
        assert entry["lr"] > 0.0


def test_run_record_written(pretrained: Path):
    record = json.loads((pretrained / "xbench_pretrain.json").read_text(encoding="utf-8"))
    assert record["steps"] == 40
    assert record["model"]["class"] == "BertForPreTraining"
    assert record["model"]["shape"] == {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 512}
    assert record["model"]["max_position_embeddings"] == 32
    assert set(record["corpus"]["languages"]) == set(LANGUAGES)
    assert len(record["corpus"]["languages"]["en"]["sha256"]) == 64
    assert record["final_losses"]["step"] == 40
    assert "skipped" in record["contamination"]


def test_one_checkpoint_kept(pretrained: Path):
    names = sorted(path.name for path in pretrained.iterdir() if path.name.startswith(("checkpoint-", ".checkpoint-")))
    assert names == ["checkpoint-40"]


def test_sampling_probabilities_smoothed():
    probabilities = language_probabilities({"big": 10_000, "small": 100}, 0.7)
    assert probabilities["big"] == pytest.approx(10_000**0.7 / (10_000**0.7 + 100**0.7))
    assert probabilities["big"] + probabilities["small"] == pytest.approx(1.0)
    # Smoothing raises the small language above its 1% share of the data.
    assert probabilities["small"] > 100 / 10_100


def test_losses_match_model_forward(corpus_dir: Path, mbert_tokenizer):
    config = PretrainConfig(corpus=corpus_dir, tokenizer="unused", max_seq_length=32)
    corpus = read_corpus(corpus_dir, LANGUAGES, 200, use_nsp=True)
    sampler = ExampleSampler(corpus, language_probabilities({lang: 200 for lang in LANGUAGES}, 0.7), True, seed=3)
    batch = make_batch(mbert_tokenizer, masking_collator(mbert_tokenizer, 3), sampler.draw_batch(8), 32)
    model = pretrain_module.build_pretraining_model(config, mbert_tokenizer).eval()
    with torch.no_grad():
        losses = pretraining_losses(model, batch)
        reference = model(**batch).loss
    assert (losses["mlm"] + losses["nsp"]).item() == pytest.approx(reference.item(), rel=1e-5)


# -- resume --------------------------------------------------------------------


def test_interrupted_run_resumes_identically(corpus_dir: Path, mbert_tokenizer_dir: Path, tmp_path: Path, monkeypatch, caplog):
    straight = tmp_path / "straight"
    pretrain(tiny_config(corpus_dir, mbert_tokenizer_dir, straight))

    # Stop the run before step 7: the latest checkpoint is step 4, and the
    # loss log already contains step 6, which the rerun must not log twice.
    interrupted = tmp_path / "interrupted"
    real_train_step = pretrain_module.Pretraining.train_step

    def train_step_then_stop(self):
        if self.step == 6:
            raise KeyboardInterrupt
        return real_train_step(self)

    monkeypatch.setattr(pretrain_module.Pretraining, "train_step", train_step_then_stop)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_config(corpus_dir, mbert_tokenizer_dir, interrupted))
    assert [entry["step"] for entry in read_loss_log(interrupted)] == [2, 4, 6]
    monkeypatch.setattr(pretrain_module.Pretraining, "train_step", real_train_step)

    with caplog.at_level("INFO", logger="xbench.pretrain"):
        pretrain(tiny_config(corpus_dir, mbert_tokenizer_dir, interrupted))
    assert "at step 4 of 8" in caplog.text
    # The sampler, masking and dropout generators are restored from the
    # checkpoint, and the CPU kernels give the same sums for the same thread
    # count, so equality is exact.
    assert without_times(read_loss_log(interrupted)) == without_times(read_loss_log(straight))
    assert_same_weights(interrupted, straight)


def test_raised_max_steps_continues_constant_schedule(corpus_dir: Path, mbert_tokenizer_dir: Path, tmp_path: Path):
    straight = tmp_path / "straight"
    pretrain(tiny_config(corpus_dir, mbert_tokenizer_dir, straight, lr_schedule="constant"))
    extended = tmp_path / "extended"
    first = pretrain(tiny_config(corpus_dir, mbert_tokenizer_dir, extended, lr_schedule="constant", max_steps=4))
    assert first["steps"] == 4
    second = pretrain(tiny_config(corpus_dir, mbert_tokenizer_dir, extended, lr_schedule="constant", max_steps=8))
    assert second["steps"] == 8
    assert [entry["step"] for entry in read_loss_log(extended)] == [2, 4, 6, 8]
    assert without_times(read_loss_log(extended)) == without_times(read_loss_log(straight))
    assert_same_weights(extended, straight)


def test_other_settings_rejected_by_name(corpus_dir: Path, mbert_tokenizer_dir: Path, tmp_path: Path):
    output = tmp_path / "run"
    pretrain(tiny_config(corpus_dir, mbert_tokenizer_dir, output, max_steps=1))
    with pytest.raises(PretrainConfigError) as error:
        pretrain(tiny_config(corpus_dir, mbert_tokenizer_dir, output, max_steps=1, learning_rate=5e-4, seed=7))
    message = str(error.value)
    assert "learning_rate: 0.001 in the folder, 0.0005 now" in message
    assert "seed: 1 in the folder, 7 now" in message
    assert "--overwrite" in message
    overwritten = pretrain(tiny_config(corpus_dir, mbert_tokenizer_dir, output, max_steps=1, seed=7, overwrite=True))
    assert overwritten["config"]["seed"] == 7


def test_finished_run_trains_nothing(pretrained: Path, corpus_dir: Path, mbert_tokenizer_dir: Path, caplog):
    before = read_loss_log(pretrained)
    with caplog.at_level("INFO", logger="xbench.pretrain"):
        pretrain(tiny_config(corpus_dir, mbert_tokenizer_dir, pretrained, max_steps=40, logging_steps=4, save_every=20))
    assert "nothing to train" in caplog.text
    assert read_loss_log(pretrained) == before


# -- masking -------------------------------------------------------------------


def test_masking_rates_and_special_tokens(corpus_dir: Path, mbert_tokenizer):
    corpus = read_corpus(corpus_dir, ("en", "zh", "ar"), 2000)
    sampler = ExampleSampler(corpus, language_probabilities({"en": 1, "zh": 1, "ar": 1}, 1.0), False, seed=5)
    collator = masking_collator(mbert_tokenizer, seed=5)
    mask_id = mbert_tokenizer.mask_token_id

    counts = {"tokens": 0, "selected": 0, "mask": 0, "unchanged": 0, "random": 0, "special_changed": 0, "special_selected": 0}
    for _ in range(40):
        examples = sampler.draw_batch(64)
        batch = make_batch(mbert_tokenizer, collator, examples, 128)
        original = mbert_tokenizer([example.text_a for example in examples], truncation=True, max_length=128, return_special_tokens_mask=True)

        for row, (ids, special) in enumerate(zip(original["input_ids"], original["special_tokens_mask"])):
            for position, (token, is_special) in enumerate(zip(ids, special)):
                label = batch["labels"][row, position].item()
                seen = batch["input_ids"][row, position].item()
                if is_special:
                    counts["special_selected"] += label != -100
                    counts["special_changed"] += seen != token
                    continue
                counts["tokens"] += 1
                if label == -100:
                    continue
                counts["selected"] += 1
                if seen == mask_id:
                    counts["mask"] += 1
                elif seen == token:
                    counts["unchanged"] += 1
                else:
                    counts["random"] += 1

    # Over 40,000 tokens, the standard error is 0.002 on the 15% rate and
    # under 0.005 on each share of the selected tokens.
    assert counts["tokens"] > 40_000
    assert counts["selected"] / counts["tokens"] == pytest.approx(0.15, abs=0.01)
    assert counts["mask"] / counts["selected"] == pytest.approx(0.8, abs=0.02)
    assert counts["random"] / counts["selected"] == pytest.approx(0.1, abs=0.02)
    assert counts["unchanged"] / counts["selected"] == pytest.approx(0.1, abs=0.02)
    assert counts["special_selected"] == 0
    assert counts["special_changed"] == 0


def test_padding_never_selected(corpus_dir: Path, mbert_tokenizer):
    corpus = read_corpus(corpus_dir, ("en",), 500)
    sampler = ExampleSampler(corpus, {"en": 1.0}, False, seed=2)
    batch = make_batch(mbert_tokenizer, masking_collator(mbert_tokenizer, 2), sampler.draw_batch(64), 64)
    padding = batch["attention_mask"] == 0
    assert padding.any()
    assert (batch["labels"][padding] == -100).all()
    assert (batch["input_ids"][padding] == mbert_tokenizer.pad_token_id).all()


# -- next-sentence pairs -------------------------------------------------------


def test_nsp_pairs_follow_the_file(corpus_dir: Path):
    corpus = read_corpus(corpus_dir, ("en", "ja"), 3000, use_nsp=True)
    consecutive, lines = {}, {}
    for language in ("en", "ja"):
        raw = (corpus_dir / f"{language}.txt").read_text(encoding="utf-8").split("\n")[:3000]
        consecutive[language] = set(zip(raw, raw[1:]))
        lines[language] = set(raw)
    sampler = ExampleSampler(corpus, {"en": 0.5, "ja": 0.5}, True, seed=11)
    examples = sampler.draw_batch(2000)
    positives = [example for example in examples if example.next_sentence_label == IS_NEXT]
    negatives = [example for example in examples if example.next_sentence_label == IS_RANDOM]
    assert len(positives) + len(negatives) == 2000
    # Standard error of the positive share over 2,000 draws is 0.011.
    assert len(positives) / 2000 == pytest.approx(0.5, abs=0.04)
    for example in positives:
        assert (example.text_a, example.text_b) in consecutive[example.language]
    for example in negatives:
        assert (example.text_a, example.text_b) not in consecutive[example.language]
        assert example.text_b in lines[example.language]
        assert example.index_b not in (example.index_a, example.index_a + 1)


def test_nsp_pairs_stay_in_document(tmp_path: Path):
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    (corpus_dir / "xx.txt").write_text("a1\na2\na3\n\nb1\nb2\n\n\nc1\n", encoding="utf-8")
    corpus = read_corpus(corpus_dir, use_nsp=True)
    assert corpus["xx"].segments == ["a1", "a2", "a3", "b1", "b2", "c1"]
    assert corpus["xx"].n_documents == 3
    sampler = ExampleSampler(corpus, {"xx": 1.0}, True, seed=0)
    pairs = {(example.text_a, example.text_b) for example in sampler.draw_batch(500) if example.next_sentence_label == IS_NEXT}
    assert pairs == {("a1", "a2"), ("a2", "a3"), ("b1", "b2")}


# -- the output folder as a model ----------------------------------------------


def test_output_loads_with_auto_classes(pretrained: Path):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pretrained)
    model = AutoModel.from_pretrained(pretrained)
    assert len(tokenizer) == 119547
    assert tokenizer.model_max_length == 32
    encoded = tokenizer(["Hallo Welt", "你好"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**encoded).last_hidden_state
    assert hidden.shape[-1] == 128


def test_output_builds_task_models(pretrained: Path):
    from xbench.models import build_model, load_tokenizer, parse_model_spec
    from xbench.tasks import TaskRegistry

    ref = parse_model_spec(str(pretrained))
    tokenizer = load_tokenizer(ref)
    registry = TaskRegistry()
    for name, expected in (("xnli", "BertForSequenceClassification"), ("wikiann", "BertForTokenClassification")):
        model = build_model(ref, registry.get(name), tokenizer, seed=1)
        assert type(model).__name__ == expected
        trained = load_file(str(pretrained / "model.safetensors"))
        assert torch.equal(model.bert.embeddings.word_embeddings.weight, trained["bert.embeddings.word_embeddings.weight"])


def test_output_runs_in_xbench(pretrained: Path, data_dir: Path, tmp_path: Path):
    from xbench.runner import RunConfig, run

    config = RunConfig(
        tasks=["sentiment"],
        models=[str(pretrained)],
        output=tmp_path / "run",
        data_dir=data_dir,
        target_langs=["de", "ar"],
        max_train_examples=16,
        max_eval_examples=4,
        max_dev_examples=4,
        epochs=1,
        batch_size=8,
        max_seq_length=32,
    )
    run(config)
    rows = json.loads((tmp_path / "run" / "results.json").read_text(encoding="utf-8"))
    main_rows = [row for row in rows if row["main"]]
    assert {row["language"] for row in main_rows} == {"en", "de", "ar"}
    assert all(0.0 <= row["score"] <= 1.0 for row in main_rows)
    assert all(row["model"] == str(pretrained) for row in main_rows)


# -- a trained vocabulary ------------------------------------------------------


def test_trained_tokenizer_used_by_model(corpus_dir: Path, data_dir: Path, tmp_path: Path):
    from transformers import AutoConfig, AutoTokenizer

    output = tmp_path / "own-vocab"
    record = pretrain(PretrainConfig(
        corpus=corpus_dir, output=output, train_tokenizer=2000, objectives=("mlm",),
        languages=("en", "de", "zh", "th"), max_lines_per_language=400, max_steps=4, batch_size=8,
        max_seq_length=32, logging_steps=2, save_every=4, data_dir=data_dir, tasks=("sentiment",),
    ))
    tokenizer = AutoTokenizer.from_pretrained(output)
    assert type(tokenizer).__name__ in ("BertTokenizer", "BertTokenizerFast")
    assert 1000 < len(tokenizer) <= 2000
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert AutoConfig.from_pretrained(output).vocab_size == len(tokenizer)
    assert record["model"]["class"] == "BertForMaskedLM"
    assert record["tokenizer"]["vocab_size"] == len(tokenizer)
    assert all(entry["nsp_loss"] is None for entry in read_loss_log(output))
    # Cased, with Chinese characters split one per token, like M-BERT's tokenizer.
    assert tokenizer.tokenize("The") != tokenizer.tokenize("the")
    assert len(tokenizer.tokenize("中文")) == 2
    assert record["contamination"]["tasks"] == ["sentiment"]


def test_train_tokenizer_or_tokenizer_required(corpus_dir: Path, tmp_path: Path, caplog):
    code = main(["pretrain", "--corpus", str(corpus_dir), "--output", str(tmp_path / "out")])
    assert code == 2
    assert "Pass exactly one of --tokenizer PATH" in caplog.text


# -- contamination -------------------------------------------------------------


def _first_xnli_row(data_dir: Path, language: str) -> dict:
    with open(data_dir / "xnli" / f"test-{language}.tsv", encoding="utf-8", newline="") as stream:
        return next(csv.DictReader(stream, delimiter="\t", quoting=csv.QUOTE_NONE))


def _first_wikiann_sentence(data_dir: Path, language: str) -> list[str]:
    words = []
    for line in (data_dir / "wikiann" / language / f"test-{language}.tsv").read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            if words:
                return words
            continue
        words.append(line.split("\t")[0])
    return words


@pytest.fixture()
def planted_corpus(data_dir: Path, tmp_path: Path) -> Path:
    """A hand-made corpus with three planted test texts among ordinary lines."""
    corpus_dir = tmp_path / "planted"
    corpus_dir.mkdir()
    row = _first_xnli_row(data_dir, "en")
    premise_respaced = "  ".join(row["premise"].split(" "))
    (corpus_dir / "en.txt").write_text(
        f"Quokkas count 4821 pebbles on an invented beach.\n{premise_respaced}\n{row['hypothesis']}\nAnother invented line about 9173 lanterns.\n",
        encoding="utf-8",
    )
    words = _first_wikiann_sentence(data_dir, "de")
    (corpus_dir / "de.txt").write_text(f"Erfundene Zeile über 5521 Laternen.\n{' '.join(words)}\n", encoding="utf-8")
    return corpus_dir


def test_contamination_counts_planted_lines(planted_corpus: Path, data_dir: Path):
    report = check_contamination(read_corpus(planted_corpus), data_dir, ("xnli", "wikiann"))
    assert report["languages"]["en"]["matched"] == 2
    assert report["languages"]["en"]["by_task"] == {"xnli": 2, "wikiann": 0}
    assert report["languages"]["de"]["matched"] == 1
    assert report["languages"]["de"]["by_task"] == {"xnli": 0, "wikiann": 1}
    assert report["total_matched"] == 3


def test_contamination_only_command(planted_corpus: Path, data_dir: Path, capsys, caplog):
    code = main(["pretrain", "--corpus", str(planted_corpus), "--check-contamination-only", "--data-dir", str(data_dir), "--tasks", "xnli"])
    assert code == 0
    table = capsys.readouterr().out
    assert "| en" in table
    assert "in a test split" in table
    assert "2 corpus segments also occur in the test splits of xnli" in caplog.text


def test_contamination_skipped_without_data(planted_corpus: Path, monkeypatch, capsys):
    monkeypatch.delenv("XBENCH_DATA_DIR", raising=False)
    assert main(["pretrain", "--corpus", str(planted_corpus), "--check-contamination-only"]) == 0
    assert "skipped: no --data-dir given and XBENCH_DATA_DIR is not set" in capsys.readouterr().out


# -- bad corpora ---------------------------------------------------------------


def test_missing_corpus_folder_named(tmp_path: Path, caplog):
    missing = tmp_path / "no-corpus"
    code = main(["pretrain", "--corpus", str(missing), "--output", str(tmp_path / "out"), "--train-tokenizer", "500"])
    assert code == 2
    assert f"Corpus folder not found: {missing}" in caplog.text
    assert "Pass --corpus with a folder" in caplog.text


def test_empty_corpus_file_named(tmp_path: Path, caplog):
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    (corpus_dir / "en.txt").write_text("One line.\nTwo lines.\nThree lines.\n", encoding="utf-8")
    (corpus_dir / "de.txt").write_text("\n  \n", encoding="utf-8")
    code = main(["pretrain", "--corpus", str(corpus_dir), "--output", str(tmp_path / "out"), "--train-tokenizer", "500"])
    assert code == 2
    assert f"Corpus file {corpus_dir / 'de.txt'} has no text" in caplog.text
    assert "leave 'de' out of --languages" in caplog.text


def test_unknown_language_named(corpus_dir: Path, tmp_path: Path, caplog):
    code = main(["pretrain", "--corpus", str(corpus_dir), "--languages", "en,xx", "--output", str(tmp_path / "out"), "--train-tokenizer", "500"])
    assert code == 2
    assert f"Unknown --languages value 'xx': {corpus_dir / 'xx.txt'} does not exist" in caplog.text
    assert "Languages in" in caplog.text
    assert "ar, de, el, en" in caplog.text


def test_corpus_without_files_named(tmp_path: Path):
    with pytest.raises(CorpusError, match="No <lang>.txt files in the corpus folder"):
        read_corpus(tmp_path)


def test_foreign_output_folder_rejected(corpus_dir: Path, mbert_tokenizer_dir: Path, tmp_path: Path):
    output = tmp_path / "busy"
    output.mkdir()
    (output / "notes.txt").write_text("someone else's file", encoding="utf-8")
    with pytest.raises(PretrainConfigError, match="is not empty and contains no pretraining run"):
        pretrain(tiny_config(corpus_dir, mbert_tokenizer_dir, output, max_steps=2))


def test_every_pretrain_flag_has_help():
    from xbench.cli import build_parser

    parser = build_parser()
    pretrain_parser = parser._subparsers._group_actions[0].choices["pretrain"]
    for action in pretrain_parser._actions:
        if action.dest == "help":
            continue
        assert action.help, action.dest


def test_mbert_tokenizer_loads_for_pretraining(mbert_tokenizer_dir: Path):
    tokenizer = load_pretrained_tokenizer(str(mbert_tokenizer_dir))
    assert tokenizer.mask_token_id == 103
    assert len(tokenizer) == 119547


def test_warmup_beyond_max_steps_warns(tmp_path, caplog):
    config = PretrainConfig(corpus=tmp_path, output=tmp_path / "out", tokenizer="unused", max_steps=30, warmup_steps=100)
    with caplog.at_level("WARNING", logger="xbench.pretrain"):
        config.validate()
    assert "--warmup-steps 100 is not below --max-steps 30" in caplog.text
