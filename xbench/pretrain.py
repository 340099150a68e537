"""Pretraining a small multilingual BERT from scratch, the way M-BERT was made.

The steps, in the field's terms:

1. Read the corpus: one ``<lang>.txt`` per language with one segment per
   line. A blank line ends a document, so a next-segment pair never crosses
   it. A file without blank lines is one document.
2. Check contamination: count corpus lines that equal a test text of the
   declared tasks once all whitespace is removed.
3. Choose the tokenizer: an existing WordPiece vocabulary, or a new one
   trained on segments drawn with the language sampling probabilities.
4. Language sampling: language ``l`` is drawn with probability proportional
   to ``n_l ** alpha``, where ``n_l`` is its number of segments (non-blank
   lines). An exponent below 1 smooths the distribution towards small
   languages (M-BERT used 0.7).
5. Training examples: one segment for MLM only. With NSP, segment A and a
   segment B that is the true next segment half of the time and a random
   other segment of the same language otherwise.
6. Masking: 15% of the non-special tokens are selected for prediction. Of
   those, 80% become ``[MASK]``, 10% a random token and 10% stay unchanged.
7. Optimisation: AdamW with warmup, then linear decay to zero at
   ``max_steps`` or a constant rate. Checkpoints with the optimizer,
   scheduler, sampler and RNG states let a rerun resume where it stopped.
8. Output: a standard Hugging Face model folder (weights, config and
   tokenizer) that ``xbench run --model`` takes.

Unlike BERT's own data pipeline, examples are not packed with several
segments up to the maximum length: an example is one segment or one pair,
so most sequences are much shorter than ``max_seq_length``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .results import atomic_write_json, atomic_write_text, environment_provenance

# numpy, torch, transformers and the data readers are imported inside the
# functions that use them, so that building the command-line parser (which
# reads this module's defaults) stays fast.
if TYPE_CHECKING:
    import numpy as np
    import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelShape:
    """Transformer encoder shape of a named model size."""

    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    intermediate_size: int


# Named model sizes. "base" is the shape of BERT-Base and of M-BERT.
MODEL_SIZES = {
    "tiny": ModelShape(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512),
    "small": ModelShape(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024),
    "base": ModelShape(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}

OBJECTIVES = ("mlm", "nsp")
LR_SCHEDULES = ("linear", "constant")

# BERT's masking: the share of tokens selected for prediction, and how a
# selected token is replaced (the rest of the selected tokens stay unchanged).
MLM_PROBABILITY = 0.15
MASK_REPLACE_PROBABILITY = 0.8
RANDOM_REPLACE_PROBABILITY = 0.1

# BERT's optimiser settings, kept fixed: decoupled weight decay 0.01 (not on
# biases and LayerNorm weights), Adam epsilon 1e-6 and gradient clipping at
# a global norm of 1.0.
WEIGHT_DECAY = 0.01
ADAM_EPSILON = 1e-6
MAX_GRAD_NORM = 1.0

# Labels of BertForPreTraining's next-sentence head.
IS_NEXT = 0
IS_RANDOM = 1

# Each checkpoint is written to a temporary folder and renamed into place, so
# the latest one is always complete and one copy is enough.
KEEP_CHECKPOINTS = 1

CONFIG_FILE = "pretrain_config.json"
INFO_FILE = "xbench_pretrain.json"
LOSS_LOG_FILE = "loss_log.jsonl"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "pretrain_state.json"

# The [UNK] rate per language is measured on this many segments of each file.
UNK_SAMPLE_SEGMENTS = 1000

# Special tokens of a trained vocabulary, in BERT's order.
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MIN_TRAINED_VOCAB = 100


class CorpusError(ValueError):
    """A corpus folder or file that cannot be used for pretraining."""


class PretrainConfigError(ValueError):
    """Invalid pretraining settings, or an output folder made with other settings."""


@dataclass
class PretrainConfig:
    """Settings of one pretraining run, one field per command-line flag."""

    corpus: Path
    output: Path | None = None
    tokenizer: str | None = None
    train_tokenizer: int | None = None  # vocabulary size of a new WordPiece vocabulary
    model_size: str = "tiny"
    objectives: tuple[str, ...] = ("mlm", "nsp")
    languages: tuple[str, ...] | None = None  # None means every <lang>.txt in the corpus
    max_lines_per_language: int | None = None  # first N segments of each file, or None for all
    max_steps: int = 10_000
    batch_size: int = 32
    learning_rate: float = 1e-4
    warmup_steps: int = 0
    lr_schedule: str = "linear"
    max_seq_length: int = 128
    sampling_exponent: float = 0.7
    seed: int = 1
    save_every: int = 500
    logging_steps: int = 50
    data_dir: Path | None = None  # benchmark data for the contamination check, which None skips
    tasks: tuple[str, ...] | None = None  # tasks for the contamination check, or None for all
    task_dirs: tuple[Path, ...] | None = None
    overwrite: bool = False

    @property
    def use_nsp(self) -> bool:
        return "nsp" in self.objectives

    def validate(self, need_training: bool = True) -> None:
        """Raise PretrainConfigError listing every setting that cannot work."""
        problems = []
        if need_training:
            if self.output is None:
                problems.append("--output is missing. Pass the folder for checkpoints and the final model.")
            if (self.tokenizer is None) == (self.train_tokenizer is None):
                problems.append(
                    "Pass exactly one of --tokenizer PATH (an existing WordPiece tokenizer, e.g. M-BERT's) "
                    "and --train-tokenizer VOCAB_SIZE (train a new vocabulary on the corpus)."
                )
            if self.train_tokenizer is not None and self.train_tokenizer < MIN_TRAINED_VOCAB:
                problems.append(
                    f"--train-tokenizer {self.train_tokenizer} is too small. Use {MIN_TRAINED_VOCAB} or more "
                    "(several thousand for a model worth fine-tuning)."
                )

        if self.model_size not in MODEL_SIZES:
            problems.append(f"Unknown --model-size {self.model_size!r}. Choose one of {', '.join(MODEL_SIZES)}.")
        unknown = [name for name in self.objectives if name not in OBJECTIVES]
        if unknown or "mlm" not in self.objectives:
            problems.append(f"Invalid --objectives {','.join(self.objectives)!r}. Use 'mlm' or 'mlm,nsp'.")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"Unknown --lr-schedule {self.lr_schedule!r}. Choose one of {', '.join(LR_SCHEDULES)}.")

        minimums = {
            "max_steps": 1, "batch_size": 1, "save_every": 1, "logging_steps": 1,
            "max_seq_length": 8, "warmup_steps": 0, "sampling_exponent": 0,
        }
        for name, minimum in minimums.items():
            if getattr(self, name) < minimum:
                problems.append(f"--{name.replace('_', '-')} must be at least {minimum}, got {getattr(self, name)}.")
        if self.learning_rate <= 0:
            problems.append(f"--learning-rate must be positive, got {self.learning_rate}.")
        if self.max_lines_per_language is not None and self.max_lines_per_language < 3:
            problems.append(f"--max-lines-per-language must be at least 3, got {self.max_lines_per_language}.")

        if problems:
            raise PretrainConfigError("Invalid pretraining settings. " + " ".join(problems))
        if self.warmup_steps >= self.max_steps:
            logger.warning(
                "--warmup-steps %d is not below --max-steps %d, so the learning rate never reaches --learning-rate %g. "
                "Lower --warmup-steps to run at the peak rate.",
                self.warmup_steps, self.max_steps, self.learning_rate,
            )

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


# --------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------


@dataclass
class LanguageCorpus:
    """The segments of one language file, and which of them have a next segment."""

    language: str
    path: Path
    sha256: str
    segments: list[str]
    # Indices i whose segment i + 1 belongs to the same document.
    pair_starts: np.ndarray
    n_documents: int
    n_lines_in_file: int


def corpus_languages(corpus_dir: Path) -> list[str]:
    """Return the language codes of the ``<lang>.txt`` files in a corpus folder."""
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise CorpusError(
            f"Corpus folder not found: {corpus_dir}. Pass --corpus with a folder that contains one "
            "<lang>.txt file per language (UTF-8, one segment per line)."
        )
    languages = sorted(path.stem for path in corpus_dir.glob("*.txt") if path.is_file())
    if not languages:
        raise CorpusError(
            f"No <lang>.txt files in the corpus folder {corpus_dir}. Add one UTF-8 file per language, "
            "named after its language code (e.g. en.txt), with one segment per line."
        )
    return languages


def read_language_file(path: Path, language: str, max_segments: int | None = None) -> LanguageCorpus:
    """Read one language file: each non-blank line is a segment, blank lines end documents."""
    import numpy as np

    from .data import sha256_file

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise CorpusError(f"Corpus file {path} is not valid UTF-8 ({error}). Convert it to UTF-8.") from None
    # Split on "\n" only: str.splitlines() would also break lines at control
    # characters such as U+0085 or U+001C, which some corpus lines contain.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    segments: list[str] = []
    document_ids: list[int] = []
    document = 0
    for line in lines:
        line = line.rstrip("\r")
        if not line.strip():
            document += 1
            continue
        segments.append(line)
        document_ids.append(document)
        if max_segments is not None and len(segments) >= max_segments:
            break
    if not segments:
        raise CorpusError(
            f"Corpus file {path} has no text (no non-blank lines). Fill it with one segment per line, "
            f"or leave {language!r} out of --languages."
        )
    ids = np.asarray(document_ids)
    pair_starts = np.flatnonzero(ids[:-1] == ids[1:])
    return LanguageCorpus(
        language=language,
        path=path,
        sha256=sha256_file(path),
        segments=segments,
        pair_starts=pair_starts,
        n_documents=len(set(document_ids)),
        n_lines_in_file=len(lines),
    )


def read_corpus(
    corpus_dir: Path,
    languages: tuple[str, ...] | list[str] | None = None,
    max_segments: int | None = None,
    use_nsp: bool = False,
) -> dict[str, LanguageCorpus]:
    """Read the chosen languages of a corpus folder, checking that each can be trained on."""
    corpus_dir = Path(corpus_dir)
    available = corpus_languages(corpus_dir)
    chosen = list(languages) if languages else available
    if len(set(chosen)) != len(chosen):
        raise CorpusError(f"--languages lists a language twice: {','.join(chosen)}. List each language once.")
    for language in chosen:
        if language not in available:
            raise CorpusError(
                f"Unknown --languages value {language!r}: {corpus_dir / (language + '.txt')} does not exist. "
                f"Languages in {corpus_dir}: {', '.join(available)}. Fix --languages or add the file."
            )
    corpus = {}
    for language in chosen:
        entry = read_language_file(corpus_dir / f"{language}.txt", language, max_segments)
        if use_nsp and (len(entry.segments) < 3 or len(entry.pair_starts) == 0):
            raise CorpusError(
                f"Corpus file {entry.path} cannot give next-sentence pairs: it needs at least 3 segments, "
                f"two of them consecutive in one document (found {len(entry.segments)} segments, "
                f"{len(entry.pair_starts)} consecutive pairs). Add text, or train with --objectives mlm."
            )
        corpus[language] = entry
    return corpus


def language_probabilities(sizes: dict[str, int], exponent: float) -> dict[str, float]:
    """Return p_l = n_l ** exponent / sum_k n_k ** exponent (exponential smoothing)."""
    weights = {language: float(size) ** exponent for language, size in sizes.items()}
    total = sum(weights.values())
    return {language: weight / total for language, weight in weights.items()}


# --------------------------------------------------------------------------
# Language sampling and training examples
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingExample:
    """One pretraining input: segment A, and for NSP segment B with its label."""

    language: str
    index_a: int
    text_a: str
    index_b: int | None = None
    text_b: str | None = None
    next_sentence_label: int | None = None  # IS_NEXT or IS_RANDOM


class ExampleSampler:
    """Draw training examples: a language by its sampling probability, then segments in it.

    All draws come from one seeded numpy generator, whose state is saved in
    each checkpoint, so a resumed run draws the same examples as an
    uninterrupted one.
    """

    def __init__(self, corpus: dict[str, LanguageCorpus], probabilities: dict[str, float], use_nsp: bool, seed: int):
        import numpy as np

        self.corpus = corpus
        self.languages = sorted(corpus)
        self.probabilities = np.asarray([probabilities[language] for language in self.languages])
        self.use_nsp = use_nsp
        self.rng = np.random.default_rng(seed)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def load_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def draw_language(self) -> str:
        return self.languages[int(self.rng.choice(len(self.languages), p=self.probabilities))]

    def draw(self) -> TrainingExample:
        language = self.draw_language()
        entry = self.corpus[language]
        if not self.use_nsp:
            index = int(self.rng.integers(len(entry.segments)))
            return TrainingExample(language, index, entry.segments[index])
        index_a = int(entry.pair_starts[self.rng.integers(len(entry.pair_starts))])
        if self.rng.random() < 0.5:
            index_b, label = index_a + 1, IS_NEXT
        else:
            # Uniform over every segment except A and its true next segment:
            # draw from n - 2 slots and skip over the two excluded indices.
            index_b = int(self.rng.integers(len(entry.segments) - 2))
            if index_b >= index_a:
                index_b += 2
            label = IS_RANDOM
        return TrainingExample(language, index_a, entry.segments[index_a], index_b, entry.segments[index_b], label)

    def draw_batch(self, batch_size: int) -> list[TrainingExample]:
        return [self.draw() for _ in range(batch_size)]


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------


def load_pretrained_tokenizer(spec: str):
    """Load a WordPiece tokenizer folder (possibly only vocab.txt and tokenizer.json) or hub id."""
    from .models import load_tokenizer, parse_model_spec

    tokenizer = load_tokenizer(parse_model_spec(spec))
    check_special_tokens(tokenizer, spec)
    return tokenizer


def check_special_tokens(tokenizer, where: str) -> None:
    missing = [name for name in ("mask_token", "cls_token", "sep_token", "pad_token") if getattr(tokenizer, name, None) is None]
    if missing:
        raise PretrainConfigError(
            f"Tokenizer {where} has no {', '.join(missing)}, but BERT pretraining needs [MASK], [CLS], [SEP] and [PAD]. "
            "Use a BERT WordPiece tokenizer, or --train-tokenizer VOCAB_SIZE."
        )


def train_wordpiece_tokenizer(corpus: dict[str, LanguageCorpus], probabilities: dict[str, float], vocab_size: int, seed: int):
    """Train a cased WordPiece vocabulary and return it as a BertTokenizerFast.

    The training text is drawn with replacement with the language sampling
    probabilities (as many segments as the corpus has), so small languages
    weigh in the vocabulary as much as in pretraining.
    """
    import numpy as np
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    languages = sorted(corpus)
    total = sum(len(entry.segments) for entry in corpus.values())
    rng = np.random.default_rng(seed)
    draws = rng.choice(len(languages), size=total, p=[probabilities[language] for language in languages])

    def sample_segments():
        for language_index in draws:
            entry = corpus[languages[language_index]]
            yield entry.segments[int(rng.integers(len(entry.segments)))]

    wordpiece = BertWordPieceTokenizer(clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False)
    # Single characters may take at most half of the vocabulary, so that the
    # other half is left for longer pieces even with CJK scripts.
    wordpiece.train_from_iterator(
        sample_segments(),
        vocab_size=vocab_size,
        min_frequency=2,
        limit_alphabet=max(1, vocab_size // 2),
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        length=total,
    )
    logger.info("trained a WordPiece vocabulary of %d pieces on %d sampled segments", wordpiece.get_vocab_size(), total)
    return BertTokenizerFast(vocab=wordpiece.get_vocab(), do_lower_case=False, tokenize_chinese_chars=True, strip_accents=None)


def unk_rates(tokenizer, corpus: dict[str, LanguageCorpus], n_segments: int = UNK_SAMPLE_SEGMENTS) -> dict[str, float]:
    """Return the share of [UNK] tokens per language, on the first segments of each file."""
    rates = {}
    for language, entry in corpus.items():
        encoded = tokenizer(entry.segments[:n_segments], add_special_tokens=False)["input_ids"]
        n_tokens = sum(len(ids) for ids in encoded)
        n_unknown = sum(token == tokenizer.unk_token_id for ids in encoded for token in ids)
        rates[language] = n_unknown / n_tokens if n_tokens else 0.0
    return rates


# --------------------------------------------------------------------------
# Masking and losses
# --------------------------------------------------------------------------


def masking_collator(tokenizer, seed: int):
    """Return transformers' MLM collator with BERT's 15% and 80/10/10 masking and its own seeded generator.

    transformers 5.25's DataCollatorForLanguageModeling selects each
    non-special token with probability ``mlm_probability`` and replaces the
    selected ones with [MASK], a random vocabulary id or nothing in the
    given proportions. Padding positions count as special and are never
    selected.
    """
    from transformers import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(
        tokenizer,
        mlm=True,
        mlm_probability=MLM_PROBABILITY,
        mask_replace_prob=MASK_REPLACE_PROBABILITY,
        random_replace_prob=RANDOM_REPLACE_PROBABILITY,
        seed=seed,
    )
    # Created now rather than on the first batch, so that a checkpoint's
    # generator state can be loaded into it before training resumes.
    collator.create_rng("pt")
    return collator


def make_batch(tokenizer, collator, examples: list[TrainingExample], max_seq_length: int) -> dict[str, torch.Tensor]:
    """Tokenise examples (pairs for NSP), truncate to max_seq_length, pad and mask them."""
    first = [example.text_a for example in examples]
    has_pairs = examples[0].text_b is not None
    second = [example.text_b for example in examples] if has_pairs else None
    encoded = tokenizer(
        first, second, truncation=True, max_length=max_seq_length,
        return_special_tokens_mask=True, return_token_type_ids=True,
    )
    features = []
    for position, example in enumerate(examples):
        feature = {key: encoded[key][position] for key in ("input_ids", "token_type_ids", "attention_mask", "special_tokens_mask")}
        if has_pairs:
            feature["next_sentence_label"] = example.next_sentence_label
        features.append(feature)
    return collator(features)


def pretraining_losses(model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Compute the MLM loss and, when the batch has NSP labels, the NSP loss and accuracy.

    As in BERT's original implementation, the output projection onto the
    vocabulary runs only on the masked positions. With M-BERT's 119,547
    pieces, projecting every position would dominate the step time. The
    losses equal those of the model's own forward pass.
    """
    import torch.nn.functional as F

    outputs = model.bert(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
    )
    labels = batch["labels"]
    masked = labels != -100
    if masked.any():
        prediction_scores = model.cls.predictions(outputs.last_hidden_state[masked])
        mlm_loss = F.cross_entropy(prediction_scores, labels[masked])
    else:
        # No token was selected in this batch (possible only with tiny batches
        # of very short segments). A zero loss keeps the step well defined.
        mlm_loss = outputs.last_hidden_state.sum() * 0.0
    losses = {"mlm": mlm_loss}
    if "next_sentence_label" in batch:
        nsp_scores = model.cls.seq_relationship(outputs.pooler_output)
        losses["nsp"] = F.cross_entropy(nsp_scores, batch["next_sentence_label"])
        losses["nsp_accuracy"] = (nsp_scores.argmax(dim=-1) == batch["next_sentence_label"]).float().mean().detach()
    return losses


