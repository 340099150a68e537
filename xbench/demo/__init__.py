"""The offline demo: toy data bundled with xbench and a tiny model built on the fly.

``xbench run --preset demo`` needs no network, no data and no download. It
trains a WordPiece vocabulary on the bundled texts, builds a tiny random BERT
on it and runs the real pipeline on three toy tasks. The scores mean nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).resolve().parent
DEMO_DATA_DIR = DEMO_DIR / "data"
DEMO_TASKS_DIR = DEMO_DIR / "tasks"
DEMO_TASKS = ["demo-nli", "demo-ner", "demo-sentiment"]
DEMO_VOCAB_SIZE = 2000
DEMO_BANNER = (
    "DEMO: toy data written for xbench and a tiny randomly initialised model. "
    "These scores mean nothing; they only show that the pipeline runs."
)


def _demo_texts() -> list[str]:
    texts = []
    for path in sorted(DEMO_DATA_DIR.rglob("*")):
        if path.suffix not in (".tsv", ".txt") or path.name.endswith("_labels.txt"):
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            texts.append(line.split("\t")[0] if "/ner/" in str(path) else line)
    return texts


def build_demo_tokenizer(folder: Path) -> Path:
    """Train a small cased WordPiece vocabulary on the demo texts and save it."""
    from tokenizers import BertWordPieceTokenizer

    from ..models import bare_bert_tokenizer

    if (folder / "tokenizer_config.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    trainer = BertWordPieceTokenizer(lowercase=False, strip_accents=False, clean_text=True)
    trainer.train_from_iterator(_demo_texts(), vocab_size=DEMO_VOCAB_SIZE, min_frequency=1, show_progress=False)
    trainer.save_model(str(folder))
    trainer.save(str(folder / "tokenizer.json"))
    tokenizer = bare_bert_tokenizer(folder)
    tokenizer.save_pretrained(folder)
    logger.info("Built the demo tokenizer in %s (%d entries)", folder, len(tokenizer))
    return folder


def demo_config(config, explicit_tasks: bool, explicit_model: bool, explicit_output: bool):
    """Point a run config at the bundled demo tasks, data and tiny model."""
    output = config.output if explicit_output else Path("runs/demo")
    tokenizer_dir = build_demo_tokenizer(output / "demo-tokenizer")
    return dataclasses.replace(
        config,
        tasks=config.tasks if explicit_tasks else list(DEMO_TASKS),
        models=config.models if explicit_model else [f"tiny-random:{tokenizer_dir}"],
        output=output,
        data_dir=config.data_dir or DEMO_DATA_DIR,
        task_dirs=[DEMO_TASKS_DIR] + list(config.task_dirs or []),
        banner=DEMO_BANNER,
        preset=None,
    )
