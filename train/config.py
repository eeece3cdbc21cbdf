"""The composed Hydra config as validated dataclasses.

`python -m train` composes `conf/config.yaml`; :func:`from_hydra` turns the result into a
:class:`RunConfig`. Every check runs before anything is built or written, and every error
names the override path that fixes it (``train.max_steps: must be > 0, got 0``).
"""

from __future__ import annotations

import dataclasses
import os
import time
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from l2a.errors import ConfigError, first_line
from l2a.validate import (
    check_choice,
    check_known_keys,
    check_l2a_fields,
    check_number,
    fail,
    is_number,
    item,
)

__all__ = ["ConfigError", "RunConfig", "build", "from_container", "from_hydra", "to_dict"]


def _timestamp() -> str:
    # One timestamp per launch, shared by every rank: torchrun ranks start at slightly
    # different times, and `${now:}` could then give each rank its own run directory.
    # `train.__main__` agrees on it over the process group before Hydra composes.
    ts = os.environ.get("L2A_RUN_TIMESTAMP")
    if not ts:
        ts = time.strftime("%Y-%m-%d_%H-%M-%S")
        os.environ["L2A_RUN_TIMESTAMP"] = ts
    return ts


OmegaConf.register_new_resolver("l2a_timestamp", _timestamp, replace=True)


