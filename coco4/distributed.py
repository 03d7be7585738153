"""torchrun support: one process per GPU (or CPU process with gloo), rank 0 writes files."""
import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import Coco4Error


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device_kind: str) -> DistEnv:
    """Join the process group torchrun describes in the environment; a single process otherwise."""
    world = _env_int("WORLD_SIZE", 1)
    if world == 1:
        return DistEnv()
    missing = [n for n in ("RANK", "MASTER_ADDR", "MASTER_PORT") if n not in os.environ]
    if missing:
        raise Coco4Error(f"WORLD_SIZE={world} is set but {', '.join(missing)} is not: start "
                         "several processes with torchrun, or unset WORLD_SIZE for one")
    env = DistEnv(_env_int("RANK", 0), world, _env_int("LOCAL_RANK", 0))
    if not 0 <= env.rank < world:
        raise Coco4Error(f"RANK={env.rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
    backend = "nccl" if device_kind == "cuda" else "gloo"
    if device_kind == "cuda":
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(backend)
    return env


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise Coco4Error(f"the environment variable {name}={value!r} is not a whole number; "
                         "torchrun sets it: start through torchrun, or unset it") from None


def close_distributed(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_tensor(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum ``t`` over all ranks, in place (a no-op for one process); returns it."""
    if env.enabled:
        dist.all_reduce(t)
    return t


def all_reduce_sum(values: list, env: DistEnv, device: torch.device) -> list:
    """Sum a list of numbers over all ranks (a no-op for one process)."""
    if not env.enabled:
        return values
    return all_reduce_tensor(torch.tensor(values, dtype=torch.float64, device=device), env).tolist()


def all_gather_cat(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Every rank's ``t`` (on the CPU, of any length) joined in rank order; ``t`` for one
    process. Small tensors only (the validation logits): they travel as pickled objects."""
    if not env.enabled:
        return t
    parts = [None] * env.world
    dist.all_gather_object(parts, t.cpu())
    return torch.cat(parts)


def any_rank(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any: ranks must stop at the same step."""
    return bool(all_reduce_sum([float(flag)], env, device)[0]) if env.enabled else flag


class StopVote:
    """Whether any rank asked to stop, agreed on without making the host wait for the GPU.

    Each call starts a sum of this rank's flag over a CPU (gloo) group, in the background, and
    answers with the previous call's sum: every rank gets the same answer at the same step, one
    step after the request, and no call waits for queued GPU work (an all-reduce of a CUDA
    tensor read back with ``.item()`` would, at every step). A dead peer fails the wait at
    once instead of leaving the others blocked until the NCCL timeout.
    """

    def __init__(self, env: DistEnv):
        self.env = env
        self._group = dist.new_group(backend="gloo") if env.enabled else None
        self._pending = None

    def __call__(self, flag: bool) -> bool:
        if not self.env.enabled:
            return flag
        answer = self.result()
        vote = torch.tensor([float(flag)])
        self._pending = (dist.all_reduce(vote, group=self._group, async_op=True), vote)
        return answer

    def result(self) -> bool:
        """The sum started by the last call, waited for (False when none is pending)."""
        if self._pending is None:
            return False
        work, vote = self._pending
        self._pending = None
        try:
            work.wait()
        except RuntimeError as e:  # gloo's "Connection closed by peer"
            raise Coco4Error(f"another torchrun process stopped (its own error above says why): "
                             f"{str(e).splitlines()[0][:200]}") from None
        return bool(vote.item())


def broadcast_buffers(module: torch.nn.Module, env: DistEnv) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics), which rank 0 also saves: DDP
    broadcasts them before each forward, but each rank's last batch then moves its own copy."""
    if env.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def pick_device(requested: str, env: DistEnv) -> torch.device:
    """The device this process trains on: ``auto`` means CUDA when present, else CPU."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", requested):
        raise Coco4Error(f"--device must be auto, cpu, cuda, cuda:N or mps, got {requested!r}")
    if requested == "mps":  # Apple GPUs: fp32 (AMP is CUDA's only), crops as on a GPU
        if not torch.backends.mps.is_available():
            raise Coco4Error("--device mps asked for an Apple GPU, but "
                             "torch.backends.mps.is_available() is False (it needs macOS on "
                             "Apple silicon and a PyTorch built with MPS); use --device cpu")
        return torch.device("mps")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise Coco4Error(f"--device {requested} asked for CUDA, but torch.cuda.is_available() "
                             "is False (no GPU, or a CPU-only PyTorch); use --device cpu")
        device = torch.device("cuda", env.local_rank if env.enabled else
                              (torch.device(requested).index or 0))
        # the current device is where pinned memory, bare "cuda" tensors, the bf16 check and
        # memory queries go: GPU 0 unless set, even when training runs on cuda:1
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")
