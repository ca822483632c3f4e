"""Process-group set-up for ``torchrun`` (one process per GPU, or several CPU processes on gloo)."""
from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # A gloo group over the same ranks when the main backend is NCCL: flags known on the host
    # (a stop signal, an empty batch) are agreed on there, without a GPU round trip.
    host_group: object = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment; a lone process needs none."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    host_group = dist.new_group(backend="gloo") if backend == "nccl" else None
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, host_group=host_group)


@contextmanager
def process_group(device_type: str) -> Iterator[DistInfo]:
    """``init_distributed`` for the duration of a ``with`` block, and ``cleanup`` however it ends."""
    info = init_distributed(device_type)
    try:
        yield info
    finally:
        cleanup(info)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def any_rank_flags(flags: list[bool], info: DistInfo, device: torch.device) -> list[bool]:
    """Each flag OR-ed over all ranks, in one collective, so every rank takes the same branch.

    With a host group (NCCL runs) the flags travel through gloo on the CPU: no GPU sync."""
    if not info.enabled:
        return list(flags)
    on_host = info.host_group is not None
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device="cpu" if on_host else device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=info.host_group)
    return [bool(v > 0) for v in t.tolist()]


def mean_across(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    if not info.enabled:
        return values
    t = torch.tensor(values, device=device, dtype=torch.float64)
    dist.all_reduce(t)
    return (t / info.world_size).tolist()


def gather_rows(rows: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """All ranks' ``rows`` (any first-dim length, same trailing shape and dtype), concatenated in rank order.

    Every rank gets the result. The per-rank lengths are exchanged first, so ragged shares (a sampler
    that does not pad) come back whole, and padding that a caller marked can be dropped by the caller.
    """
    if not info.enabled:
        return rows
    n = torch.tensor([rows.shape[0]], device=rows.device, dtype=torch.int64)
    sizes = [torch.zeros_like(n) for _ in range(info.world_size)]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    longest = max(sizes)
    padded = rows.new_zeros((longest, *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's picklable ``obj`` (a few names and reasons, not tensors), in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
