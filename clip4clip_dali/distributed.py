"""Process group set-up from torchrun's environment, and the few collectives the trainer needs.

One process per device. NCCL when CUDA is available, gloo otherwise. Without ``WORLD_SIZE`` > 1
nothing is initialised and every helper degrades to the single-process answer. Under SLURM
without torchrun (``srun python -m clip4clip_dali.train``, one task per device) the ranks come
from ``SLURM_PROCID`` / ``SLURM_NTASKS`` / ``SLURM_LOCALID`` (as open_clip reads them) and the
rendezvous from ``MASTER_ADDR`` / ``MASTER_PORT``, which the batch script exports.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(local_rank: int = 0, prefer: str = "auto") -> torch.device:
    if prefer == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def env_ranks(env=os.environ) -> tuple[int, int, int]:
    """(rank, world size, local rank): torchrun's variables, else SLURM's (srun), else 1 process.
    Under SLURM the variables torchrun would set are exported too (``LOCAL_WORLD_SIZE`` sizes
    the DALI threads), and a missing ``MASTER_ADDR`` is an error that says what to export."""
    tasks = env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS"))  # the srun step's first
    if "WORLD_SIZE" in env or tasks is None or "SLURM_PROCID" not in env:
        return (int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")),
                int(env.get("LOCAL_RANK", "0")))
    rank, world = int(env["SLURM_PROCID"]), int(tasks)
    local = int(env.get("SLURM_LOCALID", "0"))
    if world > 1:
        if "MASTER_ADDR" not in env:
            from .errors import UserError

            raise UserError("running under srun with SLURM_NTASKS > 1, but MASTER_ADDR is not "
                            "set: export MASTER_ADDR=$(scontrol show hostnames "
                            "\"$SLURM_JOB_NODELIST\" | head -n 1) (and MASTER_PORT) in the batch "
                            "script, or start torchrun once per node.")
        env.setdefault("MASTER_PORT", "29500")
        per_node = env.get("SLURM_STEP_TASKS_PER_NODE",
                           env.get("SLURM_NTASKS_PER_NODE", "")).split("(")[0]
        if per_node.isdigit():
            env.setdefault("LOCAL_WORLD_SIZE", per_node)
        env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local))
    return rank, world, local


def init_distributed(prefer_device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Read RANK/WORLD_SIZE/LOCAL_RANK (torchrun) and initialise the process group if needed."""
    if os.environ.get("TORCHELASTIC_RUN_ID"):  # a torchrun rank: end with the agent
        from .workers import die_with_parent

        die_with_parent()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    rank, world, local_rank = env_ranks()  # (SLURM's variables under srun without torchrun)
    device = pick_device(local_rank, prefer_device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world <= 1:
        return DistInfo(0, 1, 0, device, None)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        kwargs = {}
        if backend == "nccl":
            kwargs["device_id"] = device
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return DistInfo(rank, world, local_rank, device, backend)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def barrier(timeout_s: float | None = None) -> None:
    """Wait for all ranks; with ``timeout_s`` raise instead of hanging forever."""
    if not is_dist():
        return
    if timeout_s is None:
        dist.barrier()
        return
    work = dist.barrier(async_op=True)
    if not work.wait(timeout=datetime.timedelta(seconds=timeout_s)):
        raise TimeoutError(f"barrier: not all ranks arrived within {timeout_s:.0f} s")


def cleanup() -> None:
    if is_dist():
        try:
            dist.destroy_process_group()
        except Exception:  # already torn down (e.g. a peer exited)
            pass


def _all_reduce(values: list[float], device: torch.device, op) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64 if device.type == "cpu" else torch.float32,
                     device=device)
    if is_dist():
        dist.all_reduce(t, op=op)
    return t.tolist()


def all_reduce_max(values: list[float], device: torch.device) -> list[float]:
    """Element-wise max over ranks of a few flags/numbers (e.g. non-finite, stop requested)."""
    return _all_reduce(values, device, dist.ReduceOp.MAX)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    return _all_reduce(values, device, dist.ReduceOp.SUM)


def all_gather_varlen(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (first dim may differ per rank) from all ranks, in rank order.

    Counts are exchanged first, every rank pads to the largest count, gathers, and trims, so
    ranks holding different numbers of rows (including none) never deadlock.
    """
    if not is_dist():
        return t
    world = get_world_size()
    n = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
    counts = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(counts, n)
    counts = [int(c.item()) for c in counts]
    m = max(counts)
    if m == 0:
        return t
    padded = t.new_zeros((m,) + tuple(t.shape[1:]))
    if t.shape[0]:
        padded[: t.shape[0]] = t
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded.contiguous())
    return torch.cat([o[:c] for o, c in zip(out, counts)], 0)


def broadcast_object(obj, src: int = 0):
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