# --------------------------------------------------------------------------
# Model and optimiser
# --------------------------------------------------------------------------


def model_class(use_nsp: bool):
    from transformers import BertForMaskedLM, BertForPreTraining

    return BertForPreTraining if use_nsp else BertForMaskedLM


def build_pretraining_model(config: PretrainConfig, tokenizer):
    """Build a randomly initialised BERT of the named size for the tokenizer's vocabulary."""
    import torch
    from transformers import BertConfig

    shape = MODEL_SIZES[config.model_size]
    bert_config = BertConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=config.max_seq_length,
        type_vocab_size=2,
        **dataclasses.asdict(shape),
    )
    torch.manual_seed(config.seed)
    return model_class(config.use_nsp)(bert_config)


def build_optimizer(model, config: PretrainConfig):
    """AdamW with BERT's settings, and the learning-rate schedule."""
    import torch
    from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(parameter)
    # The fused implementation (CPU support since torch 2.4) takes about a
    # quarter of the time of the default one on the tiny model.
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
        eps=ADAM_EPSILON,
        fused=True,
    )
    if config.lr_schedule == "linear":
        scheduler = get_linear_schedule_with_warmup(optimizer, config.warmup_steps, config.max_steps)
    else:
        scheduler = get_constant_schedule_with_warmup(optimizer, config.warmup_steps)
    return optimizer, scheduler


