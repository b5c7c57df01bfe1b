"""
The processes of a training run. `python train.py` is one process; under torchrun every rank runs train.py, and the
ranks meet only in the Ranks class below: it holds every use of torch.distributed (DDP or FSDP2, gradient sync,
the mean across ranks, the full state dicts of a sharded model).
"""

import hashlib
import os
from contextlib import nullcontext

import torch
import torch.distributed as dist


class Ranks:
    """This process's place among the run's processes (rank 0 of 1 without torchrun), and what they do together."""

    def __init__(self):
        self.distributed = int(os.environ.get("RANK", -1)) != -1
        self.rank = int(os.environ["RANK"]) if self.distributed else 0
        self.world = int(os.environ["WORLD_SIZE"]) if self.distributed else 1
        self.local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))  # processes on this machine
        self.master = self.rank == 0

    def log(self, *args, **kwargs):
        if self.master:
            print(*args, **kwargs)

    def start(self, device: str) -> str:
        """Join the other ranks (NCCL on GPUs, gloo on CPU); this rank's device (its own GPU)."""
        if not self.distributed:
            return device
        if torch.device(device).type == "cuda":
            device = f"cuda:{os.environ['LOCAL_RANK']}"
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        return device

    def mean(self, value: float, device) -> float:
        """The mean of every rank's value."""
        if not self.distributed:
            return value
        t = torch.tensor(value, device=device)  # NCCL reduces CUDA tensors only
        dist.all_reduce(t)
        return t.item() / self.world

    def gather(self, text: str) -> list[str]:
        """Every rank's text, in rank order."""
        texts = [text] * self.world
        if self.distributed:
            dist.all_gather_object(texts, text)
        return texts

    def agree(self, what: str, digest, announce: bool = False, differ: str = "DIFFERENT") -> bool:
        """Whether every rank holds the same digest (a hashlib object); prints them all (rank 0) if announce, and
        (every rank) if they differ."""
        digests = self.gather(digest.hexdigest()[:16])
        same = len(set(digests)) == 1
        if announce or not same:
            print(f"{what} digests by rank: {' '.join(digests)} ({'identical' if same else differ})", flush=True)
        return same

    def wrap(self, model, fsdp: bool, find_unused: bool):
        """The model as this rank trains it: itself in one process; under torchrun sharded by FSDP2 (every block,
        then the rest) or replicated by DDP."""
        if not self.distributed:
            return model
        if fsdp:
            from torch.distributed.fsdp import fully_shard
            for block in model.layers:
                fully_shard(block)
            return fully_shard(model)
        # A block that every sample skipped in a step has no gradient: DDP must look for unused parameters.
        return torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=find_unused)

    def accumulate(self, model, fsdp: bool, last: bool):
        """The context of one micro-batch's backward: gradients are reduced across ranks on the last one only."""
        if self.distributed and fsdp:
            model.set_requires_gradient_sync(last)  # reduce-scatter once per step
        return model.no_sync() if self.distributed and not fsdp and not last else nullcontext()

    def full_state(self, model, optimizer, fsdp: bool):
        """The model's and the optimizer's full state dicts (under FSDP every rank helps gather them)."""
        if not (self.distributed and fsdp):
            return model.state_dict(), optimizer.state_dict()
        from torch.distributed.checkpoint import state_dict as sd
        full = sd.StateDictOptions(full_state_dict=True, cpu_offload=True)
        return sd.get_model_state_dict(model, options=full), sd.get_optimizer_state_dict(model, optimizer, options=full)

    def load_optimizer(self, model, optimizer, state, fsdp: bool):
        """Load a full optimizer state dict (under FSDP, each rank takes its shards)."""
        if not (self.distributed and fsdp):
            return optimizer.load_state_dict(state)
        from torch.distributed.checkpoint import state_dict as sd
        sd.set_optimizer_state_dict(model, optimizer, state, options=sd.StateDictOptions(full_state_dict=True))

    def barrier(self):
        if self.distributed:
            dist.barrier()

    def close(self, model, fsdp: bool):
        """End the process group; with DDP first print whether every replica ends with the same weights."""
        if not self.distributed:
            return
        if not fsdp:
            digest = hashlib.sha256()
            for p in model.parameters():
                digest.update(p.detach().cpu().numpy().tobytes())
            self.agree("parameter", digest, announce=self.master, differ="DIFFERENT: the ranks diverged")
        dist.barrier()
        dist.destroy_process_group()
