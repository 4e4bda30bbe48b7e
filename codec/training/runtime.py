"""Where and how a run trains: device, autocast precision, DDP rank, and the RNG states a
checkpoint carries (CPU ByteTensors, loadable with ``weights_only=True``)."""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist
from torch import Tensor

from codec.errors import UserError
from codec.training.params import TrainParams


@dataclasses.dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype, None for fp32
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_runtime(params: TrainParams) -> Runtime:
    """Device, precision and DDP rank from ``params`` and the ``torchrun`` environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if params.device == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is 'cuda' but no CUDA device is visible; set train.device to auto or cpu")
    use_cuda = params.device == "cuda" or (params.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    else:
        device = torch.device("cpu")
        # Quiet passages of speech decay into denormal floats, which x86 handles in
        # microcode at a large cost; flushing them to zero changes no result that matters.
        torch.set_flush_denormal(True)
    if params.precision == "bf16" and not use_cuda:
        raise UserError(
            "train.precision bf16 needs CUDA here (CPU trains in fp32); set train.precision to auto or fp32"
        )
    dtype = torch.bfloat16 if use_cuda and params.precision in ("auto", "bf16") else None
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if world > 1 and params.batch_size % world:
        raise UserError(
            f"train.batch_size {params.batch_size} does not divide among {world} processes; "
            f"make it a multiple of {world}"
        )
    return Runtime(device, dtype, rank, world, local_rank)


def rng_state(generator: torch.Generator, data: Tensor | None = None) -> dict[str, Tensor]:
    """The random states a checkpoint keeps: the data generator's (``data`` when given: the state
    as of the last batch trained, which a prefetching stream has drawn past) and torch's own."""
    state = {"data": generator.get_state() if data is None else data, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(generator: torch.Generator, state: dict[str, Tensor]) -> None:
    generator.set_state(state["data"].cpu())
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def agreed(flag: bool, rt: Runtime) -> bool:
    """``flag`` on rank 0, on every rank (clocks differ: all ranks must stop at the same step)."""
    if rt.world_size == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=rt.device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def finish_distributed() -> None:
    """Tear down the process group ``train`` started under ``torchrun`` (if any)."""
    if dist.is_initialized():
        dist.destroy_process_group()