# --------------------------------------------------------------------------
# Output folder, checkpoints and the loss log
# --------------------------------------------------------------------------


def resume_identity(config: PretrainConfig, corpus: dict[str, LanguageCorpus], tokenizer_sha256: str | None) -> dict:
    """Return the settings that must match for a rerun to resume an output folder.

    ``max_steps`` may grow, and ``save_every``, ``logging_steps`` and the
    contamination settings may change, without changing the trained model.
    """
    identity = {
        "model_size": config.model_size,
        "objectives": list(config.objectives),
        "languages": sorted(corpus),
        "max_lines_per_language": config.max_lines_per_language,
        "tokenizer_sha256": tokenizer_sha256,
        "train_tokenizer": config.train_tokenizer,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "warmup_steps": config.warmup_steps,
        "lr_schedule": config.lr_schedule,
        "max_seq_length": config.max_seq_length,
        "sampling_exponent": config.sampling_exponent,
        "seed": config.seed,
    }
    for language, entry in sorted(corpus.items()):
        identity[f"corpus_sha256.{language}"] = entry.sha256
    return json.loads(json.dumps(identity))


def prepare_output(output: Path, identity: dict, config: PretrainConfig) -> dict | None:
    """Check the output folder against this run, and return the stored record when resuming."""
    record_path = output / CONFIG_FILE
    if record_path.is_file():
        stored = json.loads(record_path.read_text(encoding="utf-8"))
        if config.overwrite:
            delete_run(output)
        else:
            old = stored["identity"]
            differing = sorted(key for key in set(old) | set(identity) if old.get(key) != identity.get(key))
            if differing:
                details = "; ".join(f"{key}: {old.get(key)!r} in the folder, {identity.get(key)!r} now" for key in differing)
                raise PretrainConfigError(
                    f"Output folder {output} contains a pretraining run made with other settings ({details}). "
                    "Rerun with the folder's settings to resume, choose another --output, or pass --overwrite "
                    "to delete that run and start over."
                )
            return stored
    elif output.is_dir() and any(output.iterdir()):
        raise PretrainConfigError(
            f"Output folder {output} is not empty and contains no pretraining run ({CONFIG_FILE} is missing). "
            "Choose a new or empty folder for --output."
        )
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record_path, {"identity": identity, "config": config.to_json()})
    return None


