"""Several processes, one run: the rank, barriers and gathers that keep one run directory consistent.

`torchrun --nproc_per_node N` and `accelerate launch --num_processes N` both start N copies of
`run_experiment.py` with `RANK`, `LOCAL_RANK` and `WORLD_SIZE` set. accelerate's `PartialState`
(which TRL's trainer uses too) joins them into one process group: gloo on a CPU, NCCL on GPUs.
Only the main process writes files; the other ranks compute the same numbers from gathered data.
With one process every function here is a no-op or the identity.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any


def world_size() -> int:
    """Processes in this run, from the launcher's `WORLD_SIZE` (1 when started directly)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _group_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init() -> None:
    """Join the launcher's process group now (before the run directory is touched); a no-op for one process."""
    if world_size() > 1:
        from accelerate import PartialState

        state = PartialState()
        if state.device.type == "cpu":
            _restore_cpu_index_locations()


def _restore_cpu_index_locations() -> None:
    """Let `torch.load` restore storages tagged `cpu:<n>`.

    Over gloo, transformers (5.17) loads the optimizer state of a resumed run with `map_location=args.device`,
    which is `cpu:<rank>` there, and torch's own CPU deserializer accepts only the tag `cpu`.
    """
    import torch.serialization

    def restore(obj, location: str):
        return obj.cpu() if location.startswith("cpu:") else None

    torch.serialization.register_package(100, lambda obj: None, restore)


def rank() -> int:
    """This process's global rank (0 when there is one process)."""
    if _group_ready():
        import torch.distributed as dist

        return dist.get_rank()
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def is_main() -> bool:
    """Whether this process writes the run directory."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process reaches this point."""
    if _group_ready():
        import torch.distributed as dist

        dist.barrier()


def gather(obj: Any) -> list[Any]:
    """Every process's `obj`, in rank order, on every process (`[obj]` for one process)."""
    if not _group_ready():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def sum_floats(values: Sequence[float]) -> list[float]:
    """Elementwise sums of `values` over all processes (the same list on every process)."""
    if not _group_ready():
        return [float(v) for v in values]
    return [sum(col) for col in zip(*gather([float(v) for v in values]), strict=True)]


def shard(count: int) -> list[int]:
    """The indices `0..count-1` this process handles: round-robin over the processes."""
    return list(range(rank() if _group_ready() else 0, count, gather_size()))


def gather_size() -> int:
    """Processes that `gather` collects from (1 before the process group exists)."""
    if not _group_ready():
        return 1
    import torch.distributed as dist

    return dist.get_world_size()
