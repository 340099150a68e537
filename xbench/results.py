"""The results store: one JSON file per (task, model, seed, language).

Each result is written to a temporary file in the same folder and renamed
into place, so a reader sees either the whole record or none of it, and a
crash never leaves half a file. Several processes may write to one store at
once: they write different files, and renaming is atomic on POSIX and
Windows file systems. Only this module writes results. Everything else reads
them through :func:`load_records`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import platform
import subprocess
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

SCHEMA = "xbench.result/1"
STORE_DIR = "store"
OVERWRITE_POLICIES = ("skip", "recompute", "fail")


class ResultExistsError(RuntimeError):
    """A result that is already stored, under --overwrite fail or with another config."""


def default_file_mode() -> int:
    """Return the mode that open() would give a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, default_file_mode())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, payload) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def config_hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ResultStore:
    """Result files under ``RUN_DIR/store``."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / STORE_DIR

    def path_for(self, task: str, model_slug: str, seed: int, language: str) -> Path:
        return self.root / task / model_slug / f"seed-{seed}" / f"{language}.json"

    def get(self, task: str, model_slug: str, seed: int, language: str) -> dict | None:
        path = self.path_for(task, model_slug, seed, language)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            logger.warning("Ignoring unreadable result %s (%s); it will be recomputed", path, error)
            return None

    def should_compute(
        self, task: str, model_slug: str, seed: int, language: str, expected_hash: str, policy: str,
        expected_config: dict | None = None,
    ) -> bool:
        """Apply the overwrite policy to one result. True means compute it.

        ``expected_config`` is the configuration behind ``expected_hash``. When
        given, a mismatch error names the settings that differ.
        """
        if policy not in OVERWRITE_POLICIES:
            raise ValueError(f"Unknown overwrite policy {policy!r}. Use one of: {', '.join(OVERWRITE_POLICIES)}.")
        existing = self.get(task, model_slug, seed, language)
        if existing is None:
            return True
        where = self.path_for(task, model_slug, seed, language)
        if policy == "fail":
            raise ResultExistsError(f"Result already exists: {where}. Use --overwrite skip or recompute, or another --output.")
        if policy == "recompute":
            return True
        if existing.get("config_hash") != expected_hash:
            stored = existing.get("provenance", {}).get("config")
            if expected_config is not None and isinstance(stored, dict):
                changed = sorted(key for key in set(stored) | set(expected_config) if stored.get(key) != expected_config.get(key))
                difference = ", ".join(f"{key}: stored {stored.get(key)!r}, now {expected_config.get(key)!r}" for key in changed)
            else:
                difference = f"config hash {existing.get('config_hash')}, now {expected_hash}"
            raise ResultExistsError(
                f"{where} was computed with another configuration ({difference}). "
                "Use --overwrite recompute to replace it, or another --output."
            )
        return False

    def write(self, record: dict) -> Path:
        record = {"schema": SCHEMA, **record}
        path = self.path_for(record["task"], record["model_slug"], record["seed"], record["language"])
        atomic_write_json(path, record)
        return path


def load_records(paths: list[Path | str]) -> list[dict]:
    """Read result records from run folders, store folders or JSON files.

    Temporary files of interrupted writes are skipped. Unreadable files are
    skipped with a warning, so a partial run can still be read.
    """
    records = []
    for given in paths:
        path = Path(given)
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*.json") if not p.name.startswith("."))
        else:
            raise FileNotFoundError(f"Results path not found: {path}")
        for file in files:
            try:
                record = json.loads(file.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                logger.warning("Skipping unreadable result file %s: %s", file, error)
                continue
            if isinstance(record, dict) and record.get("schema") == SCHEMA:
                records.append(record)
    return records


def flat_results(records: list[dict]) -> list[dict]:
    """Flatten records into one row per (task, model, seed, language, metric) for results.json."""
    rows = []
    for record in sorted(records, key=lambda r: (r["task"], r["model_name"], r["seed"], not r["is_source"], r["language"])):
        for metric, value in record["scores"].items():
            rows.append({
                "task": record["task"],
                "language": record["language"],
                "is_source": record["is_source"],
                "split": record["split"],
                "metric": metric,
                "main": metric == record["main_metric"],
                "score": value,
                "ci95": record.get("ci95", {}).get(metric),
                "n_examples": record["n_examples"],
                "model": record["model"],
                "model_name": record["model_name"],
                "seed": record["seed"],
            })
    return rows


# --------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------


def _package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        output = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return output.stdout.strip() or None if output.returncode == 0 else None


def environment_provenance() -> dict:
    """Versions of xbench and its main dependencies, and the hardware."""
    import torch

    from . import __version__

    hardware = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return {
        "xbench_version": __version__,
        "xbench_git_commit": git_commit(),
        "packages": {name: _package_version(name) for name in ("torch", "transformers", "datasets", "tokenizers", "seqeval", "evaluate")},
        "hardware": hardware,
        "recorded_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