def delete_run(output: Path) -> None:
    """Delete the files a pretraining run writes into its output folder, and nothing else."""
    patterns = (
        f"{CHECKPOINT_PREFIX}*", f".{CHECKPOINT_PREFIX}*.tmp", TOKENIZER_DIR, LOSS_LOG_FILE, CONFIG_FILE, INFO_FILE,
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
    )
    logger.warning("--overwrite: deleting the pretraining run in %s", output)
    for pattern in patterns:
        for path in output.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def checkpoint_folders(output: Path) -> list[tuple[int, Path]]:
    """Return the finished checkpoints in an output folder as (step, path), oldest first."""
    found = []
    for path in output.glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = path.name[len(CHECKPOINT_PREFIX):]
        if path.is_dir() and suffix.isdigit() and (path / STATE_FILE).is_file():
            found.append((int(suffix), path))
    return sorted(found)


def save_checkpoint(output: Path, step: int, model, tokenizer, optimizer, scheduler, collator, sampler: ExampleSampler, state: dict) -> Path:
    """Write a checkpoint into a temporary folder and rename it into place, then drop older ones."""
    import torch

    final = output / f"{CHECKPOINT_PREFIX}{step}"
    temporary = output / f".{final.name}.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(temporary)
    tokenizer.save_pretrained(temporary)
    torch.save(optimizer.state_dict(), temporary / "optimizer.pt")
    torch.save(scheduler.state_dict(), temporary / "scheduler.pt")
    torch.save({"torch": torch.get_rng_state(), "masking": collator.generator.get_state()}, temporary / "rng_state.pt")
    # Written last: a checkpoint without this file is incomplete.
    atomic_write_json(temporary / STATE_FILE, {**state, "step": step, "sampler": sampler.state()})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(temporary, final)
    for _, old in checkpoint_folders(output)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("step %d: saved checkpoint %s", step, final)
    return final


