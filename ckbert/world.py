"""Which process this is in a (possibly distributed) run, read once from the torchrun variables.

The training loop is rank-aware through this object only: rows are split by rank, rank 0 logs and
writes checkpoints. Setting up the process group and wrapping the model (DDP/FSDP2) belongs to
`ckbert.parallel`; a single process needs neither.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> World:
        """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them; one process when absent."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))