# --------------------------------------------------------------------------- helpers
def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against a (simple) annotation; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, path)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else ConfigError(
            f"{path}: expected {_type_name(tp)}, got {value!r}"
        )
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            fail(path, "expected true or false", value)
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            fail(path, "expected an integer", value)
        return value
    if tp is float:
        if not is_number(value):
            fail(path, "expected a number", value)
        return check_number(path, value)  # finite: NaN and inf pass every range check
    if tp is str:
        if not isinstance(value, str):
            fail(path, "expected a string", value)
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            fail(path, "expected a list", value)
        (item_type,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_type, item(path, i)) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            fail(path, "expected a mapping", value)
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def build(cls: type, raw: Any, path: str):
    """Instantiate dataclass `cls` from a mapping; unknown or mistyped keys name their path."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        fail(path, "expected a mapping", raw)
    hints = typing.get_type_hints(cls)
    check_known_keys(path, raw, (f.name for f in dataclasses.fields(cls) if f.init))
    kwargs = {k: _coerce(v, hints[k], f"{path}.{k}") for k, v in raw.items()}
    return cls(**kwargs)


# --------------------------------------------------------------------------- groups
@dataclass
class ModelConfig:
    """`model.*`: the dense base and how the L2A model is obtained from it."""

    # Hub id or local directory of a dense Qwen2 / Qwen2.5 / Qwen3 causal LM.
    base: str | None = None
    # Instead of `base`: build a Qwen3-shaped base with random weights of this shape
    # (keys of `transformers.Qwen3Config`; `vocab_size: null` fits the byte tokenizer).
    random_base: dict | None = None
    # Long-context settings applied to the base config before conversion.
    rope_theta: float | None = None
    max_position_embeddings: int | None = None
    # Converted models are cached here (keyed by base + conversion settings), so a requeued
    # or repeated run does not convert again. Relative paths are relative to the launch dir.
    cache_dir: str = ".cache/l2a"
    # Keep the converted model in memory only (benchmarks with random weights).
    cache: bool = True
    # Attention of the dense baseline (l2a.enabled=false): an HF attn_implementation, or
    # auto: flash_attention_4 where flash-attn-4 runs (Hopper / Blackwell, bf16), else sdpa.
    dense_attn_implementation: str = "auto"

    def __post_init__(self) -> None:
        if self.base is None and self.random_base is None:
            fail("model.base", "set model.base (hub id or local directory) or model.random_base")
        if self.base is not None and self.random_base is not None:
            fail("model.base", "set exactly one of model.base and model.random_base "
                  "(to use a base with a preset built on a random one, add model.random_base=null)")
        if self.base is not None and not self.base.strip():
            fail("model.base", "must not be empty", self.base)
        if self.rope_theta is not None:
            check_number("model.rope_theta", self.rope_theta, 0, low_open=True)
        if self.max_position_embeddings is not None:
            check_number("model.max_position_embeddings", self.max_position_embeddings, 0, low_open=True)
        if self.random_base is not None:
            for k, v in self.random_base.items():
                if k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                         "num_key_value_heads", "intermediate_size", "head_dim") and (
                    not isinstance(v, int) or isinstance(v, bool) or v <= 0
                ):
                    fail(f"model.random_base.{k}", "must be a positive integer", v)
            h, kv = self.random_base.get("num_attention_heads"), self.random_base.get(
                "num_key_value_heads"
            )
            if isinstance(h, int) and isinstance(kv, int) and h % kv:
                fail("model.random_base.num_key_value_heads",
                      f"must divide num_attention_heads ({h})", kv)


@dataclass
class L2AConfig:
    """`l2a.*`: conversion settings, trainable parameters and router sparsity control."""

    # false: train the dense base (the baseline) with the same trainer and data.
    enabled: bool = True
    init: str = "paper"  # paper | identity (function-preserving)
    window: int = 4095
    router_tau: float = 0.1
    router_threshold: float = 0.5
    dense_prob: float = 0.1
    layers: list[int] | None = None
    attn_backend: str = "auto"  # auto | torch | triton | flex | fa4 (kernels/backends.py)
    # Global branch: q/o projections, QK-norm and RoPE for routed tokens only (same loss and
    # gradients; also under sequence parallelism: train/parallel/routed.RoutedUlyssesCore).
    # Off by default until a GPU measurement shows it faster (one host sync per layer).
    routed_projections: bool = False
    # With routed_projections: the compacted queries as `count` rows (the routed count, read
    # from the device once per layer: a host synchronisation) or `capacity` (every row, no
    # host read; full-cost projections). `count` until a GPU measurement decides.
    routed_rows: str = "count"
    # Residual add + norm, router, QK-norm + RoPE and gated add in torch.compile'd regions
    # (l2a/fused.py): fewer kernels, fp32 intermediates recomputed instead of saved.
    fused_elementwise: bool = False
    # Router sparsity: every other `l2a.*` key (sparsity_target, lambda_final,
    # lambda_schedule, multiplier_*, ...) belongs to train.sparsity.SparsityConfig, which
    # validates it; built by `build_l2a`.
    sparsity: Any = None

    def __post_init__(self) -> None:
        check_l2a_fields({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                          if f.name not in ("enabled", "sparsity")}, lambda k: f"l2a.{k}")
        if self.routed_rows == "capacity" and not self.routed_projections:
            fail("l2a.routed_rows", "capacity lays out the routed projections' rows: it needs "
                 "l2a.routed_projections=true (or set l2a.routed_rows=count)")
        if self.sparsity is None:
            self.sparsity = _sparsity_config({})

    @property
    def sparsity_target(self) -> float | None:
        return self.sparsity.sparsity_target


def _sparsity_config(raw: dict):
    from train.sparsity import SparsityConfig

    return SparsityConfig(**raw)  # checks its fields under their l2a.<key> paths


def build_l2a(raw: Any) -> L2AConfig:
    """`l2a.*`: conversion keys here, sparsity keys to train.sparsity.SparsityConfig."""
    from train.sparsity import SparsityConfig

    if not isinstance(raw, dict):
        fail("l2a", "expected a mapping", raw)
    own = {f.name for f in dataclasses.fields(L2AConfig)} - {"sparsity"}
    check_known_keys("l2a", raw, own | {f.name for f in dataclasses.fields(SparsityConfig)
                                        if f.init})
    cfg = build(L2AConfig, {k: v for k, v in raw.items() if k in own}, "l2a")
    cfg.sparsity = _sparsity_config({k: v for k, v in raw.items() if k not in own})
    return cfg


@dataclass
class OptimConfig:
    """`optim.*`: AdamW over the trainable parameters, warm-up then decay."""

    name: str = "adamw"
    lr: float = 5e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.0
    # Warm-up length: `warmup_steps` if set, else `warmup_ratio * train.max_steps`.
    warmup_ratio: float = 0.05
    warmup_steps: int | None = None
    schedule: str = "cosine"  # cosine | linear | constant (after the warm-up)
    min_lr_ratio: float = 0.1  # final LR = min_lr_ratio * lr
    # DeepSpeed's fused Adam is a CUDA extension compiled on first use (about a minute per
    # machine, and it needs nvcc matching torch); torch's AdamW is the default everywhere.
    fused: bool = False

    def __post_init__(self) -> None:
        check_choice("optim.name", self.name, ("adamw",))
        check_number("optim.lr", self.lr, 0, low_open=True)
        if len(self.betas) != 2:
            fail("optim.betas", "must be two numbers in [0, 1)", self.betas)
        for i, b in enumerate(self.betas):
            check_number(item("optim.betas", i), b, 0, 1, high_open=True)
        check_number("optim.eps", self.eps, 0, low_open=True)
        check_number("optim.weight_decay", self.weight_decay, 0)
        check_number("optim.warmup_ratio", self.warmup_ratio, 0, 1, high_open=True)
        if self.warmup_steps is not None:
            check_number("optim.warmup_steps", self.warmup_steps, 0)
        check_choice("optim.schedule", self.schedule, ("cosine", "linear", "constant"))
        check_number("optim.min_lr_ratio", self.min_lr_ratio, 0, 1)


@dataclass
class DeepSpeedConfig:
    """`deepspeed.*`: the ZeRO part of the DeepSpeed config. Batch sizes, precision and
    clipping come from `train.*` (train/deepspeed_config.py fills them in)."""

    stage: int = 2
    offload_optimizer: str = "none"  # none | cpu
    offload_param: str = "none"  # none | cpu (ZeRO-3 only)
    overlap_comm: bool = True
    contiguous_gradients: bool = True
    reduce_bucket_size: int = 500_000_000
    allgather_bucket_size: int = 500_000_000
    stage3_prefetch_bucket_size: int = 50_000_000
    stage3_param_persistence_threshold: int = 100_000
    stage3_max_live_parameters: int = 1_000_000_000
    # ZeRO-3: build the model under deepspeed.zero.Init (transformers' from_pretrained
    # integration), so each rank holds only its shard of the weights from the start
    # instead of a full copy per process. Applies where the model is loaded from a
    # directory (model.cache=true, the default).
    zero3_init: bool = True
    # Free-form keys merged last into the DeepSpeed dict (for options not modelled here).
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("deepspeed.stage", self.stage, (0, 1, 2, 3))
        check_choice("deepspeed.offload_optimizer", self.offload_optimizer, ("none", "cpu"))
        check_choice("deepspeed.offload_param", self.offload_param, ("none", "cpu"))
        if self.offload_param != "none" and self.stage != 3:
            fail("deepspeed.offload_param", "needs deepspeed.stage=3", self.offload_param)
        if self.offload_optimizer != "none" and self.stage == 0:
            fail("deepspeed.offload_optimizer", "needs deepspeed.stage >= 1",
                  self.offload_optimizer)
        for name in ("reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size",
                     "stage3_max_live_parameters"):
            check_number(f"deepspeed.{name}", getattr(self, name), 0, low_open=True)
        check_number("deepspeed.stage3_param_persistence_threshold",
                     self.stage3_param_persistence_threshold, 0)
        for k in ("train_batch_size", "train_micro_batch_size_per_gpu",
                  "gradient_accumulation_steps", "gradient_clipping", "bf16", "fp16"):
            if k in self.extra:
                fail(f"deepspeed.extra.{k}", "is set from train.* (one place only)")


@dataclass
class WandbConfig:
    # null: offline unless WANDB_MODE or WANDB_API_KEY says otherwise; or online|offline|disabled
    mode: str | None = None
    project: str = "l2a"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)
    # Seconds to wait for the wandb server (the reachability check and wandb.init).
    init_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.mode is not None:
            check_choice("train.wandb.mode", self.mode, ("online", "offline", "disabled"))
        check_number("train.wandb.init_timeout", self.init_timeout, 0, low_open=True)


@dataclass
class TrainConfig:
    """`train.*`: the loop, batch sizes, precision, checkpointing and logging."""

    seed: int = 0
    max_steps: int = 100
    micro_batch_size: int = 1
    # Accumulation: `grad_accum_steps`, or derived from `global_batch_size` (sequences per
    # optimizer step over all ranks) = micro_batch_size * grad_accum_steps * world size.
    grad_accum_steps: int = 1
    global_batch_size: int | None = None
    # Ranks per sequence (DeepSpeed-Ulysses; 1 = off): the world splits into groups of this
    # many consecutive ranks, each holding a contiguous slice of every row. Batch sizes and
    # `global_batch_size` count rows, i.e. data-parallel groups, not ranks.
    sequence_parallel: int = 1
    # The local branch under sequence parallelism: `halo` (each rank keeps its slice and gets
    # the window's keys from the ranks before it) or `ulysses` (all-to-all, as the global one).
    sequence_parallel_window: str = "halo"
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    grad_clip: float = 1.0  # 0 disables
    # What trains: `l2a` (the method's set: attention branches, router, norms; MLPs,
    # embeddings and LM head frozen) or `all` (pretraining a base from scratch).
    trainable: str = "l2a"
    activation_checkpointing: bool = True  # per decoder layer
    # Activation memory (train/memory.py): the MLP through DeepSpeed's TiledMLP, cut along
    # the sequence into N shards (off | auto: only when the step would not fit untiled,
    # train/memory.py | N); the checkpointed
    # layer inputs kept in pinned CPU memory between forward and backward.
    tiled_mlp: str | int = "off"
    offload_checkpoints: bool = False
    loss_chunk_size: int = 4096  # tokens per chunk of the LM-head + cross-entropy
    ckpt_every: int = 500  # optimizer steps; 0: only at the end and on preemption
    keep_checkpoints: int = 2  # most recent complete checkpoints kept (0: keep all)
    resume: str = "auto"  # auto | never | <checkpoint dir>
    requeue_exit_code: int = 75
    on_nonfinite: str = "abort"  # abort | skip
    max_consecutive_skips: int = 10
    export: bool = True  # HF model under <run dir>/export at the end
    save_final: bool = True  # checkpoint at the end (implied by export)
    export_dtype: str = "auto"  # auto (bf16 if trained in bf16) | bf16 | fp32
    progress_bar: bool = True
    # Library output on the console (DeepSpeed's warnings, compiler probes, per-shard progress
    # bars): only errors unless true (train/library_output.py).
    verbose: bool = False
    plot: bool = True
    dist_backend: str = "auto"  # auto (nccl on GPU, gloo on CPU) | nccl | gloo
    dist_timeout_minutes: int = 30
    wandb: WandbConfig = field(default_factory=WandbConfig)
    # Evaluation during training: every `eval_every` optimizer steps (0: never), the subset
    # of the evaluation suite in `eval` (keys of conf/eval/default.yaml; docs/EVAL.md).
    eval_every: int = 0
    eval: dict | None = None

    def __post_init__(self) -> None:
        check_number("train.max_steps", self.max_steps, 0, low_open=True)
        check_number("train.eval_every", self.eval_every, 0)
        # `train.eval` is checked by the evaluation that reads it (eval.training), which the
        # entry point hands the trainer: the config imports no evaluation code.
        check_number("train.micro_batch_size", self.micro_batch_size, 0, low_open=True)
        check_number("train.grad_accum_steps", self.grad_accum_steps, 0, low_open=True)
        check_number("train.sequence_parallel", self.sequence_parallel, 0, low_open=True)
        if self.sequence_parallel_window not in ("halo", "ulysses"):
            fail("train.sequence_parallel_window", "must be halo or ulysses", self.sequence_parallel_window)
        if self.global_batch_size is not None:
            check_number("train.global_batch_size", self.global_batch_size, 0, low_open=True)
            if self.global_batch_size % self.micro_batch_size:
                fail("train.global_batch_size",
                      f"must be a multiple of train.micro_batch_size ({self.micro_batch_size})",
                      self.global_batch_size)
        check_choice("train.precision", self.precision, ("auto", "bf16", "fp32"))
        check_choice("train.trainable", self.trainable, ("l2a", "all"))
        check_number("train.grad_clip", self.grad_clip, 0)
        check_number("train.loss_chunk_size", self.loss_chunk_size, 0, low_open=True)
        if self.tiled_mlp not in ("off", "auto") and not (
            isinstance(self.tiled_mlp, int) and self.tiled_mlp >= 1
        ):
            fail("train.tiled_mlp", "must be off, auto or an integer >= 1", self.tiled_mlp)
        if self.offload_checkpoints and not self.activation_checkpointing:
            fail("train.offload_checkpoints", "needs train.activation_checkpointing=true",
                  self.offload_checkpoints)
        check_number("train.ckpt_every", self.ckpt_every, 0)
        check_number("train.keep_checkpoints", self.keep_checkpoints, 0)
        if not self.resume:
            fail("train.resume", "must be auto, never or a checkpoint path", self.resume)
        if not 1 <= self.requeue_exit_code <= 255:
            fail("train.requeue_exit_code", "must be in [1, 255]", self.requeue_exit_code)
        check_choice("train.on_nonfinite", self.on_nonfinite, ("abort", "skip"))
        check_number("train.max_consecutive_skips", self.max_consecutive_skips, 0, low_open=True)
        check_choice("train.export_dtype", self.export_dtype, ("auto", "bf16", "fp32"))
        check_choice("train.dist_backend", self.dist_backend, ("auto", "nccl", "gloo"))
        check_number("train.dist_timeout_minutes", self.dist_timeout_minutes, 0, low_open=True)

    def grad_accum(self, world_size: int) -> int:
        """Micro-batches per optimizer step on each rank (`world_size`: the data-parallel
        size, world / sequence_parallel)."""
        if self.global_batch_size is None:
            return self.grad_accum_steps
        per_pass = self.micro_batch_size * world_size
        if self.global_batch_size % per_pass:
            fail("train.global_batch_size",
                  f"must be a multiple of train.micro_batch_size * world size"
                  f"{' / train.sequence_parallel' if self.sequence_parallel > 1 else ''} ({per_pass})",
                  self.global_batch_size)
        return self.global_batch_size // per_pass


@dataclass
class RunConfig:
    name: str
    model: ModelConfig
    data: Any  # train.data.DataConfig
    optim: OptimConfig
    deepspeed: DeepSpeedConfig
    l2a: L2AConfig
    train: TrainConfig
    # Combinations that are legal but likely wrong (train/config_checks.py): printed by the
    # trainer before it starts; not part of the saved config.
    warnings: list[str] = field(default_factory=list)

    def warmup_steps(self) -> int:
        if self.optim.warmup_steps is not None:
            return min(self.optim.warmup_steps, self.train.max_steps - 1)
        return int(self.optim.warmup_ratio * self.train.max_steps)


# Top-level keys owned by other parts (cluster settings for the launcher); passed through.
_PASSTHROUGH = ("local", "launch", "hydra")


def build_data_config(raw: dict):
    """`data.*` is validated by the data pipeline's own dataclasses (errors name the path)."""
    from train.data import DataConfig

    if not isinstance(raw, dict):
        fail("data", "expected a mapping", raw)
    try:
        return DataConfig.from_dict(raw, path="data")
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # a field of a shape that its check did not reach
        raise ConfigError(f"data: {first_line(e)}") from None