def load_checkpoint_states(path: Path, optimizer, scheduler, collator, sampler: ExampleSampler) -> dict:
    """Load the optimizer, scheduler, sampler and RNG states of a checkpoint in place, and return its saved state."""
    import torch

    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng_state.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    collator.generator.set_state(rng["masking"])
    sampler.load_state(state["sampler"])
    return state


def truncate_loss_log(path: Path, step: int) -> None:
    """Drop loss-log entries after ``step``, so a resumed run does not log a step twice."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and json.loads(line)["step"] <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


class LossWindow:
    """Running sums of each loss since the last log entry."""

    def __init__(self, sums: dict[str, float] | None = None, count: int = 0):
        self.sums = dict(sums or {})
        self.count = count

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        for name, value in losses.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value.item())
        self.count += 1

    def means(self) -> dict[str, float]:
        return {name: total / self.count for name, total in self.sums.items()} if self.count else {}

    def to_json(self) -> dict:
        return {"sums": self.sums, "count": self.count}


# --------------------------------------------------------------------------
# Contamination check
# --------------------------------------------------------------------------

_WHITESPACE = re.compile(r"\s+")


def without_whitespace(text: str) -> str:
    return _WHITESPACE.sub("", text)


def task_test_texts(task, split_data) -> list[str]:
    """Texts of a test split as the check compares them: each text field, or a sentence's words joined."""
    texts = []
    for example in split_data.examples:
        if task.is_token_task:
            texts.append("".join(example.texts))
        else:
            texts.extend(example.texts)
    return texts


