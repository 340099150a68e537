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
DEMO_BANNER = (
    "DEMO: toy data written for xbench and a tiny randomly initialised model. "
    "These scores mean nothing; they only show that the pipeline runs."
)
# The banner when --model replaces the tiny model.
DEMO_BANNER_OWN_MODEL = (
    "DEMO: toy data written for xbench, a few dozen examples per language. "
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
    """Write a cased WordPiece vocabulary of the demo texts and save a tokenizer.

    The vocabulary is every word and every character of the demo texts, in
    sorted order, so it is the same on every machine and in every run. A
    trained vocabulary would not be: ties between equally frequent merges are
    broken differently from run to run, which changes the token ids.
    """
    from tokenizers.pre_tokenizers import BertPreTokenizer
    from transformers import BertTokenizerFast

    if (folder / "tokenizer_config.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    splitter = BertPreTokenizer()
    words: set[str] = set()
    for text in _demo_texts():
        words.update(piece for piece, _ in splitter.pre_tokenize_str(text))
    characters = sorted({character for word in words for character in word})
    vocabulary = (
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        + characters
        + [f"##{character}" for character in characters]
        + sorted(words - set(characters))
    )
    (folder / "vocab.txt").write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=False, strip_accents=False)
    tokenizer.save_pretrained(folder)
    logger.info("Built the demo tokenizer in %s (%d entries)", folder, len(tokenizer))
    return folder


def demo_config(config, explicit_tasks: bool, explicit_model: bool, explicit_output: bool):
    """Point a run config at the bundled demo tasks, data and tiny model."""
    output = config.output if explicit_output else Path("runs/demo")
    models = config.models if explicit_model else [f"tiny-random:{build_demo_tokenizer(output / 'demo-tokenizer')}"]
    return dataclasses.replace(
        config,
        tasks=config.tasks if explicit_tasks else list(DEMO_TASKS),
        models=models,
        output=output,
        data_dir=config.data_dir or DEMO_DATA_DIR,
        task_dirs=[DEMO_TASKS_DIR] + list(config.task_dirs or []),
        banner=DEMO_BANNER_OWN_MODEL if explicit_model else DEMO_BANNER,
        preset=None,
    )
