"""The training data loader: seeded epoch shuffles, disjoint rows per data-parallel rank,
exact resume from ``state_dict()``.

Step ``s`` of epoch ``e`` reads the global block ``perm_e[s*W*B : (s+1)*W*B]`` of a seeded
permutation of the rows; rank ``r`` takes its ``r``-th slice of ``B`` rows. Within an epoch
the ranks' rows are disjoint and each row is used once; the last incomplete global block
is skipped (every rank must take the same number of steps), and the next epoch shuffles
again. The state is (epoch, step); it does not depend on the rank, so every rank saves the
same state, and a run resumed with another world size or micro-batch size continues from
the same position in the data (rounded down to a whole step).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch

from train.data.boundaries import cu_seqlens_from_position_ids, doc_ids_from_position_ids
from train.data.errors import DataError
from train.data.prepared import PreparedData

STATE_VERSION = 1


class PackedDataLoader:
    """Iterating yields ``{"input_ids", "position_ids", "labels"}`` LongTensors of shape
    ``(micro_batch_size, seq_len)`` forever (epochs cycle). With ``return_boundaries`` the
    batch also holds ``doc_ids`` ``(B, T)``, ``cu_seqlens`` (int32) and ``max_seqlen``."""

    def __init__(
        self,
        prepared: PreparedData | str | os.PathLike,
        micro_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        split: str = "train",
        return_boundaries: bool = False,
        pin_memory: bool = False,
    ):
        if not isinstance(prepared, PreparedData):
            prepared = PreparedData.load(prepared)
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be positive, got {micro_batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"rank must be in [0, world_size), got rank {rank}, world_size {world_size}"
            )
        self.prepared = prepared
        self.micro_batch_size = micro_batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.split = split
        self.return_boundaries = return_boundaries
        self.pin_memory = pin_memory
        self.rows = prepared.split_indices(split)
        self.global_batch = micro_batch_size * world_size
        self.steps_per_epoch = len(self.rows) // self.global_batch
        if self.steps_per_epoch == 0:
            raise DataError(
                f"{prepared.path}: {len(self.rows)} {split} sequences, fewer than "
                f"micro_batch_size x world_size = {self.global_batch}; prepare more data"
            )
        self.epoch = 0
        self.step = 0
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def __len__(self) -> int:
        """Steps per epoch."""
        return self.steps_per_epoch

    def __iter__(self):
        return self

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm_epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch, 0x6C6F6164])
            self._perm = rng.permutation(len(self.rows))
            self._perm_epoch = epoch
        return self._perm

    def _position(self) -> tuple[int, int]:
        """(epoch, step) of the next micro-batch."""
        if self.step >= self.steps_per_epoch:
            return self.epoch + 1, 0
        return self.epoch, self.step

    def indices(self) -> np.ndarray:
        """Row indices of this rank's next micro-batch (without advancing)."""
        epoch, step = self._position()
        start = step * self.global_batch + self.rank * self.micro_batch_size
        return self.rows[self._permutation(epoch)[start : start + self.micro_batch_size]]

    def __next__(self) -> dict[str, torch.Tensor]:
        idx = self.indices()
        self.epoch, self.step = self._position()
        self.step += 1
        examples = [self.prepared.example(int(i)) for i in idx]
        batch = {k: torch.from_numpy(np.stack([e[k] for e in examples])) for k in examples[0]}
        if self.return_boundaries:
            batch["doc_ids"] = doc_ids_from_position_ids(batch["position_ids"])
            batch["cu_seqlens"], batch["max_seqlen"] = cu_seqlens_from_position_ids(
                batch["position_ids"]
            )
        if self.pin_memory:
            batch = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in batch.items()}
        return batch

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "step": self.step,
            "rows_consumed": self.step * self.global_batch,
            "seed": self.seed,
            "split": self.split,
            "num_rows": len(self.rows),
            "fingerprint": self.prepared.fingerprint,
            "world_size": self.world_size,
            "micro_batch_size": self.micro_batch_size,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise DataError(
                f"data loader state: version {state.get('version')}, expected {STATE_VERSION}"
            )
        if state["fingerprint"] != self.prepared.fingerprint or state["num_rows"] != len(self.rows):
            raise DataError(
                f"data loader state: saved for prepared data {state['fingerprint']} "
                f"({state['num_rows']} {state['split']} rows), but {self.prepared.path} is "
                f"{self.prepared.fingerprint} ({len(self.rows)} rows); resuming would not see "
                "the same data"
            )
        if state["seed"] != self.seed or state["split"] != self.split:
            raise DataError(
                f"data loader state: saved with seed {state['seed']} split "
                f"{state['split']}, loader has seed {self.seed} split {self.split}"
            )
        self.epoch = int(state["epoch"])
        consumed = int(state["rows_consumed"])
        if consumed % self.global_batch:
            warnings.warn(
                f"data loader state: {consumed} rows consumed is not a multiple of the new "
                f"global batch {self.global_batch}; resuming at the step before",
                stacklevel=2,
            )
        self.step = consumed // self.global_batch


def build_dataloader(prepared, *args, **kwargs) -> PackedDataLoader:
    """``build_dataloader(prepared, micro_batch_size, rank=0, world_size=1, seed=0, *,
    split="train", return_boundaries=False, pin_memory=False)``.

    ``prepared``: a ``PreparedData`` or its directory. Also accepted:
    ``build_dataloader(data_cfg, tokenizer, micro_batch_size, ...)`` with a ``DataConfig``,
    which opens the data ``prepare_data(data_cfg, tokenizer)`` prepared (preparing it first
    if it is missing or stale).
    """
    from train.data.config import DataConfig

    if isinstance(prepared, DataConfig):
        from train.data.pipeline import prepare_data

        if args:
            tokenizer, *args = args
        else:
            tokenizer = kwargs.pop("tokenizer")
        prepared = prepare_data(prepared, tokenizer, verbose=False)
    return PackedDataLoader(prepared, *args, **kwargs)