def check_contamination(
    corpus: dict[str, LanguageCorpus],
    data_dir: Path | None,
    tasks: tuple[str, ...] | list[str] | None = None,
    task_dirs: tuple[Path, ...] | list[Path] | None = None,
) -> dict:
    """Count corpus segments that equal a test text of the declared tasks, after removing all whitespace.

    Test texts of every language of every task are compared with every
    corpus language, so a German corpus line that is an English test text
    counts too. Returns a report with counts per language and task.
    """
    from .data import LocalDataSource, MissingLanguageError

    if data_dir is None:
        reason = "no --data-dir given and XBENCH_DATA_DIR is not set, so the test splits cannot be read"
        logger.warning("contamination check skipped: %s", reason)
        return {"skipped": reason}
    from .tasks import TaskRegistry, default_task_dirs

    registry = TaskRegistry(default_task_dirs() + list(task_dirs or []))
    task_names = list(tasks) if tasks else registry.names()
    source = LocalDataSource(data_dir)
    tasks_by_text: dict[str, set[str]] = {}
    not_checked = []
    for name in task_names:
        task = registry.get(name)
        for language in task.languages:
            try:
                split_data = source.load(task, language, "test")
            except MissingLanguageError as error:
                not_checked.append(f"{name}/{language}")
                logger.warning("contamination check: no %s test split for %s (%s)", name, language, error)
                continue
            for text in task_test_texts(task, split_data):
                key = without_whitespace(text)
                if key:
                    tasks_by_text.setdefault(key, set()).add(name)

    report = {"data_dir": str(data_dir), "split": "test", "tasks": task_names, "not_checked": not_checked, "languages": {}}
    for language, entry in sorted(corpus.items()):
        per_task = {name: 0 for name in task_names}
        matched_lines = 0
        examples = []
        for segment in entry.segments:
            found = tasks_by_text.get(without_whitespace(segment))
            if not found:
                continue
            matched_lines += 1
            for name in found:
                per_task[name] += 1
            if len(examples) < 5:
                examples.append(segment)
        report["languages"][language] = {"segments": len(entry.segments), "matched": matched_lines, "by_task": per_task, "examples": examples}
    report["total_matched"] = sum(row["matched"] for row in report["languages"].values())
    return report


def format_contamination(report: dict) -> str:
    """Render a contamination report as a Markdown table."""
    from tabulate import tabulate

    if "skipped" in report:
        return f"Contamination check skipped: {report['skipped']}."
    names = report["tasks"]
    rows = [
        [language, row["segments"], row["matched"], *(row["by_task"][name] for name in names)]
        for language, row in report["languages"].items()
    ]
    table = tabulate(rows, headers=["language", "segments", "in a test split", *names], tablefmt="github")
    return f"Corpus segments equal to a test text (whitespace removed), data from {report['data_dir']}:\n{table}"


def log_contamination(report: dict) -> None:
    logger.info("%s", format_contamination(report))
    warn_if_contaminated(report)


def warn_if_contaminated(report: dict) -> None:
    if report.get("total_matched"):
        logger.warning(
            "%d corpus segments also occur in the test splits of %s. Remove them from the corpus before pretraining "
            "a model that these tasks will score.",
            report["total_matched"], ", ".join(report["tasks"]),
        )


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------


def log_languages(corpus: dict[str, LanguageCorpus], probabilities: dict[str, float], rates: dict[str, float], exponent: float) -> None:
    from tabulate import tabulate

    total = sum(len(entry.segments) for entry in corpus.values())
    rows = [
        [language, len(entry.segments), f"{len(entry.segments) / total:.4f}", f"{probabilities[language]:.4f}", f"{100 * rates[language]:.2f}"]
        for language, entry in sorted(corpus.items())
    ]
    headers = ["language", "segments n_l", "share of segments", f"sampling probability (n_l^{exponent})", "[UNK] %"]
    logger.info("language sampling, p_l proportional to n_l^%s with n_l = segments (non-blank lines):\n%s", exponent, tabulate(rows, headers=headers, tablefmt="github"))


def check_contamination_only(config: PretrainConfig) -> dict:
    """Read the corpus and run only the contamination check. The caller shows the table."""
    config.validate(need_training=False)
    corpus = read_corpus(config.corpus, config.languages, config.max_lines_per_language)
    report = check_contamination(corpus, config.data_dir, config.tasks, config.task_dirs)
    warn_if_contaminated(report)
    return report


