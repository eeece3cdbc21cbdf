"""Every experiment and every option of every config group composes and validates; bad
overrides fail with one line naming the override path."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import train.config  # noqa: F401  (registers the l2a_timestamp resolver)
from train.config import ConfigError, from_hydra

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
GROUPS = ("model", "data", "optim", "deepspeed", "l2a", "train")
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def _validate(overrides: list[str]):
    cfg = _compose(overrides)
    return cfg, from_hydra(cfg)


def test_expected_experiments_exist():
    assert {"tiny", "qwen3_128k", "qwen25_128k"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes(experiment):
    cfg, run = _validate([f"experiment={experiment}"])
    assert run.name == experiment
    assert run.train.max_steps > 0
    run_dir = OmegaConf.to_container(cfg.hydra.run, resolve=True)["dir"]
    assert run_dir.startswith(f"outputs/{experiment}/")


def _options():
    for group in GROUPS:
        for p in sorted((CONF / group).glob("*.yaml")):
            yield group, p.stem


def _option_values(group: str, option: str, context: dict | None = None) -> dict:
    """The option file's own values, read by OmegaConf alone, outside Hydra (in-group
    `defaults` merged first). Interpolations resolve with `name` = `default` and, for keys
    of other groups (`${data.seq_len}`), against `context`: the composed config's other groups."""
    raw = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml")) or {}
    merged = {}
    for parent in raw.pop("defaults", []):
        if isinstance(parent, str) and parent != "_self_":
            merged.update(_option_values(group, parent, context))
    merged.update(raw)
    others = {k: v for k, v in (context or {}).items() if k not in (group, "hydra")}
    root = OmegaConf.create({**others, "name": "default", group: merged})
    return OmegaConf.to_container(root, resolve=True)[group]


def _leaves(value, path=()):
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from _leaves(v, path + (k,))
    else:
        yield path, value


def _lookup(obj, path):
    """`path` in the validated config: attributes, dict keys, list indices. The `l2a.*`
    sparsity keys live in `run.l2a.sparsity`."""
    for key in path:
        if isinstance(obj, dict):
            obj = obj[key]
        elif isinstance(obj, (list, tuple)):
            obj = obj[int(key)]
        elif not hasattr(obj, key) and hasattr(obj, "sparsity"):
            obj = getattr(obj.sparsity, key)
        else:
            obj = getattr(obj, key)
    return obj


def _as_plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _as_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_as_plain(v) for v in value]
    return value


@pytest.mark.parametrize("group,option", list(_options()))
def test_group_option_takes_effect(group, option):
    """Every value an option file sets reaches the validated RunConfig unchanged, in a
    composition whose defaults pick another option where there is one."""
    others = [p.stem for p in (CONF / group).glob("*.yaml") if p.stem != option]
    # A data option's rows may be longer than the default tiny model's context (refused).
    fits = ["model.max_position_embeddings=262144"] if group == "data" else []
    cfg, run = _validate([f"{group}={option}", *fits])
    section = getattr(run, group)
    values = _option_values(group, option, OmegaConf.to_container(cfg))
    leaves = [(path, v) for path, v in _leaves(values)
              if not (group == "data" and path[0] in ("sources", "synthetic"))]
    assert leaves
    for path, want in leaves:
        got = _as_plain(_lookup(section, path))
        if isinstance(want, float) or isinstance(got, float):
            assert got == pytest.approx(want), f"{group}={option}: {'.'.join(path)}"
        else:
            assert got == want, f"{group}={option}: {'.'.join(path)} is {got!r}, file says {want!r}"
    if group == "data":  # sources and synthetic tasks: names, weights, types as written
        srcs = values.get("sources") or []
        assert [s.name for s in section.sources] == [s["name"] for s in srcs]
        assert [s.weight for s in section.sources] == [s.get("weight", 1.0) for s in srcs]
        assert section.synthetic.enabled == bool((values.get("synthetic") or {}).get("enabled"))
    if others:  # the option is not what the default composition gives anyway
        _, other = _validate([f"{group}={others[0]}", *fits])
        assert _as_plain(getattr(other, group)) != _as_plain(section), (group, option, others[0])


