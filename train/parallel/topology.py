"""The layout of the ranks under sequence parallelism, validated once: groups of `sp`
consecutive ranks share one packed row (each holds a slice of it), data parallelism is over
the groups. The trainer reads every size and rank from one `Topology`."""

from __future__ import annotations

from dataclasses import dataclass


class TopologyError(ValueError):
    """A sequence-parallel size that cannot work with the world, the model's heads or the
    sequence length: one line naming the setting (a config error to the trainer)."""


def valid_sizes(num_heads: int, num_kv_heads: int) -> list[int]:
    """Sequence-parallel sizes that the head counts allow: N divides the query heads and
    N divides the KV heads or is a multiple of them (KV replicated)."""
    return [n for n in range(1, num_heads + 1)
            if num_heads % n == 0 and (num_kv_heads % n == 0 or n % num_kv_heads == 0)]


def check(sp: int, world_size: int, num_heads: int, num_kv_heads: int, seq_len: int | None) -> None:
    """One-line `TopologyError`s for a sequence-parallel size that cannot work."""
    if sp == 1:
        return
    if sp > world_size:
        raise TopologyError(f"train.sequence_parallel: must be <= the world size ({world_size}), got {sp}")
    if world_size % sp:
        raise TopologyError(f"train.sequence_parallel: must divide the world size ({world_size}), got {sp}")
    sizes = valid_sizes(num_heads, num_kv_heads)
    if sp not in sizes:
        raise TopologyError(
            f"train.sequence_parallel: the model's {num_heads} query / {num_kv_heads} KV heads "
            f"allow {', '.join(map(str, sizes))}, got {sp}")
    if seq_len is not None and seq_len % sp:
        raise TopologyError(
            f"train.sequence_parallel: must divide data.seq_len ({seq_len}), got {sp}")


def model_heads(model_cfg) -> tuple[int, int]:
    """(query heads, KV heads) of the configured base without building it."""
    if model_cfg.random_base is not None:
        h = model_cfg.random_base["num_attention_heads"]
        return h, model_cfg.random_base.get("num_key_value_heads", h)
    from transformers import AutoConfig

    try:
        c = AutoConfig.from_pretrained(model_cfg.base).get_text_config()
    except Exception as e:  # offline, a typo: one line, not a traceback
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TopologyError(f"model.base: cannot read the config of {model_cfg.base!r} ({first})") from None
    return c.num_attention_heads, getattr(c, "num_key_value_heads", None) or c.num_attention_heads


@dataclass(frozen=True)
class Topology:
    """`world_size` ranks in groups of `sp` consecutive ranks. Build it with `Topology.build`,
    which validates; the sizes and ranks below are then consistent by construction."""

    world_size: int = 1
    rank: int = 0
    sp: int = 1

    @classmethod
    def build(cls, world_size: int, rank: int, sp: int, heads: tuple[int, int] | None = None,
              seq_len: int | None = None) -> Topology:
        """`heads`: (query heads, KV heads) of the model (`model_heads`), needed for sp > 1."""
        if sp < 1:
            raise TopologyError(f"train.sequence_parallel: must be > 0, got {sp}")
        if sp > 1:
            if heads is None:
                raise TopologyError("train.sequence_parallel: the model's head counts are needed")
            check(sp, world_size, *heads, seq_len)
        if not 0 <= rank < world_size:
            raise TopologyError(f"rank {rank}: must be in [0, {world_size})")
        return cls(world_size, rank, sp)

    @property
    def enabled(self) -> bool:
        return self.sp > 1

    @property
    def dp_size(self) -> int:
        """Data-parallel size: the number of SP groups (distinct rows per step and micro-batch)."""
        return self.world_size // self.sp

    @property
    def dp_rank(self) -> int:
        """Which SP group this rank is in (the row it reads)."""
        return self.rank // self.sp

    @property
    def sp_rank(self) -> int:
        """Which slice of the row this rank holds."""
        return self.rank % self.sp
