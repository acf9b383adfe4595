"""Data-parallel training across processes started by torchrun (`trainer.strategy=ddp`).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK in each process's environment; `Dist.start` joins the process
group (gloo on CPU, NCCL on CUDA, each process on cuda:LOCAL_RANK). Every rank trains on a disjoint share of
each global batch; rank 0 alone writes outputs. Collectives time out (`TIMEOUT`) so a lost peer ends the job.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist

from lrtrain.errors import ConfigValueError

TIMEOUT = datetime.timedelta(minutes=5)


@dataclass
class Dist:
    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def start(device: torch.device) -> "Dist":
        missing = [k for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
                   if k not in os.environ]
        if missing:
            raise ConfigValueError("trainer.strategy", "ddp", "single outside torchrun (start the job with "
                                   "`torchrun --nproc_per_node=N -m lrtrain trainer.strategy=ddp ...`; "
                                   f"{', '.join(missing)} not set)")
        if device.type not in ("cpu", "cuda"):
            raise ConfigValueError("trainer.strategy", "ddp", f"single on {device.type} (ddp runs on cpu or cuda)")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        if not tdist.is_initialized():
            tdist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
        return Dist(tdist.get_rank(), tdist.get_world_size(), device)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise mean over ranks (one collective), identical on every rank."""
        values = values.to(self.device, torch.float64).clone()
        tdist.all_reduce(values)
        return values / self.world_size

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        values = values.to(self.device).clone()
        tdist.all_reduce(values)
        return values

    def from_main(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank: decisions are rank 0's, so no rank waits on a collective alone."""
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        tdist.barrier()

    @staticmethod
    def stop() -> None:
        if tdist.is_initialized():
            tdist.destroy_process_group()


def weights_hash(state: dict[str, torch.Tensor]) -> str:
    """A digest of a model's state dict, to check that every rank ends with the same weights."""
    digest = hashlib.sha256()
    for name, value in state.items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
