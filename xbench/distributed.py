"""Rank helpers for data-parallel runs under ``torchrun`` or ``accelerate launch``.

Both launchers start one process per device and describe the group in the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``). xbench joins that group once, at the start of a run, with
gloo on CPU and NCCL on CUDA. The Trainer then finds the group already
initialised and trains with DistributedDataParallel in it.

What runs where:

* Fine-tuning runs on every rank (the Trainer splits each batch).
* The dev score that selects the epoch is computed on rank 0 and broadcast,
  so every rank keeps the same epoch's weights.
* Evaluation is sharded: the languages still to score are dealt out
  round-robin, each rank scores its own languages with its in-memory model,
  and the records and predictions are gathered on rank 0.
* Only rank 0 writes files: results, predictions, checkpoints, config.json
  and the leaderboard. The other ranks wait at a barrier where they need
  those files.

Without those environment variables every helper acts as a single process:
rank 0 of a world of 1, and collectives return their input.

torch is imported inside the helpers, so that :func:`quiet_other_ranks` can
run before torch (which imports tqdm) is loaded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from typing import Callable, Iterator, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Matches TrainingArguments.ddp_timeout's default (transformers 5.25). A rank
# waits at most this long for the others, e.g. while rank 0 scores the dev split.
TIMEOUT = dt.timedelta(seconds=1800)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"Environment variable {name}={value!r} is not an integer. Unset it, or start the run with torchrun or accelerate launch, which set it.") from None


def _group():
    """torch.distributed when its default process group is initialised, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def is_distributed() -> bool:
    """True when this process is one of several started by torchrun or accelerate launch."""
    return world_size() > 1


def rank() -> int:
    dist = _group()
    if dist is not None:
        return dist.get_rank()
    return _env_int("RANK", 0)


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0)


def world_size() -> int:
    dist = _group()
    if dist is not None:
        return dist.get_world_size()
    return _env_int("WORLD_SIZE", 1)


def is_main() -> bool:
    """True on rank 0, the only process that writes files and logs tables."""
    return rank() == 0


def backend() -> str:
    """NCCL when CUDA is available, gloo otherwise (CPU)."""
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def init_process_group() -> bool:
    """Join the process group described by the environment. Return True if this call created it."""
    import torch
    import torch.distributed as dist

    if not is_distributed() or _group() is not None:
        return False
    if not dist.is_available():
        raise RuntimeError(
            f"WORLD_SIZE={world_size()} requests a distributed run, but this torch build has no torch.distributed. "
            "Install a torch build with distributed support, or run a single process."
        )
    name = backend()
    if name == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=name, timeout=TIMEOUT)
    logger.info("Joined the process group: rank %d of %d (%s)", rank(), world_size(), name)
    return True


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """Hold the process group for the length of a run, and leave it if this block created it."""
    created = init_process_group()
    try:
        yield
        # Every rank leaves only after rank 0 has written its last file.
        barrier()
    finally:
        dist = _group()
        if created and dist is not None:
            dist.destroy_process_group()


def quiet_other_ranks() -> None:
    """Lower the log level to WARNING and switch off tqdm bars on ranks other than 0.

    Call it before tqdm is first imported: tqdm reads ``TQDM_DISABLE`` when
    its module loads. The bars of :mod:`xbench.predict` are switched off
    explicitly and do not depend on that. The rank comes from ``RANK``, so
    this imports no torch.
    """
    if _env_int("RANK", 0) == 0:
        return
    os.environ["TQDM_DISABLE"] = "1"
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("xbench").setLevel(logging.WARNING)


def progress_bars_off() -> bool:
    """True on ranks other than 0, and where ``TQDM_DISABLE`` is set (the Ray launcher sets it in its workers)."""
    return not is_main() or bool(os.environ.get("TQDM_DISABLE"))


def barrier() -> None:
    dist = _group()
    if dist is not None and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_from_main(value: T) -> T:
    """Return rank 0's ``value`` on every rank."""
    dist = _group()
    if dist is None or dist.get_world_size() == 1:
        return value
    holder = [value if is_main() else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def compute_on_main(function: Callable[[], T]) -> T:
    """Call ``function`` on rank 0 only and return its result on every rank."""
    return broadcast_from_main(function() if is_main() else None)


def gather_to_main(value: T) -> list[T]:
    """Collect one picklable value from every rank, in rank order, on rank 0.

    Rank 0 receives the list, and the other ranks receive an empty list.
    """
    dist = _group()
    if dist is None or dist.get_world_size() == 1:
        return [value]
    gathered: list | None = [None] * world_size() if is_main() else None
    dist.gather_object(value, gathered, dst=0)
    return gathered if gathered is not None else []


def device():
    """Return the torch device for this process's models: its own GPU (``LOCAL_RANK``) when CUDA is available, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", local_rank())
    return torch.device("cpu")