def prepare_tokenizer(config: PretrainConfig, corpus: dict[str, LanguageCorpus], probabilities: dict[str, float], output: Path, source_tokenizer):
    """Return the tokenizer of the run: the given one, or a trained vocabulary saved in the output folder."""
    from transformers import AutoTokenizer

    if source_tokenizer is not None:
        tokenizer = source_tokenizer
    else:
        folder = output / TOKENIZER_DIR
        if not (folder / "tokenizer_config.json").is_file():
            trained = train_wordpiece_tokenizer(corpus, probabilities, config.train_tokenizer, config.seed)
            trained.save_pretrained(folder)
        # Loaded back from disk in every run, so a resumed run uses exactly the saved vocabulary.
        tokenizer = AutoTokenizer.from_pretrained(folder)
    return tokenizer


class Pretraining:
    """One pretraining run: model, optimizer, sampler and masking, from a fresh start or a checkpoint."""

    def __init__(self, config: PretrainConfig, corpus: dict[str, LanguageCorpus], probabilities: dict[str, float], tokenizer, checkpoint: Path | None):
        self.config = config
        self.output = Path(config.output)
        self.tokenizer = tokenizer
        if checkpoint is not None:
            self.model = model_class(config.use_nsp).from_pretrained(checkpoint)
        else:
            self.model = build_pretraining_model(config, tokenizer)
        self.optimizer, self.scheduler = build_optimizer(self.model, config)
        self.collator = masking_collator(tokenizer, config.seed)
        self.sampler = ExampleSampler(corpus, probabilities, config.use_nsp, config.seed)
        self.loss_log = self.output / LOSS_LOG_FILE
        self.step = 0
        self.elapsed_before = 0.0
        self.window = LossWindow()
        if checkpoint is not None:
            # Loaded after the model is built, because building it draws from the torch RNG.
            state = load_checkpoint_states(checkpoint, self.optimizer, self.scheduler, self.collator, self.sampler)
            self.step = state["step"]
            self.elapsed_before = state["elapsed_s"]
            self.window = LossWindow(state["loss_window"]["sums"], state["loss_window"]["count"])
        truncate_loss_log(self.loss_log, self.step)

    def train_step(self) -> float:
        """Run one optimizer step on a fresh batch, and return the learning rate it used."""
        import torch

        examples = self.sampler.draw_batch(self.config.batch_size)
        batch = make_batch(self.tokenizer, self.collator, examples, self.config.max_seq_length)
        losses = pretraining_losses(self.model, batch)
        total_loss = losses["mlm"] + losses["nsp"] if "nsp" in losses else losses["mlm"]
        total_loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), MAX_GRAD_NORM)
        learning_rate = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.window.add(losses)
        return learning_rate

    def log_losses(self, learning_rate: float, elapsed: float) -> dict:
        """Append the mean losses since the last entry to the loss log, and start a new window."""
        means = self.window.means()
        entry = {
            "step": self.step,
            "mlm_loss": means["mlm"],
            "nsp_loss": means.get("nsp"),
            "nsp_accuracy": means.get("nsp_accuracy"),
            "lr": learning_rate,
            "elapsed_s": round(elapsed, 3),
        }
        with open(self.loss_log, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(entry) + "\n")
        nsp_text = f", nsp_loss {entry['nsp_loss']:.4f} (accuracy {entry['nsp_accuracy']:.3f})" if self.config.use_nsp else ""
        logger.info("step %d/%d: mlm_loss %.4f%s, lr %.3g", self.step, self.config.max_steps, entry["mlm_loss"], nsp_text, learning_rate)
        self.window = LossWindow()
        return means

    def save(self, elapsed: float) -> None:
        save_checkpoint(
            self.output, self.step, self.model, self.tokenizer, self.optimizer, self.scheduler, self.collator, self.sampler,
            {"elapsed_s": elapsed, "loss_window": self.window.to_json()},
        )

    def train(self) -> float:
        """Train up to max_steps with logging and checkpoints, and return the total training wall time in seconds."""
        from tqdm.auto import tqdm

        config = self.config
        started = time.time()
        first_step = self.step
        self.model.train()
        with tqdm(total=config.max_steps, initial=self.step, desc="pretrain", unit="step") as progress:
            while self.step < config.max_steps:
                learning_rate = self.train_step()
                progress.update(1)
                elapsed = self.elapsed_before + time.time() - started
                if self.step % config.logging_steps == 0 or self.step == config.max_steps:
                    means = self.log_losses(learning_rate, elapsed)
                    progress.set_postfix({name: f"{value:.3f}" for name, value in means.items()})
                if self.step % config.save_every == 0 or self.step == config.max_steps:
                    self.save(elapsed)
        seconds = time.time() - started
        if self.step > first_step:
            logger.info(
                "trained steps %d-%d in %.1f s (%.3f steps/s)",
                first_step + 1, self.step, seconds, (self.step - first_step) / seconds,
            )
            return self.elapsed_before + seconds
        logger.info("the output folder already contains step %d of %d, so there is nothing to train", self.step, config.max_steps)
        return self.elapsed_before


