"""In-process checks of the scale-out pieces: data order, config validation, checkpoint errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ckbert.config import load_dataclass
from ckbert.dist_checkpoint import latest_checkpoint, read_trainer_state
from ckbert.errors import UserError
from ckbert.parallel import DataOrder, DistEnv, ParallelConfig, checkpointed_layers, mixed_precision_policy


def _env(rank: int, world: int) -> DistEnv:
    return DistEnv(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu"))


def test_data_order_is_one_stream_whatever_the_world_size():
    order = DataOrder(num_rows=10, seed=3)
    stream = order.rows(0, 30)  # three epochs
    for e in range(3):
        assert sorted(stream[10 * e : 10 * e + 10].tolist()) == list(range(10))  # each epoch: every row once
    assert not np.array_equal(stream[:10], stream[10:20])  # a new order each epoch
    # a step of global batch 6 from position 8 (crossing into epoch 1): 2 ranks x micro 3 == 1 rank x micro 6
    two = np.concatenate([order.micro_batch_rows(8, 0, 3, _env(r, 2)) for r in range(2)])
    one = order.micro_batch_rows(8, 0, 6, _env(0, 1))
    assert np.array_equal(two, one) and np.array_equal(one, stream[8:14])


def test_checkpointed_layers():
    assert checkpointed_layers(5, ParallelConfig()) == []
    assert checkpointed_layers(5, ParallelConfig(activation_checkpointing="full")) == [0, 1, 2, 3, 4]
    every = ParallelConfig(activation_checkpointing="every_k", checkpoint_every=2)
    assert checkpointed_layers(5, every) == [0, 2, 4]


def test_parallel_config_rejects_bad_values():
    with pytest.raises(UserError, match="cpu_offload needs parallel.strategy: fsdp"):
        load_dataclass(ParallelConfig, {"strategy": "ddp", "cpu_offload": True}, "r.yaml")
    with pytest.raises(UserError, match="unknown config key"):
        load_dataclass(ParallelConfig, {"stratgy": "fsdp"}, "r.yaml")
    with pytest.raises(UserError, match="use bf16"):
        mixed_precision_policy("fp16")
    assert mixed_precision_policy("bf16").param_dtype == torch.bfloat16


def test_checkpoint_pointer_and_state_errors(tmp_path):
    root = tmp_path / "checkpoints"
    assert latest_checkpoint(root) is None
    root.mkdir()
    (root / "latest").write_text("step-000004\n")
    with pytest.raises(UserError, match="missing or half written"):
        latest_checkpoint(root)
    (root / "step-000004").mkdir()
    (root / "step-000004" / "trainer_state.json").write_text(json.dumps({"step": 4}))
    with pytest.raises(UserError, match="not a sharded checkpoint"):
        read_trainer_state(root / "step-000004")
