"""The timm producer under torchrun: one process (rank) per device, torch.distributed between.

torchrun starts N copies of ``ee produce`` and tells each its place through environment
variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).
``Launch.from_env`` reads them (None without ``WORLD_SIZE`` or with a single process: a plain
run, exactly as without torchrun), ``rank_device`` gives each rank its own GPU
(``cuda:LOCAL_RANK``) and ``process_group`` joins the group through ``env://``: NCCL on CUDA,
gloo on CPU, or the backend ``EE_DIST_BACKEND`` names (``ee produce --dist-backend``). Every
collective step gives up after ``TIMEOUT``, so a rank that stopped never holds the others
forever (torchrun itself stops them all when one exits with an error).

What the ranks share (see ``train``, ``loaders`` and ``ee_tta.predict``):

- training: every rank holds the model wrapped in DistributedDataParallel and trains on its
  share of each epoch; each rank's batch is the recipe's ``batch_size``, so the global batch is
  N × batch_size, as with timm's train.py (scale ``lr`` with it if you want the same schedule);
- validation: each rank evaluates every N-th val image and the sums are added up, after the
  batch-norm running statistics are averaged over the ranks (timm's ``--dist-bn reduce``);
- loss state: a loss that pools features (``dsb_focal``) gets every rank's features and labels
  of each step (``TorchGroup.gather_rows``, an all_gather), in rank order, so its pools and
  class weights are the same on every rank, and rank 0's checkpoint holds what each rank used;
- files: rank 0 alone writes the run folder and prints; every rank reads ``last.pth`` to resume,
  so the run folder (like the store) must be on a filesystem every node sees;
- prediction: the ranks split each split's rows (``ensemble_engine.shards``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ensemble_engine import RecipeError

BACKEND_ENV = "EE_DIST_BACKEND"
BACKENDS = ("nccl", "gloo")
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class Launch:
    """This process's place among torchrun's: global rank, number of ranks, rank on its node."""

    rank: int
    size: int
    local_rank: int

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Launch | None:
        """torchrun's variables; None when there are none (or a single process)."""
        env = dict(os.environ if env is None else env)
        if "WORLD_SIZE" not in env:
            return None
        values = {}
        for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
            text = env.get(key, "0" if key == "LOCAL_RANK" else "")
            if not text.strip().isdigit():
                raise RecipeError(
                    f"{key}={text!r} is not a rank number: start ee under torchrun, or unset "
                    "WORLD_SIZE for a single process"
                )
            values[key] = int(text)
        launch = cls(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
        if not 0 <= launch.rank < launch.size:
            raise RecipeError(f"RANK={launch.rank} is outside WORLD_SIZE={launch.size}")
        return launch if launch.size > 1 else None


def rank_device(device: torch.device, launch: Launch | None) -> torch.device:
    """The rank's own device: ``cuda:LOCAL_RANK`` on CUDA, else ``device`` itself."""
    if launch is None or device.type != "cuda":
        return device
    if device.index is not None:
        raise RecipeError(
            f"device {device} names one GPU, but under torchrun each rank takes cuda:LOCAL_RANK; "
            "pass --device cuda"
        )
    count = torch.cuda.device_count()
    if launch.local_rank >= count:
        raise RecipeError(
            f"rank {launch.rank} needs GPU cuda:{launch.local_rank}, but this machine has {count}; "
            f"start at most {count} processes per machine (--nproc, --nproc_per_node)"
        )
    return torch.device("cuda", launch.local_rank)


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA devices, gloo for CPU ones, unless ``EE_DIST_BACKEND`` says otherwise."""
    chosen = os.environ.get(BACKEND_ENV, "").strip().lower()
    if not chosen:
        return "nccl" if device.type == "cuda" else "gloo"
    if chosen not in BACKENDS:
        raise RecipeError(f"{BACKEND_ENV}={chosen!r} is not a backend; use {' or '.join(BACKENDS)}")
    if chosen == "nccl" and device.type != "cuda":
        raise RecipeError("the nccl backend needs CUDA devices; use --dist-backend gloo on CPU")
    return chosen


class TorchGroup:
    """The ranks of torch's default process group (an ``ensemble_engine.shards.Group``)."""

    def __init__(self, launch: Launch, device: torch.device, backend: str) -> None:
        self.rank, self.size, self.device = launch.rank, launch.size, device
        # NCCL reduces tensors on the GPU only; gloo on the CPU.
        self.comm_device = device if backend == "nccl" else torch.device("cpu")

    def broadcast(self, obj: Any) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        out: list[Any] | None = [None] * self.size if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out

    def barrier(self) -> None:
        dist.barrier()

    def gather_rows(
        self, features: torch.Tensor, labels: torch.Tensor, rows: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's ``features`` [n, p] and ``labels`` [n] (n <= ``rows``), on every rank,
        concatenated in rank order (float32). One all_gather: each rank sends ``rows`` rows,
        the labels as a last column, -1 on the padding rows, which are dropped after."""
        n, dim = features.shape
        packed = torch.zeros(rows, dim + 1, dtype=torch.float32, device=self.comm_device)
        packed[:, dim] = -1.0
        packed[:n, :dim] = features.detach().float()
        packed[:n, dim] = labels.float()  # class indices, exact in float32 below 2**24
        parts = [torch.empty_like(packed) for _ in range(self.size)]
        dist.all_gather(parts, packed)
        every = torch.cat(parts).to(features.device)
        kept = every[every[:, dim] >= 0]
        return kept[:, :dim], kept[:, dim].long()

    def sum(self, values: Sequence[float]) -> list[float]:
        """Each value summed over the ranks (float64), on every rank."""
        total = torch.tensor(list(values), dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(total)
        return total.tolist()


@contextlib.contextmanager
def process_group(launch: Launch | None, device: torch.device) -> Iterator[TorchGroup | None]:
    """Join torchrun's process group for the block (None, and nothing done, for one process)."""
    if launch is None:
        yield None
        return
    backend = backend_for(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend, init_method="env://", rank=launch.rank, world_size=launch.size, timeout=TIMEOUT,
        device_id=device if device.type == "cuda" else None,  # the GPU NCCL's barrier uses
    )  # fmt: skip
    try:
        yield TorchGroup(launch, device, backend)
    finally:
        dist.destroy_process_group()


def wrap_model(model: nn.Module, group: TorchGroup | None) -> nn.Module:
    """``model`` in DistributedDataParallel (gradients averaged over the ranks), or as it is."""
    if group is None:
        return model
    ids = [group.device.index] if group.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def average_batch_norm(models: Sequence[nn.Module | None], group: TorchGroup | None) -> None:
    """Average the batch-norm running statistics over the ranks (each rank saw other images),
    so that every rank validates, and rank 0 saves, the same weights."""
    if group is None:
        return
    from timm.utils import distribute_bn

    for model in models:
        if model is not None:
            distribute_bn(model, group.size, reduce=True)