@pytest.mark.parametrize("option", ["paper", "identity", "dense"])
def test_l2a_option_reaches_the_converted_model(option, tmp_path):
    """The l2a option's conversion settings are what the built model gets: a tiny random
    base converted under the option (dense: left a plain Qwen3 model)."""
    from train.build_model import _create

    _, run = _validate(["experiment=tiny", f"l2a={option}", f"model.cache_dir={tmp_path}",
                        "model.cache=false"])
    import torch

    model, _ = _create(run, torch.float32, torch.device("cpu"))
    values = _option_values("l2a", option)
    if not values.get("enabled", True):
        assert type(model).__name__ == "Qwen3ForCausalLM"
        return
    cfg = model.config
    assert type(model).__name__ == "L2AQwen3ForCausalLM"
    assert cfg.l2a_init == values["init"] and cfg.l2a_router_tau == values["router_tau"]
    assert cfg.l2a_window == 32  # the tiny experiment's window, applied on top of the option
    from train.build_model import runtime_options

    # Runtime policy reaches the model beside its config, never in it.
    assert run.l2a.dense_prob == 0.1 and runtime_options(run).attn_backend == values["attn_backend"]
    assert not any(k in cfg.to_dict() for k in ("l2a_dense_prob", "l2a_attn_backend"))


def test_qwen3_128k_matches_the_reference_recipe():
    _, run = _validate(["experiment=qwen3_128k"])
    assert run.model.base == "Qwen/Qwen3-8B"
    assert run.model.rope_theta == 5e6 and run.model.max_position_embeddings == 131072
    assert run.data.seq_len == 131072
    assert run.train.precision == "bf16" and run.deepspeed.stage == 2
    assert run.train.activation_checkpointing
    assert run.optim.lr == 5e-5 and run.optim.schedule == "cosine" and run.optim.warmup_ratio == 0.05
    assert run.l2a.sparsity.lambda_final == 1e-8 and run.l2a.sparsity.lambda_schedule == "linear"
    assert run.l2a.sparsity_target is None
    assert (run.l2a.window, run.l2a.router_tau, run.l2a.dense_prob) == (4095, 0.1, 0.1)
    assert run.train.sequence_parallel == 8
    assert tuple(run.optim.betas) == (0.9, 0.999) and run.optim.min_lr_ratio == 0.0


def test_qwen25_128k_sequence_parallel_fits_its_heads():
    from train.parallel.topology import valid_sizes

    _, run = _validate(["experiment=qwen25_128k"])
    # 28 query / 4 KV heads: 8 is not possible (the file says so), 4 is.
    assert run.train.sequence_parallel == 4 and 4 in valid_sizes(28, 4) and 8 not in valid_sizes(28, 4)
    assert tuple(run.optim.betas) == (0.9, 0.999) and run.optim.min_lr_ratio == 0.0


def test_dense_baseline_turns_l2a_off():
    _, run = _validate(["experiment=qwen3_128k_dense"])
    assert not run.l2a.enabled and run.model.base == "Qwen/Qwen3-8B"


