"""Scale-out, applied from outside the model in one place (style.md, item 3; torchtitan's parallelize).

`parallelize(step, config, env, precision)` takes the training step's forward module -- an
`nn.Module` whose ``forward(batch)`` runs the whole step (encode, MLM head, CMRM sample pass) and
which holds the model as ``step.model`` (`ckbert.train.PretrainForward`) -- and returns the module
to call instead. Everything the model must not know happens here:

- `strategy: ddp`  -- `DistributedDataParallel` around the step module (base, large). DDP marks
  each parameter ready once per backward, so the step's two encoder passes (MLM and CMRM samples)
  must run inside one `forward`: that is why the step module, not the model, is wrapped.
- `strategy: fsdp` -- FSDP2 `fully_shard` on every encoder layer, then on the step module as the
  root (huge), with a `MixedPrecisionPolicy` derived from `train.precision` and an optional
  `CPUOffloadPolicy`.
- activation checkpointing of every layer (`full`) or of every k-th layer (`every_k`), non-reentrant
  `torch.utils.checkpoint` (RNG state preserved, so dropout masks recompute identically).

The encoder calls its layers through `Layer.forward_post_ln` / `Layer.forward_pre_ln`, not
``layer(...)``; FSDP learns about those methods with `register_fsdp_forward_method`, and the
checkpoint wrapper wraps those methods on the instance. Parameter names never change (no wrapper
module is inserted into `model`), so state dicts keep the HF keys.

`init_distributed` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); `DataOrder` decides
which rows each rank reads for a given global sample position (the position is what a checkpoint
stores, so a resumed run, on any world size, neither repeats nor skips a sample).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from ckbert.errors import UserError

log = logging.getLogger(__name__)

# The methods through which `Encoder.forward` runs a layer (see ckbert/model.py).
LAYER_METHODS = ("forward_post_ln", "forward_pre_ln")


@dataclass
class ParallelConfig:
    """The `parallel:` section of a pretraining recipe."""

    strategy: Literal["ddp", "fsdp"] = "ddp"  # ddp: base/large; fsdp (FSDP2): huge
    activation_checkpointing: Literal["none", "full", "every_k"] = "none"
    checkpoint_every: int = 2  # every_k: layers 0, k, 2k, ... are checkpointed
    cpu_offload: bool = False  # fsdp only: sharded params, grads and AdamW states live in host memory
    reshard_after_forward: bool = True  # fsdp: free gathered layer params after forward (ZeRO-3)

    def validate(self) -> None:
        if self.checkpoint_every < 1:
            raise ValueError(f"parallel.checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.cpu_offload and self.strategy != "fsdp":
            raise ValueError("parallel.cpu_offload needs parallel.strategy: fsdp")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: Literal["auto", "cpu", "cuda"] = "auto", timeout_s: float = 600.0) -> DistEnv:
    """Join the job torchrun started (env RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    Without torchrun's variables this is a single process and no process group is created. NCCL on
    CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is cuda but no CUDA device is available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if "WORLD_SIZE" in os.environ and not dist.is_initialized():  # started by torchrun, even with 1 rank
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def destroy_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks, `model.bert.encoder.layer` (HF path)."""
    try:
        return model.bert.encoder.layer
    except AttributeError:
        raise TypeError(f"{type(model).__name__} has no bert.encoder.layer") from None


def _layer_methods(layer: nn.Module) -> list[str]:
    names = [n for n in LAYER_METHODS if callable(getattr(layer, n, None))]
    if not names:
        raise TypeError(f"{type(layer).__name__} has none of the layer entry points {LAYER_METHODS}")
    return names


def checkpointed_layers(num_layers: int, config: ParallelConfig) -> list[int]:
    """Indices of the layers whose activations are recomputed in backward."""
    if config.activation_checkpointing == "none":
        return []
    if config.activation_checkpointing == "full":
        return list(range(num_layers))
    return list(range(0, num_layers, config.checkpoint_every))


def apply_activation_checkpointing(model: nn.Module, config: ParallelConfig) -> list[int]:
    """Wrap the entry methods of the chosen layers in non-reentrant `checkpoint`; returns their indices.

    Only the layer's inputs ([B, L, H] hidden states, mask) are kept; its ~20 intermediate tensors
    per token are recomputed in backward."""
    layers = encoder_layers(model)
    chosen = checkpointed_layers(len(layers), config)
    for i in chosen:
        layer = layers[i]
        for name in _layer_methods(layer):
            inner = getattr(layer, name)
            wrapped = functools.partial(checkpoint, inner, use_reentrant=False)
            setattr(layer, name, functools.update_wrapper(wrapped, inner))
    return chosen


def mixed_precision_policy(precision: str) -> Any:
    """FSDP2 policy for `train.precision`: compute in bf16, keep fp32 master weights, reduce in fp32.

    fp16 under FSDP would need a sharded gradient scaler; bf16 needs none, so fp16 is refused."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision == "fp32":
        return MixedPrecisionPolicy()
    if precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    raise UserError(f"train.precision {precision} is not supported with parallel.strategy fsdp; use bf16")


def apply_fsdp(step: nn.Module, config: ParallelConfig, env: DistEnv, precision: str) -> None:
    """FSDP2: `fully_shard` each encoder layer, then the root (embeddings, MLM head, step module)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        OffloadPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    if not dist.is_initialized():
        # A plain one-process run (no torchrun): FSDP2 still needs a process group for its mesh.
        dist.init_process_group("nccl" if env.device.type == "cuda" else "gloo", store=dist.HashStore(),
                                rank=0, world_size=1)
    mesh = init_device_mesh(env.device.type, (env.world_size,))
    # pin_memory needs an accelerator; on CPU-only hosts the offload is a plain host copy.
    offload = CPUOffloadPolicy(pin_memory=env.device.type == "cuda") if config.cpu_offload else OffloadPolicy()
    kwargs = dict(mesh=mesh, mp_policy=mixed_precision_policy(precision), offload_policy=offload)
    layers = encoder_layers(step.model)
    for i, layer in enumerate(layers):
        # The last layer's params are needed again at once in backward: keep them gathered.
        reshard = config.reshard_after_forward and i < len(layers) - 1
        fully_shard(layer, reshard_after_forward=reshard, **kwargs)
        for name in _layer_methods(layer):
            register_fsdp_forward_method(layer, name)
    # The root (embeddings, tied decoder, LayerNorms) is used at both ends of the step: keep it gathered.
    fully_shard(step, reshard_after_forward=False, **kwargs)


def parallelize(step: nn.Module, config: ParallelConfig, env: DistEnv, precision: str = "fp32") -> nn.Module:
    """Apply activation checkpointing, then DDP or FSDP2 to `step` (holding the model as `step.model`);
    returns the module to call with a batch.

    For DDP the model must already be on `env.device`; FSDP2 moves each rank's shards to the mesh
    device itself. `unwrap` reaches the model again (state dicts, export)."""
    if not isinstance(getattr(step, "model", None), nn.Module):
        raise TypeError(f"{type(step).__name__} holds no model at .model")
    chosen = apply_activation_checkpointing(step.model, config)
    if config.strategy == "fsdp":
        apply_fsdp(step, config, env, precision)
        wrapped: nn.Module = step
    elif env.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # gradient_as_bucket_view: grads live in the all-reduce buckets, no second fp32 copy (plan.py).
        ids = [env.device.index] if env.device.type == "cuda" else None
        wrapped = DDP(step, device_ids=ids, gradient_as_bucket_view=True)
    else:
        wrapped = step  # one process: DDP would only add a no-op all-reduce
    if env.is_main:
        log.info(
            "parallel: strategy=%s world_size=%d device=%s precision=%s checkpointed_layers=%s cpu_offload=%s",
            config.strategy if (config.strategy == "fsdp" or env.world_size > 1) else "single",
            env.world_size, env.device, precision, chosen, config.cpu_offload,
        )
    return wrapped


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside what `parallelize` returned (DDP -> step module -> model)."""
    if isinstance(module, nn.parallel.DistributedDataParallel):
        module = module.module
    return module.model


def global_batch_size(micro_batch: int, grad_accum: int, world_size: int) -> int:
    """Sequences per optimizer step for the whole job."""
    return micro_batch * grad_accum * world_size


@dataclass(frozen=True)
class DataOrder:
    """Which dataset rows a rank reads, as a function of the global sample position.

    The job reads one endless stream: the rows of epoch e in the order of a permutation seeded by
    (seed, e), epochs one after another. Position p is the p-th sample of that stream. An optimizer
    step consumes the `global_batch` samples [p, p + global_batch); micro-step a of rank r takes
    [p + (a * world + r) * micro, ... + micro). The set of samples of a step thus depends only on p
    and the global batch, not on the world size: a checkpoint stores p and a run resumed on another
    number of ranks continues the same stream."""

    num_rows: int
    seed: int

    def __post_init__(self) -> None:
        if self.num_rows < 1:
            raise UserError("the training split has no rows")

    def rows(self, start: int, count: int) -> np.ndarray:
        """Row ids (int64) at stream positions [start, start + count), crossing epochs as needed."""
        out = np.empty(count, dtype=np.int64)
        done = 0
        while done < count:
            epoch, offset = divmod(start + done, self.num_rows)
            take = min(count - done, self.num_rows - offset)
            out[done:done + take] = self.permutation(epoch)[offset:offset + take]
            done += take
        return out

    @functools.lru_cache(maxsize=4)  # noqa: B019 - a few epochs' permutations, frozen instance
    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)

    def epoch_of(self, position: int) -> int:
        return position // self.num_rows

    def micro_batch_rows(self, position: int, micro_step: int, micro_batch: int, env: DistEnv) -> np.ndarray:
        """Rows of micro-step `micro_step` of rank `env.rank` in the step starting at `position`."""
        start = position + (micro_step * env.world_size + env.rank) * micro_batch
        return self.rows(start, micro_batch)


def all_reduce_sum(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum a small tensor over ranks (for job-wide tokens/s and loss logging); identity alone."""
    if env.world_size > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values