def from_container(raw: dict, data_builder=None) -> RunConfig:
    """Validate a resolved config mapping (the composed Hydra config). `data_builder`
    replaces the data pipeline's validation (benchmarks that feed synthetic batches)."""
    known = {"name", "model", "data", "optim", "deepspeed", "l2a", "train"}
    unknown = sorted(set(raw) - known - set(_PASSTHROUGH))
    if unknown:
        fail(unknown[0], f"unknown top-level key (known: {', '.join(sorted(known))})")
    for k in known:
        if k not in raw:
            fail(k, "missing (is its config group in conf/config.yaml's defaults?)")
    name = raw["name"]
    if not isinstance(name, str) or not name or "/" in name:
        fail("name", "must be a non-empty string without '/'", name)
    run = RunConfig(
        name=name,
        model=build(ModelConfig, raw["model"], "model"),
        data=(data_builder or build_data_config)(raw["data"]),
        optim=build(OptimConfig, raw["optim"], "optim"),
        deepspeed=build(DeepSpeedConfig, raw["deepspeed"], "deepspeed"),
        l2a=build_l2a(raw["l2a"]),
        train=build(TrainConfig, raw["train"], "train"),
    )
    if run.l2a.routed_rows == "capacity" and run.train.sequence_parallel > 1:
        # The routed all-to-all splits the rows by the ranks' routed counts, read on the host.
        fail("l2a.routed_rows", "capacity needs train.sequence_parallel=1 (the routed "
             "all-to-all splits rows by host counts): set l2a.routed_rows=count, got "
             f"train.sequence_parallel={run.train.sequence_parallel}")
    if data_builder is None:  # synthetic batches (benchmarks): no data settings to check
        from train.config_checks import check_together

        run.warnings = check_together(run)
    return run