def latest_checkpoint(output: Path, config: PretrainConfig, stored: dict | None) -> Path | None:
    """Return the checkpoint to resume from, or None. Raise when it is past max_steps."""
    for unfinished in output.glob(f".{CHECKPOINT_PREFIX}*.tmp"):
        logger.info("deleting %s, a checkpoint that an interrupted run did not finish writing", unfinished)
        shutil.rmtree(unfinished, ignore_errors=True)
    checkpoints = checkpoint_folders(output)
    if not checkpoints:
        return None
    step, path = checkpoints[-1]
    if step > config.max_steps:
        raise PretrainConfigError(
            f"Output folder {output} already contains a checkpoint at step {step}, past --max-steps {config.max_steps}. "
            f"Pass --max-steps {step} or more to continue, or --overwrite to start over."
        )
    logger.info("resuming from %s at step %d of %d", path, step, config.max_steps)
    previous_max_steps = (stored or {}).get("config", {}).get("max_steps")
    if config.lr_schedule == "linear" and previous_max_steps not in (None, config.max_steps) and step < config.max_steps:
        logger.warning(
            "--max-steps changed from %s to %d: the linear decay now ends at step %d, so the steps from %d on "
            "differ from a run started with --max-steps %d. Use --lr-schedule constant for runs you intend to extend.",
            previous_max_steps, config.max_steps, config.max_steps, step, config.max_steps,
        )
    return path


def pretrain(config: PretrainConfig) -> dict:
    """Pretrain a BERT on the corpus, resuming from the latest checkpoint in the output folder.

    Returns the record that is also written to ``OUTPUT/xbench_pretrain.json``.
    """
    from .models import tokenizer_hash

    config.validate()
    output = Path(config.output)
    corpus = read_corpus(config.corpus, config.languages, config.max_lines_per_language, config.use_nsp)
    sizes = {language: len(entry.segments) for language, entry in corpus.items()}
    probabilities = language_probabilities(sizes, config.sampling_exponent)

    contamination = check_contamination(corpus, config.data_dir, config.tasks, config.task_dirs)
    log_contamination(contamination)

    source_tokenizer = load_pretrained_tokenizer(config.tokenizer) if config.tokenizer else None
    identity = resume_identity(config, corpus, tokenizer_hash(source_tokenizer) if source_tokenizer is not None else None)
    stored = prepare_output(output, identity, config)
    tokenizer = prepare_tokenizer(config, corpus, probabilities, output, source_tokenizer)
    rates = unk_rates(tokenizer, corpus)
    log_languages(corpus, probabilities, rates, config.sampling_exponent)
    # Saved with the model, so that users of the folder see its position limit.
    tokenizer.model_max_length = config.max_seq_length

    checkpoint = latest_checkpoint(output, config, stored)
    run = Pretraining(config, corpus, probabilities, tokenizer, checkpoint)
    if checkpoint is None:
        logger.info(
            "pretraining a %s BERT (%s parameters) with %s for %d steps, batch %d, into %s",
            config.model_size, f"{run.model.num_parameters():,}", "+".join(config.objectives),
            config.max_steps, config.batch_size, output,
        )
    # Records this run's max_steps, which the next rerun compares with its own.
    atomic_write_json(output / CONFIG_FILE, {"identity": identity, "config": config.to_json()})
    wall_time = run.train()
    return finish(run, corpus, probabilities, rates, identity, contamination, wall_time)


def finish(run: Pretraining, corpus, probabilities, rates, identity, contamination, wall_time: float) -> dict:
    """Save the final model and tokenizer at the top of the output folder, then the run record."""
    from .models import tokenizer_hash

    config, output, model, tokenizer = run.config, run.output, run.model, run.tokenizer
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    entries = [json.loads(line) for line in run.loss_log.read_text(encoding="utf-8").splitlines() if line.strip()]
    last = entries[-1] if entries else {}
    record = {
        "schema": "xbench.pretrain/1",
        "config": config.to_json(),
        "identity": identity,
        "model": {
            "class": type(model).__name__,
            "size": config.model_size,
            "shape": dataclasses.asdict(MODEL_SIZES[config.model_size]),
            "parameters": model.num_parameters(),
            "vocab_size": len(tokenizer),
            "max_position_embeddings": config.max_seq_length,
        },
        "tokenizer": {
            "source": config.tokenizer if config.tokenizer else f"trained WordPiece, {config.train_tokenizer} pieces requested",
            "vocab_size": len(tokenizer),
            "sha256": tokenizer_hash(tokenizer),
        },
        "corpus": {
            "folder": str(Path(config.corpus).resolve()),
            "sampling_unit": "segments (non-blank lines)",
            "sampling_exponent": config.sampling_exponent,
            "languages": {
                language: {
                    "file": str(entry.path),
                    "sha256": entry.sha256,
                    "segments": len(entry.segments),
                    "documents": entry.n_documents,
                    "sampling_probability": probabilities[language],
                    "unk_rate": rates[language],
                }
                for language, entry in sorted(corpus.items())
            },
        },
        "objectives": list(config.objectives),
        "steps": run.step,
        "final_losses": {key: last.get(key) for key in ("step", "mlm_loss", "nsp_loss", "nsp_accuracy")},
        "wall_time_s": round(wall_time, 2),
        "contamination": contamination,
        "environment": environment_provenance(),
    }
    atomic_write_json(output / INFO_FILE, record)
    logger.info("saved the final model and tokenizer in %s, for use as xbench run --model %s", output, output)
    return record
