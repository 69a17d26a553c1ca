"""PyTorch's own DDP, as ``torchrun`` sets it up: one process per device, only rank 0 writes.

``torchrun --nproc_per_node N -m tame_core train ...`` sets RANK/WORLD_SIZE/LOCAL_RANK; without them
training runs in one process and every collective here is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..devices import parse_device


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls, device: str = "auto") -> Distributed:
        """Join the process group torchrun describes (gloo on CPUs, NCCL on GPUs), or run alone."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        chosen = parse_device(device)
        if chosen.type == "cuda" and chosen.index is None:
            chosen = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        if world == 1:
            return cls(device=chosen)
        owns = not dist.is_initialized()
        if owns:
            dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, chosen, owns)

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module under DDP (gradients averaged over ranks; rank 0's weights and buffers broadcast)."""
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            values = values.clone()
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
            values /= self.world
        return values

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any (so all ranks stop at the same step)."""
        if self.world == 1:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def gather(self, items: Sequence[Any]) -> list[Any]:
        """Every rank's ``items``, concatenated in rank order, on every rank."""
        if self.world == 1:
            return list(items)
        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, list(items))
        return [item for part in parts for item in part]

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a state read by rank 0 alone: no shared disk needed)."""
        if self.world == 1:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def counter(self, name: str) -> Callable[[int], int]:
        """``add(n)``: adds ``n`` to a count every rank shares and returns the new total (``add(0)`` reads it),
        without waiting for the other ranks: the process group's key-value store, on every machine. Alone, a
        local count. A torchrun restart starts a fresh count."""
        if self.world == 1:
            total = [0]

            def add(n: int) -> int:
                total[0] += n
                return total[0]

            return add
        store = dist.distributed_c10d._get_default_store()  # the store every rank joined the group through
        key = f"tame/{name}/restart{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        return lambda n: int(store.add(key, int(n)))

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
