"""Tokenised splits cached on disk across runs, one file per split and language.

:func:`cached_encode` returns the same :class:`~xbench.encoders.EncodedSplit`
that :func:`xbench.encoders.encode` returns, and stores it under a key that
covers everything the encoding depends on:

* the tokenizer (:func:`xbench.models.tokenizer_hash`, without the
  truncation and padding state of the tokenizer's last call);
* the data files (their sha256) and the examples themselves, so a different
  subsample or a changed reader gives another key;
* the label map and the maximum sequence length;
* the encoder version: the source of ``xbench/encoders.py``, the xbench
  version and the transformers and tokenizers versions;
* the task name, version and type.

Files are NumPy ``.npz`` archives read with ``allow_pickle=False``, written
to a temporary file and renamed into place. A file that cannot be read, or
whose stored key differs from the expected one, is logged as a warning,
ignored and rebuilt.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
import weakref
import zipfile
from pathlib import Path

import numpy as np
import tokenizers
import transformers

from . import __version__
from . import encoders
from .data import Example
from .encoders import EncodedSplit, encode
from .models import tokenizer_hash
from .results import default_file_mode
from .tasks import TaskSpec

logger = logging.getLogger(__name__)

# Bump when the layout of the stored arrays changes.
CACHE_FORMAT = 1

# Environment variable that overrides the default cache folder.
CACHE_DIR_ENV = "XBENCH_CACHE_DIR"

# Ragged fields of EncodedSplit: one integer list per row.
_RAGGED_FIELDS = ("input_ids", "token_type_ids", "owned_words")
# Flat fields: one integer per row or per example.
_FLAT_FIELDS = ("example_of_row", "n_words")

# Tokenizer hashes by tokenizer object. Hashing MiniLM's 30k-token vocabulary
# took 0.3 s on a 2-core CPU, so it runs once per tokenizer and again when the
# vocabulary size changes (for example after add_tokens).
# NOTE: a tokenizer changed in place without a change in vocabulary size (for
# example a new normalizer) keeps its first hash.
_tokenizer_hashes: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class CacheFileError(ValueError):
    """A cache file that cannot be read back into an EncodedSplit."""


def default_cache_dir() -> Path:
    """Return ``$XBENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/xbench/encoded``, else ``~/.cache/xbench/encoded``."""
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xbench" / "encoded"


@functools.cache
def encoder_version() -> str:
    """Hash the encoder source and the library versions that shape tokenisation."""
    digest = hashlib.sha256()
    digest.update(Path(encoders.__file__).read_bytes())
    for part in (__version__, transformers.__version__, tokenizers.__version__):
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()


def stable_tokenizer_hash(tokenizer) -> str:
    """Hash a tokenizer like :func:`xbench.models.tokenizer_hash`, leaving out its call state.

    A fast tokenizer's backend stores the truncation and padding settings of
    its last call, and ``tokenizer_hash`` hashes them with the rest. The same
    tokenizer would then get another key after a call with
    ``truncation=True``, for example after tokenising the training split.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tokenizer_hash(tokenizer)
    vocab = tokenizer.get_vocab()
    settings = json.loads(backend.to_str())
    settings.pop("truncation", None)
    settings.pop("padding", None)
    payload = json.dumps(sorted(vocab.items()), ensure_ascii=False) + type(tokenizer).__name__
    payload += json.dumps(settings, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def cached_tokenizer_hash(tokenizer) -> str:
    """Return :func:`stable_tokenizer_hash`, computed once per tokenizer object and vocabulary size."""
    size = len(tokenizer)
    try:
        stored = _tokenizer_hashes.get(tokenizer)
    except TypeError:
        return stable_tokenizer_hash(tokenizer)
    if stored is not None and stored[0] == size:
        return stored[1]
    digest = stable_tokenizer_hash(tokenizer)
    _tokenizer_hashes[tokenizer] = (size, digest)
    return digest


def examples_hash(examples: list[Example]) -> str:
    """Hash the uid, texts and label of every example, in order."""
    digest = hashlib.sha256()
    for example in examples:
        record = [example.uid, list(example.texts), example.label if isinstance(example.label, str) else list(example.label)]
        digest.update(json.dumps(record, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def data_files_hash(data_hashes: dict | str) -> str:
    """Hash the data file digests, keyed by file name so a moved data folder keeps its key."""
    if isinstance(data_hashes, str):
        return data_hashes
    named = sorted((Path(str(name)).name, str(value)) for name, value in data_hashes.items())
    return hashlib.sha256(json.dumps(named).encode()).hexdigest()


def cache_key(task: TaskSpec, tokenizer, examples: list[Example], label2id: dict[str, int], max_length: int, data_hashes: dict | str) -> dict:
    """Return every input that the encoding depends on, as a JSON-ready dict."""
    return {
        "format": CACHE_FORMAT,
        "task": task.name,
        "task_version": task.version,
        "task_type": task.task_type,
        "tokenizer": cached_tokenizer_hash(tokenizer),
        "data_files": data_files_hash(data_hashes),
        "examples": examples_hash(examples),
        "n_examples": len(examples),
        "label2id": sorted(label2id.items()),
        "max_length": max_length,
        "encoder": encoder_version(),
    }


def cache_path(cache_dir: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return Path(cache_dir) / str(key["task"]) / f"{digest[:40]}.npz"


def cached_encode(
    task: TaskSpec,
    tokenizer,
    examples: list[Example],
    label2id: dict[str, int],
    max_length: int,
    data_hashes: dict | str,
    cache_dir: Path,
    desc: str = "tokenize",
) -> EncodedSplit:
    """Return :func:`xbench.encoders.encode` of ``examples``, read from ``cache_dir`` when stored.

    A miss encodes the examples and stores the result. A cache file that
    cannot be read is logged as a warning and rebuilt. A failed write is
    logged as a warning, and the encoding is returned all the same.
    """
    key = cache_key(task, tokenizer, examples, label2id, max_length, data_hashes)
    path = cache_path(cache_dir, key)
    if path.is_file():
        try:
            encoded = load_encoded(path, key)
        except CacheFileError as error:
            logger.warning("%s: ignoring the unreadable tokenisation cache file %s (%s); tokenising again", desc, path, error)
        else:
            logger.debug("%s: tokenisation read from %s", desc, path)
            return encoded
    encoded = encode(task.is_token_task, tokenizer, examples, label2id, max_length, desc)
    try:
        save_encoded(path, key, encoded)
    except OSError as error:
        logger.warning("%s: could not write the tokenisation cache file %s (%s); continuing without it", desc, path, error)
    return encoded


def _pack(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(row) for row in rows], out=offsets[1:])
    values = np.fromiter((value for row in rows for value in row), dtype=np.int64, count=int(offsets[-1]))
    return values, offsets


def _unpack(values: np.ndarray, offsets: np.ndarray, name: str) -> list[list[int]]:
    if offsets.ndim != 1 or len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(values) or np.any(np.diff(offsets) < 0):
        raise CacheFileError(f"the offsets of {name} do not match its {len(values)} values")
    flat = values.tolist()
    bounds = offsets.tolist()
    return [flat[start:end] for start, end in zip(bounds[:-1], bounds[1:])]


def save_encoded(path: Path, key: dict, encoded: EncodedSplit) -> None:
    """Write ``encoded`` and its key to ``path`` through a temporary file and a rename."""
    per_position_labels = encoded.owned_words is not None
    meta = {
        "key": key,
        "n_examples": encoded.n_examples,
        "stats": encoded.stats,
        "per_position_labels": per_position_labels,
        "present": [name for name in (*_RAGGED_FIELDS, *_FLAT_FIELDS) if getattr(encoded, name) is not None],
    }
    arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta, sort_keys=True))}
    for name in _RAGGED_FIELDS:
        rows = getattr(encoded, name)
        if rows is not None:
            arrays[f"{name}.values"], arrays[f"{name}.offsets"] = _pack(rows)
    for name in _FLAT_FIELDS:
        values = getattr(encoded, name)
        if values is not None:
            arrays[name] = np.asarray(values, dtype=np.int64)
    if per_position_labels:
        arrays["labels.values"], arrays["labels.offsets"] = _pack(encoded.labels)
    else:
        arrays["labels"] = np.asarray(encoded.labels, dtype=np.int64)

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, default_file_mode())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_encoded(path: Path, key: dict) -> EncodedSplit:
    """Read an EncodedSplit stored under ``key``; raise :class:`CacheFileError` if the file is unusable."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        meta = json.loads(str(arrays["meta"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise CacheFileError(f"{type(error).__name__}: {error}") from None
    if meta.get("key") != json.loads(json.dumps(key)):
        raise CacheFileError("the stored key differs from the expected key")

    try:
        present = set(meta["present"])
        fields: dict = {}
        for name in _RAGGED_FIELDS:
            fields[name] = _unpack(arrays[f"{name}.values"], arrays[f"{name}.offsets"], name) if name in present else None
        for name in _FLAT_FIELDS:
            fields[name] = arrays[name].tolist() if name in present else None
        if meta["per_position_labels"]:
            labels = _unpack(arrays["labels.values"], arrays["labels.offsets"], "labels")
        else:
            labels = arrays["labels"].tolist()
        encoded = EncodedSplit(
            input_ids=fields["input_ids"],
            token_type_ids=fields["token_type_ids"],
            labels=labels,
            example_of_row=fields["example_of_row"],
            n_examples=int(meta["n_examples"]),
            owned_words=fields["owned_words"],
            n_words=fields["n_words"],
            stats={name: float(value) for name, value in meta["stats"].items()},
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CacheFileError(f"missing or invalid field: {type(error).__name__}: {error}") from None
    _check_shapes(encoded)
    return encoded


def _check_shapes(encoded: EncodedSplit) -> None:
    rows = len(encoded.input_ids)
    for name in ("token_type_ids", "owned_words", "labels", "example_of_row"):
        values = getattr(encoded, name)
        if values is not None and len(values) != rows:
            raise CacheFileError(f"{name} has {len(values)} rows, input_ids has {rows}")