def _explicit_base_wins(raw: dict, overrides: list[str]) -> None:
    """`experiment=tiny model.base=<dir>`: a base named on the command line replaces the
    random base of the preset (unless the command line sets that too)."""
    model = raw.get("model")
    if not isinstance(model, dict) or not model.get("base") or model.get("random_base") is None:
        return
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    if "model.base" in given and not any(k.split(".")[:2] == ["model", "random_base"] for k in given):
        model["random_base"] = None


def from_hydra(cfg: DictConfig, overrides: list[str] | None = None) -> RunConfig:
    """Resolve and validate the composed Hydra config (interpolation errors name the key).
    `overrides`: the command line's, where an explicit `model.base` beats a preset's
    random base."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        keys = [k for k in cfg.keys() if k != "hydra"]
        raw = OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "config"
        raise ConfigError(f"{key}: {first_line(e)}") from None
    _explicit_base_wins(raw, overrides or [])
    from train.l2a_base import adopt_l2a_base

    adopt_l2a_base(raw, overrides or [], fail)  # model.base=<an L2A model>: its settings
    return from_container(raw)


def to_dict(cfg: RunConfig) -> dict:
    """Plain dict of the validated config (for summary files and wandb)."""
    out = {}
    for f in dataclasses.fields(cfg):
        if f.name == "warnings":
            continue
        v = getattr(cfg, f.name)
        out[f.name] = dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
    return out