def test_deepspeed_options_fill_stages():
    import torch

    from train.deepspeed_config import build_deepspeed_config

    seen = {}
    for option in ("zero1", "zero2", "zero3", "zero3_offload"):
        _, run = _validate([f"deepspeed={option}", "train.micro_batch_size=2",
                            "train.global_batch_size=8", "train.grad_clip=0.5"])
        ds = build_deepspeed_config(run, world_size=2, device=torch.device("cpu"))
        assert ds["gradient_accumulation_steps"] == 2 and ds["train_batch_size"] == 8
        assert ds["gradient_clipping"] == 0.5
        assert ds["optimizer"]["params"]["torch_adam"] is True
        assert ds["bf16"]["enabled"] is False  # auto precision on CPU
        seen[option] = ds["zero_optimization"]
    assert [seen[o]["stage"] for o in ("zero1", "zero2", "zero3")] == [1, 2, 3]
    assert seen["zero3_offload"]["offload_param"]["device"] == "cpu"
    assert seen["zero3_offload"]["offload_optimizer"]["device"] == "cpu"


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.max_steps=0", "train.max_steps: must be > 0, got 0"),
        ("l2a.sparsity_target=1.5", "l2a.sparsity_target: must be null or in [0, 1)"),
        ("train.resume=", "train.resume:"),
        ("train.on_nonfinite=ignore", "train.on_nonfinite: must be one of abort, skip"),
        ("optim.lr=fast", "optim.lr: expected a number"),
        ("+train.max_stepz=3", "train.max_stepz: unknown key"),
        ("l2a.lambda_schedule=exp", "l2a.lambda_schedule: must be one of"),
        ("deepspeed.offload_param=cpu", "deepspeed.offload_param: needs deepspeed.stage=3"),
        ("data.seq_len=0", "data.seq_len"),
        ("train.sequence_parallel_window=ring", "train.sequence_parallel_window: must be halo or ulysses"),
    ],
)
def test_bad_override_names_the_path(override, message):
    with pytest.raises(ConfigError) as err:
        _validate(["experiment=tiny", override])
    text = str(err.value)
    assert message in text and "\n" not in text


def test_cli_bad_override_is_one_line_and_writes_nothing(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "train", "experiment=tiny", "train.max_steps=0",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert errors[-1] == "error: train.max_steps: must be > 0, got 0", proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_cli_unknown_group_option_fails(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "train", "deepspeed=zero9", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "deepspeed" in proc.stderr and "zero9" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_routed_projections_accepted_under_sequence_parallelism():
    """Routed-only projections have their own sequence-parallel core
    (train/parallel/routed.RoutedUlyssesCore): the two together validate."""
    cfg = _validate(["experiment=tiny", "train.sequence_parallel=2", "l2a.routed_projections=true"])[1]
    assert cfg.l2a.routed_projections and cfg.train.sequence_parallel == 2
    assert _validate(["experiment=tiny", "train.sequence_parallel=2"])[1].l2a.routed_projections is False


def test_routed_rows_capacity_validated_with_the_other_l2a_fields():
    """`l2a.routed_rows`: count (default, the measured behaviour) or capacity; capacity lays
    out the routed projections' rows, so it needs them, and the routed all-to-all of sequence
    parallelism splits rows by host counts, so it needs one rank per sequence."""
    assert _validate(["experiment=tiny"])[1].l2a.routed_rows == "count"
    ok = _validate(["experiment=tiny", "l2a.routed_projections=true", "l2a.routed_rows=capacity"])[1]
    assert ok.l2a.routed_rows == "capacity"
    refusals = [
        (["l2a.routed_rows=padded"], "l2a.routed_rows: must be one of count, capacity, got 'padded'"),
        (["l2a.routed_rows=capacity"], "l2a.routed_rows: capacity lays out the routed projections' "
         "rows: it needs l2a.routed_projections=true (or set l2a.routed_rows=count)"),
        (["l2a.routed_projections=true", "l2a.routed_rows=capacity", "train.sequence_parallel=2"],
         "l2a.routed_rows: capacity needs train.sequence_parallel=1 (the routed all-to-all splits "
         "rows by host counts): set l2a.routed_rows=count, got train.sequence_parallel=2"),
    ]
    for overrides, message in refusals:
        with pytest.raises(ConfigError) as err:
            _validate(["experiment=tiny", *overrides])
        assert str(err.value) == message
        assert "\n" not in str(err.value)
    # the 128K preset runs sequence parallelism 8: capacity refused there too
    with pytest.raises(ConfigError, match="sequence_parallel=8"):
        _validate(["experiment=qwen3_128k", "l2a.routed_projections=true", "l2a.routed_rows=capacity"])
