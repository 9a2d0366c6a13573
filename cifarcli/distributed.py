"""Training under torchrun: PyTorch's own DistributedDataParallel, nothing home-made.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE; without them every function
here is a no-op for one process. The rule that keeps a recipe's meaning: `batch_size` is the
global batch. Every rank draws the same permutation and augmentation (same seed), takes its
shard rank::world of each global batch, and DDP averages the gradients, so each step is the
same mean-loss step as one process on the whole batch, and the learning rate stays as it is.
"""

import gc
import os
import subprocess
import sys
from dataclasses import dataclass

from cifarcli.errors import CifarError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0  # this process's number on its machine
    local_world: int = 1  # processes on this machine

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def join_process_group(device: str) -> Ranks:
    """Join the process group torchrun prepared: nccl for a CUDA device (each process on the GPU
    of its LOCAL_RANK, which the device names), gloo otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    import torch
    import torch.distributed as dist

    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return Ranks(dist.get_rank(), world, *local)


def once_per_machine(ranks: Ranks, work):
    """work() on the first process of each machine, then on the others: it decodes and caches
    the data there, and the others find the cache."""
    if not ranks.active:
        return work()
    import torch.distributed as dist

    if ranks.local_rank == 0:
        result = work()
        dist.barrier()
        return result
    dist.barrier()
    return work()


def wrap_model(model, device: str, ranks: Ranks):
    """DDP around the model; on CUDA BatchNorm statistics are synchronised across ranks. Gloo
    has no SyncBatchNorm on CPU: there each rank normalises by its shard, and DDP broadcasts
    rank 0's running statistics at every step so that all ranks keep identical buffers."""
    if not ranks.active:
        return model
    import torch
    from torch.nn.parallel import DistributedDataParallel

    if device.startswith("cuda"):
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[torch.cuda.current_device()])
    return DistributedDataParallel(model)


def sum_across(values: list[float], ranks: Ranks) -> list[float]:
    if not ranks.active:
        return values
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_from_main(value, ranks: Ranks):
    """Rank 0's value on every rank (a run folder's path, say)."""
    if not ranks.active:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_tensors(tensors, ranks: Ranks) -> None:
    """Overwrite tensors in place with rank 0's. DDP syncs buffers only at the start of a forward
    pass, so the last step's BatchNorm statistics (and their lookahead averages) still differ."""
    if not ranks.active:
        return
    import torch.distributed as dist

    for tensor in tensors:
        dist.broadcast(tensor, src=0)


def weights_checksum(model) -> float:
    import torch

    with torch.no_grad():
        return float(sum(t.double().abs().sum() + t.double().sum() for t in model.state_dict().values()))


def check_identical_weights(model, ranks: Ranks) -> None:
    """Every rank must end with rank 0's weights; anything else is a bug worth stopping for."""
    if not ranks.active:
        return
    import torch.distributed as dist

    checksums = [None] * ranks.world
    dist.all_gather_object(checksums, weights_checksum(model))
    if len(set(checksums)) != 1:
        raise RuntimeError(f"ranks ended with different weights: checksums {checksums}")


def shutdown(ranks: Ranks, finished: bool) -> None:
    """Leave the process group while Python is fully alive. A finished run first waits for every
    rank, so that no rank tears down its connections while another still uses them. Without this,
    2 of 16 two-process runs aborted at exit after training had completed ("terminate called
    without an active exception", SIGABRT, no Python frame: during interpreter finalisation,
    most likely when DDP's reference cycle freed the process group's C++ threads there)."""
    if not ranks.active:
        return
    import torch.distributed as dist

    if finished:
        dist.barrier()
    dist.destroy_process_group()
    gc.collect()  # frees DDP's reducer, the last owner of the process group, now rather than at exit


def launch_local(nproc: int, batch_size: int, arguments: list[str]) -> int:
    """`cifar train --nproc N ...`: rerun the same command (its arguments, --nproc dropped) under
    torchrun on this machine, once the global batch is known to divide among the processes."""
    if os.environ.get("WORLD_SIZE"):
        raise CifarError("--nproc: already running under torchrun; drop --nproc")
    if batch_size % nproc:
        raise CifarError(
            f"--nproc {nproc}: the global batch of {batch_size} images must divide among the processes; "
            f"choose a --batch-size that is a multiple of {nproc}"
        )
    kept, skip = [], False
    for argument in arguments:
        if not skip and argument != "--nproc" and not argument.startswith("--nproc="):
            kept.append(argument)
        skip = argument == "--nproc"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return subprocess.call([*command, "-m", "cifarcli", *kept])
