"""The L2A trainer: a DeepSpeed engine over the L2A-trainable parameters.

One optimizer step (`Trainer.train_step`) = `grad_accum` micro-batches per rank:

* the stochastic dense path is drawn once per step from a generator seeded by
  (seed, step), so every rank (and a resumed run) draws the same;
* the LM loss is the chunked cross-entropy of `train.losses` on the decoder's last hidden
  state, normalised by the number of target tokens of the whole step on all ranks (so one
  process with accumulation and N processes see the same loss and gradient);
* the router term comes from the sparsity controller (paper regulariser or target mode);
* a non-finite loss or gradient norm aborts (`train.on_nonfinite=abort`, before the
  optimizer step when the loss is at fault) or skips the step (`skip`), naming the step.

SIGUSR1 / SIGTERM: the step in flight finishes, a checkpoint is written and the process exits
with `train.requeue_exit_code` (75), for the launcher to requeue with `train.resume=auto`.
SIGINT (Ctrl-C): the same, with exit code 130; a second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from l2a.errors import WriteError, fault_line, is_machine_fault, writing_to
from train.checkpoint import (
    CheckpointError,
    check_resume_step,
    fault_point,
    hold_point,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
    saved_sequence_parallel,
    saved_world_size,
)
from train.config import ConfigError, RunConfig, to_dict
from train.deepspeed_config import build_deepspeed_config, resolve_precision, torch_dtype, zero_stage_note
from train.distributed import (
    DistInfo,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    broadcast_object,
    init_distributed,
)
from train.metrics import MetricsLogger, run_name
from train.parallel.topology import Topology, TopologyError, model_heads

# (train config, model, tokenizer, is rank 0, ZeRO stage) -> hook(step) -> dict of scalars.
MakeEvaluator = Callable[..., Callable[[int], dict]]

PREEMPT_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
# Ctrl-C: like a preemption (the step finishes, a checkpoint is written), but the exit code
# is the shell's 130, not the requeue code.
STOP_SIGNALS = (*PREEMPT_SIGNALS, signal.SIGINT)
INTERRUPTED_EXIT_CODE = 130


class NonFiniteError(RuntimeError):
    """A non-finite loss or gradient norm under `train.on_nonfinite=abort`."""


class LossModule(nn.Module):
    """What DeepSpeed wraps: the causal LM plus the chunked LM loss on its hidden states
    (the full logits are never materialised). The LM head weight is used outside the
    head's own forward, so under ZeRO-3 it is registered as an external parameter of this
    module and gathered for its forward and backward."""

    def __init__(self, lm: nn.Module, chunk_size: int, l2a: bool, offload_checkpoints: bool = False):
        super().__init__()
        self.lm = lm
        self.chunk_size = chunk_size
        self.l2a = l2a
        self.offload_checkpoints = offload_checkpoints

    def forward(self, input_ids, position_ids, labels, dense: bool = False, doc_ids=None,
                labels_shifted: bool = False):
        """`doc_ids`: document ids numbered on the whole row (sequence parallelism: this
        rank's slice of them); `labels_shifted`: `labels` are already the per-position
        targets."""
        from train.losses import causal_lm_loss
        from train.memory import offload_context

        kwargs = {"l2a_dense": dense} if self.l2a else {}
        if doc_ids is not None:
            kwargs["doc_ids"] = doc_ids
        with offload_context(self.offload_checkpoints):
            out = self.lm.model(input_ids=input_ids, position_ids=position_ids, use_cache=False,
                                **kwargs)
        loss = causal_lm_loss(out.last_hidden_state, self.lm.lm_head.weight, labels,
                              chunk_size=self.chunk_size, shifted=labels_shifted)
        probs = getattr(out, "router_probs", None) or ()
        routes = getattr(out, "routes", None) or ()
        return loss, probs, routes


def _rng_state(dense_gen: torch.Generator) -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "dense_generator": dense_gen.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, dense_gen: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    dense_gen.set_state(state["dense_generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int, rank: int) -> None:
    # Per-rank streams (dropout-like randomness must differ across ranks); the dense-path
    # draw does not use these.
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)


class Trainer:
    """Builds everything from a validated `RunConfig`; `fit()` runs to `train.max_steps`."""

    def __init__(self, cfg: RunConfig, run_dir: str | os.PathLike, overrides: list[str] | None = None,
                 loader=None, make_evaluator: MakeEvaluator | None = None):
        """`loader`: an iterator of batches with state_dict()/load_state_dict(), instead of
        the `train.data` pipeline (benchmarks). `make_evaluator`: builds the evaluation
        during training (`train.eval_every` > 0) once the model exists; the entry point
        provides it (`python -m train`: eval.training.build_training_eval), so that the
        trainer imports no evaluation code."""
        self.cfg = cfg
        self.loader = loader
        self._make_evaluator = make_evaluator
        if cfg.train.eval_every and make_evaluator is None:
            raise ConfigError("train.eval_every: this entry point runs no evaluation during "
                              "training (python -m train does); set it to 0")
        self.overrides = list(overrides or [])
        self.dist: DistInfo = init_distributed(cfg.train.dist_backend, cfg.train.dist_timeout_minutes)
        self.wandb_cfg = self._resolve_wandb()  # before any work: online may be refused
        # Every rank writes into rank 0's run directory, which this run owns (train/run_dir.py).
        self.run_dir = Path(broadcast_object(str(Path(run_dir).resolve())))
        self._lock = self._own_run_dir()
        try:
            self._build_all()
        except BaseException:
            self._release_lock()  # an in-process caller (a sweep) may run the next job here
            raise

    def _own_run_dir(self):
        """Rank 0 locks the run directory, refuses a new run over an old one and removes
        what an interrupted save or export left; every rank raises the same one-line error."""
        from train.run_dir import RunDirError, RunDirLock, check_new_run, remove_leftovers

        lock, error = None, None
        if self.dist.is_main:
            try:
                lock = RunDirLock(self.run_dir).acquire()
                check_new_run(self.cfg.train.resume, self.run_dir)
                removed = remove_leftovers(self.run_dir)
                if removed:
                    print(f"removed {len(removed)} temporary file(s) of an interrupted save or "
                          f"export: {', '.join(p.name for p in removed)}", flush=True)
            except (RunDirError, OSError) as e:
                error = str(e) if isinstance(e, RunDirError) else f"{self.run_dir}: {e}"
                if lock is not None:
                    lock.release()
                    lock = None
        error = broadcast_object(error)
        if error is not None:
            raise RunDirError(error)
        return lock

    def _release_lock(self) -> None:
        if getattr(self, "_lock", None) is not None:
            self._lock.release()
            self._lock = None

    def _build_all(self) -> None:
        cfg = self.cfg
        self.precision = resolve_precision(cfg.train.precision, self.dist.device)
        # Sequence parallelism: groups of `sp` consecutive ranks share one row (slices of
        # it); data parallelism is over the groups. Checked before anything is built; every
        # size and rank below is read from this one object.
        sp = cfg.train.sequence_parallel
        try:
            self.topology = Topology.build(
                self.dist.world_size, self.dist.rank, sp,
                heads=model_heads(cfg.model) if sp > 1 else None,
                seq_len=getattr(cfg.data, "seq_len", None))
        except TopologyError as e:
            raise ConfigError(str(e)) from None
        self.mpu = None
        self.ds_config = build_deepspeed_config(cfg, self.topology.dp_size, self.dist.device)
        note = zero_stage_note(cfg.deepspeed.stage, self.dist.world_size, cfg.deepspeed.offload_param)
        if note and self.dist.is_main:
            print(f"note: {note}", file=sys.stderr, flush=True)
        self.grad_divisor = self._deepspeed_gradient_divisor()
        self.grad_accum = self.ds_config["gradient_accumulation_steps"]
        if cfg.train.on_nonfinite == "skip" and cfg.deepspeed.stage == 3:
            raise ConfigError(
                "train.on_nonfinite: skip needs deepspeed.stage <= 2 (ZeRO-3 cannot discard a "
                "bf16/fp32 step), got 'skip'"
            )
        # An explicit checkpoint is checked before anything is built (one-line error).
        self.resume_from = resolve_resume(cfg.train.resume, self.run_dir)
        check_resume_step(self.resume_from, cfg.train.max_steps)
        # Saved by another number of ranks: the engine must be built to load DeepSpeed's
        # universal checkpoint form (checkpoint.to_universal converts it on resume).
        self.resume_universal = self.resume_from is not None and (
            saved_world_size(self.resume_from) != self.dist.world_size
            or saved_sequence_parallel(self.resume_from) != self.topology.sp
        )
        if self.resume_universal:
            self.ds_config["checkpoint"] = {"load_universal": True}
        self.step = 0  # completed optimizer steps
        # What this run wrote: the export and the summary come from these, never from
        # whatever else the directory holds.
        self.last_checkpoint: Path | None = None
        self.last_metrics: dict | None = None
        self.tokens_seen = 0
        self.consecutive_skips = 0
        self.train_time = 0.0
        self._stop_signal: int | None = None
        self.dense_gen = torch.Generator()

        seed_everything(cfg.train.seed, self.dist.rank)
        self._zero3_loading = None
        self._build_model()
        self._build_data()
        self._build_engine()
        self._release_zero3_loading()  # only from_pretrained needed it; export must not see it
        self._build_controller()
        self.evaluator = None
        if cfg.train.eval_every:
            self.evaluator = self._make_evaluator(cfg.train, self.module.lm, self.tokenizer,
                                            self.dist.is_main, cfg.deepspeed.stage)

    # ------------------------------------------------------------------ construction
    def _resolve_wandb(self):
        """train.wandb with the mode that can work (train/wandb_check.py), decided on rank 0
        (the only one that logs) and shared, so that every rank stops on an error."""
        from train.wandb_check import resolve_mode

        w = self.cfg.train.wandb
        result = None
        if self.dist.is_main:
            try:
                result = resolve_mode(w.mode, w.init_timeout)
            except ConfigError as e:
                result = str(e)
        result = broadcast_object(result)
        if isinstance(result, str):
            raise ConfigError(result)
        mode, warning = result
        if warning and self.dist.is_main:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        return dataclasses.replace(w, mode=mode)

    def _deepspeed_gradient_divisor(self) -> int:
        """What DeepSpeed 0.19.8 divides the gradients summed over all ranks by (besides the
        micro-batch count): the data-parallel size (world / sp) under ZeRO-1/2, but the whole
        world under ZeRO-3's reduce-scatter path (`stage3.__avg_scatter_grads` ->
        `reduce_scatter_coalesced`, which does not correct for sequence parallelism; its
        other, contiguous path does, so that one is ruled out here)."""
        if self.topology.sp == 1 or self.cfg.deepspeed.stage != 3:
            return self.topology.dp_size
        if not self.ds_config["zero_optimization"].get("reduce_scatter", True):
            raise ConfigError(
                "deepspeed.extra.zero_optimization.reduce_scatter: must be true with ZeRO-3 and "
                "train.sequence_parallel > 1 (DeepSpeed averages its two ZeRO-3 reduction paths "
                "differently under sequence parallelism), got False")
        return self.dist.world_size

    def _build_model(self) -> None:
        from train.build_model import build_model

        model, self.tokenizer, self.model_dir, self._zero3_loading = build_model(
            self.cfg, self.dist, torch_dtype(self.precision), self.ds_config
        )
        # True when every rank loaded only its shard (ZeRO-3 partitioned loading).
        self.loaded_partitioned = self._zero3_loading is not None
        if self.cfg.train.activation_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        from train.memory import enable_tiled_mlp, resolve_tiled_mlp, step_shape_of

        t = self.cfg.train
        tokens = self.cfg.data.seq_len * t.micro_batch_size // self.topology.sp
        self.tiled_mlp = resolve_tiled_mlp(t.tiled_mlp, lambda: step_shape_of(
            model, tokens, torch_dtype(self.precision).itemsize, self.dist.world_size,
            self.cfg.deepspeed.stage, self.cfg.l2a.enabled, t.trainable == "all"), self.dist.device)
        enable_tiled_mlp(model, self.tiled_mlp)
        from l2a.trainable import mark_trainable

        self.n_trainable, self.n_params = mark_trainable(model, everything=self.cfg.train.trainable == "all")
        if self.n_trainable == 0:
            raise ConfigError("l2a: no trainable parameter found in the model")
        self.model_config = model.config
        self.module = LossModule(model, self.cfg.train.loss_chunk_size, self.cfg.l2a.enabled,
                                 self.cfg.train.offload_checkpoints)
        if self.topology.enabled:
            from train.parallel.apply import apply_to_dense_model, apply_to_model
            from train.parallel.groups import init_groups

            micro = self.cfg.train.micro_batch_size
            if self.cfg.l2a.enabled:
                self.mpu = init_groups(self.topology.sp)
                apply_to_model(model, self.mpu.get_sequence_parallel_group(), micro,
                               window=self.cfg.train.sequence_parallel_window)
            else:
                self.mpu = apply_to_dense_model(model, self.topology.sp, micro)

    def _build_data(self) -> None:
        if self.loader is not None:  # injected (benchmarks with synthetic batches)
            self._batches = iter(self.loader)
            return
        from train.data import build_dataloader, prepare_data
        from train.data.tokenizer import check_same_tokenizer

        cfg = self.cfg
        check_same_tokenizer(cfg.data.tokenizer, self.tokenizer)
        # Safe on every rank at once (the pipeline locks); only rank 0 prints statistics.
        prepared = prepare_data(cfg.data, self.tokenizer, seed=cfg.train.seed,
                                verbose=self.dist.is_main)
        # One row per sequence-parallel group: the ranks of a group read the same rows.
        self.loader = build_dataloader(prepared, cfg.train.micro_batch_size,
                                       rank=self.topology.dp_rank,
                                       world_size=self.topology.dp_size, seed=cfg.train.seed)
        self._batches = iter(self.loader)

    def _param_groups(self) -> list[dict]:
        # No weight decay on norms and biases (1-D tensors).
        decay, no_decay = [], []
        for _, p in self.module.named_parameters():
            if p.requires_grad:
                # A ZeRO-3 partitioned parameter is an empty stand-in; ds_shape is its shape.
                ndim = len(getattr(p, "ds_shape", p.shape))
                (decay if ndim >= 2 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": self.cfg.optim.weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        return groups

    def _build_engine(self) -> None:
        import deepspeed

        from train.lr_schedule import lr_scheduler_factory

        cfg = self.cfg
        if cfg.deepspeed.stage == 3:
            # The LM head weight is read by the chunked loss outside lm_head.forward.
            from deepspeed.runtime.zero import register_external_parameter

            register_external_parameter(self.module, self.module.lm.lm_head.weight)
        self.warmup = cfg.warmup_steps()
        self.engine, self.optimizer, _, self.lr_scheduler = deepspeed.initialize(
            model=self.module,
            model_parameters=self._param_groups(),
            config=self.ds_config,
            lr_scheduler=lr_scheduler_factory(self.warmup, cfg.train.max_steps, cfg.optim.schedule,
                                              cfg.optim.min_lr_ratio),
            dist_init_required=False,
            mpu=self.mpu,
        )

    def _build_controller(self) -> None:
        from train.sparsity import SparsityController

        self.controller = None
        if self.cfg.l2a.enabled:
            self.controller = SparsityController(
                self.cfg.l2a.sparsity, start_step=min(self.warmup, self.cfg.train.max_steps - 1),
                total_steps=self.cfg.train.max_steps, all_reduce_mean=all_reduce_mean,
            )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """This rank's state outside the DeepSpeed engine (which saves its own)."""
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "consecutive_skips": self.consecutive_skips,
            "train_time": self.train_time,
            "rng": _rng_state(self.dense_gen),
            "data": self.loader.state_dict(),
            "sparsity": None if self.controller is None else self.controller.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        self.consecutive_skips = int(state["consecutive_skips"])
        self.train_time = float(state["train_time"])
        if state["rng"] is None:  # resumed with another number of ranks
            seed_everything(self.cfg.train.seed + self.step, self.dist.rank)
        else:
            _set_rng_state(state["rng"], self.dense_gen)
        self.loader.load_state_dict(state["data"])
        self._batches = iter(self.loader)
        if self.controller is not None and state.get("sparsity") is not None:
            self.controller.load_state_dict(state["sparsity"])

    def save(self) -> Path:
        meta = {"name": self.cfg.name, "precision": self.precision,
                "deepspeed_stage": self.cfg.deepspeed.stage, "sequence_parallel": self.topology.sp,
                "overrides": self.overrides}
        # A failed save (full disk) leaves only its `.tmp-*` dir: the last complete one stays.
        with writing_to(self.run_dir / "checkpoints"):
            self.last_checkpoint = save_checkpoint(
                self.engine, self.run_dir, self.step, self.state_dict(), meta, self.model_config,
                self.tokenizer, self.dist, self.cfg.train.keep_checkpoints)
        return self.last_checkpoint

    def maybe_resume(self) -> Path | None:
        path = self.resume_from
        if path is None:
            return None
        self.load_state_dict(
            load_checkpoint(self.engine, path, self.dist, universal=self.resume_universal)
        )
        return path

    # ------------------------------------------------------------------ one step
    def _next_batch(self) -> dict:
        try:
            return next(self._batches)
        except StopIteration:
            self._batches = iter(self.loader)  # next epoch (the loader reshuffles)
            return next(self._batches)

    def draw_dense(self, step: int) -> bool:
        p = self.cfg.l2a.dense_prob if self.cfg.l2a.enabled else 0.0
        if p <= 0:
            return False
        self.dense_gen.manual_seed((self.cfg.train.seed * 1_000_003 + step) % 2**63)
        return bool(torch.rand((), generator=self.dense_gen).item() < p)

    def _micro_batch_loss(self, batch: dict, dense: bool):
        """Forward of one micro-batch -> (lm_loss, router_probs, routes); under sequence
        parallelism the router outputs are gathered to the whole row."""
        if self.topology.sp == 1:
            return self.engine(batch["input_ids"], batch["position_ids"], batch["labels"], dense=dense)
        from train.parallel.shard import gather_router_outputs

        lm_loss, probs, routes = self.engine(
            batch["input_ids"], batch["position_ids"], batch["shift_labels"], dense=dense,
            doc_ids=batch["doc_ids"] if self.cfg.l2a.enabled else None, labels_shifted=True)
        probs, routes = gather_router_outputs(probs, routes, self.mpu.get_sequence_parallel_group())
        return lm_loss, probs, routes

    def _shard(self, batch: dict) -> dict:
        """This rank's part of a micro-batch (the whole row without sequence parallelism)."""
        if self.topology.sp == 1:
            return batch
        from train.losses import shift_labels
        from train.parallel.shard import shard_batch

        return shard_batch(batch, shift_labels(batch["labels"]), self.topology.sp_rank, self.topology.sp)

    @staticmethod
    def _targets(batch: dict) -> int:
        if "shift_labels" in batch:
            return int((batch["shift_labels"] != -100).sum())
        return int((batch["labels"][:, 1:] != -100).sum())

    def train_step(self, batches: list[dict]) -> dict:
        """One optimizer step over this rank's `grad_accum` micro-batches; returns metrics."""
        step = self.step
        dense = self.draw_dense(step)
        dev = self.dist.device
        batches = [self._shard({k: v.to(dev, non_blocking=True) for k, v in b.items()})
                   for b in batches]
        # Target tokens of the step over all ranks: the LM loss is their mean, whatever the
        # split into micro-batches, ranks and sequence slices. DeepSpeed sums the gradients
        # over all ranks and divides by `grad_divisor` and the micro-batch count.
        counts = torch.tensor([float(self._targets(b)) for b in batches], dtype=torch.float64)
        total_targets = float(all_reduce_sum(counts.sum().clone()).item())
        scale = self.grad_accum * self.grad_divisor / max(total_targets, 1.0)
        # The router term: equal on the ranks of a sequence-parallel group, each of which
        # back-propagates its slice; its gradient must come out as the mean over the groups.
        term_scale = self.grad_divisor / self.topology.dp_size

        lm_sum = torch.zeros((), dtype=torch.float64, device=dev)
        term_sum = torch.zeros((), dtype=torch.float64, device=dev)
        # R of every micro-batch, for the step's `reg` metric (the mean over micro-batches and
        # data-parallel groups, like the loss; not the last micro-batch of rank 0).
        reg_sum = torch.zeros((), dtype=torch.float64, device=dev)
        extra: dict = {}
        n = len(batches)
        for i, b in enumerate(batches):
            lm_loss, probs, routes = self._micro_batch_loss(b, dense)
            loss = lm_loss * (float(counts[i]) * scale)
            if self.controller is not None and len(probs):
                # Whole row (gathered under sequence parallelism; equal on the group's ranks,
                # each of which back-propagates its own slice of the term's gradient).
                mask = b["router_mask"] if "router_mask" in b else b["labels"] != -100
                term, extra = self.controller.penalty(probs, routes, mask, step)
                loss = loss + (term * term_scale if term_scale != 1 else term)
                term_sum += term.detach().double()
                reg_sum += torch.as_tensor(extra["reg"], dtype=torch.float64, device=dev)
            lm_sum += lm_loss.detach().double() * float(counts[i])
            self.engine.backward(loss)
            if i == n - 1:
                # Before the optimizer step: a non-finite loss on any rank aborts with the
                # parameters still intact.
                stats = all_reduce_sum(torch.stack([lm_sum, term_sum, reg_sum]).cpu())
                if not bool(torch.isfinite(stats).all()) and self.cfg.train.on_nonfinite == "abort":
                    raise NonFiniteError(
                        f"step {step + 1}: non-finite loss (lm_loss sum {stats[0].item()}, "
                        f"router term sum {stats[1].item()}); set train.on_nonfinite=skip to skip "
                        f"such steps"
                    )
            self.engine.step()

        lm = stats[0].item() / max(total_targets, 1.0)
        # The ranks of a sequence-parallel group hold the same whole-row term: the mean over
        # all ranks is the mean over the groups.
        term = stats[1].item() / (n * self.dist.world_size)
        reg = stats[2].item() / (n * self.dist.world_size)
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        finite = math.isfinite(lm) and math.isfinite(term) and math.isfinite(grad_norm)
        applied = self.engine.was_step_applied()
        if not finite and self.cfg.train.on_nonfinite == "abort":
            raise NonFiniteError(f"step {step + 1}: non-finite gradient norm ({grad_norm}); "
                                 f"set train.on_nonfinite=skip to skip such steps")
        metrics: dict = {"step": step + 1, "loss": lm + term, "lm_loss": lm}
        if self.controller is not None:
            if applied and finite:
                metrics.update(self.controller.update(step))
            else:
                self.controller.discard_pending()
                metrics.update({k: float(v) for k, v in extra.items() if k.startswith("sparsity")})
            metrics["reg"] = reg
            if "multiplier" in extra and "multiplier" not in metrics:
                metrics["multiplier"] = float(extra["multiplier"])
        else:
            metrics["sparsity"] = 0.0
        metrics.update(lr=self.lr_scheduler.get_last_lr()[0] if applied else None,
                       grad_norm=grad_norm, dense=dense)
        if not applied or not finite:
            self.consecutive_skips += 1
            metrics["skipped"] = True
            if self.consecutive_skips > self.cfg.train.max_consecutive_skips:
                raise NonFiniteError(
                    f"step {step + 1}: {self.consecutive_skips} consecutive non-finite steps "
                    f"skipped (train.max_consecutive_skips={self.cfg.train.max_consecutive_skips})"
                )
        else:
            self.consecutive_skips = 0
        self.step += 1
        return metrics

    # ------------------------------------------------------------------ loop
    def _on_signal(self, signum, _frame) -> None:
        self._stop_signal = signum
        if signum == signal.SIGINT:  # Ctrl-C: a second one interrupts at once
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def _install_signal_handlers(self) -> dict:
        old = {}
        for s in STOP_SIGNALS:
            try:
                old[s] = signal.signal(s, self._on_signal)
            except ValueError:  # not the main thread
                pass
        return old

    def _stop_requested(self) -> bool:
        flag = torch.tensor([1.0 if self._stop_signal is not None else 0.0])
        return bool(all_reduce_sum(flag).item() > 0)

    def fit(self) -> int:
        """Train to `train.max_steps`; returns the process exit code (0, or the requeue code
        after a preemption signal)."""
        cfg = self.cfg
        resumed = self.maybe_resume()
        tokens_per_step = (cfg.data.seq_len * cfg.train.micro_batch_size * self.grad_accum
                           * self.topology.dp_size)
        logger = MetricsLogger(
            self.run_dir, self.dist.is_main, cfg.train.max_steps, self.step,
            progress_bar=cfg.train.progress_bar, wandb_cfg=self.wandb_cfg, name=cfg.name,
            overrides=self.overrides, config=to_dict(cfg),
        )
        if resumed is not None:
            logger.write(f"resumed from {resumed} (step {self.step})")
        logger.write(
            f"{cfg.name}: {self.n_trainable / 1e6:.2f}M of {self.n_params / 1e6:.2f}M parameters "
            f"trainable, {self.dist.world_size} rank(s) on {self.dist.device.type}, "
            f"{self.precision}, ZeRO-{cfg.deepspeed.stage}"
            f"{f', sequence parallel {self.topology.sp}' if self.topology.sp > 1 else ''}"
            f"{' (weights loaded partitioned)' if self.loaded_partitioned else ''}, "
            f"{self.grad_accum} micro-batch(es)/step, "
            f"{tokens_per_step} tokens/step, run dir {self.run_dir}"
        )
        old_handlers = self._install_signal_handlers()
        exit_code = 0
        last_saved = self.step if resumed is not None else -1
        try:
            while self.step < cfg.train.max_steps:
                t0 = time.perf_counter()
                batches = [self._next_batch() for _ in range(self.grad_accum)]
                metrics = self.train_step(batches)
                dt = time.perf_counter() - t0
                self.train_time += dt
                self.tokens_seen += tokens_per_step
                metrics.update(tokens_per_s=tokens_per_step / dt, tokens=self.tokens_seen,
                               step_time_s=dt)
                if self.evaluator is not None:
                    metrics.update(self.evaluator(self.step))
                logger.log(metrics)
                self.last_metrics = metrics
                fault_point("kill_after_step", self.step)
                if resumed is None:  # test hook: wait for the preemption signal here
                    hold_point("wait_signal_after_step", self.step,
                               lambda: self._stop_signal is not None)
                stop = self._stop_requested()
                if stop or (cfg.train.ckpt_every and self.step % cfg.train.ckpt_every == 0):
                    self.save()
                    last_saved = self.step
                if stop:
                    if self._stop_signal == signal.SIGINT:
                        exit_code = INTERRUPTED_EXIT_CODE
                        logger.write(f"interrupted (Ctrl-C): saved step {self.step}, exiting with "
                                     f"{exit_code}; continue with train.resume={self.run_dir}")
                    else:
                        exit_code = cfg.train.requeue_exit_code
                        logger.write(f"preempted (signal {self._stop_signal or 'on another rank'}): "
                                     f"saved step {self.step}, exiting with {exit_code} to be requeued")
                    break
            wants_final = cfg.train.save_final or cfg.train.export
            if exit_code == 0 and last_saved != self.step and wants_final:
                self.save()
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
        if exit_code != 0:
            logger.close(plot=False)
            return exit_code
        summary = self._finish(logger)
        if self.dist.is_main:
            self._print_summary(summary)
        return 0

    def _finish(self, logger: MetricsLogger) -> dict:
        from train.metrics import read_metrics

        cfg = self.cfg
        export_dir = None
        if cfg.train.export:
            barrier()
            if self.dist.is_main:
                from train.export import export_checkpoint

                ckpt = self._own_checkpoint()
                with writing_to(self.run_dir / "export"):
                    export_dir = str(export_checkpoint(ckpt, self.run_dir / "export",
                                                       cfg.train.export_dtype, overwrite=True))
            barrier()
        summary = {}
        if self.dist.is_main:
            last = self.last_metrics
            if last is None:  # resumed at train.max_steps: the resumed checkpoint's step
                rows = [r for r in read_metrics(self.run_dir) if r.get("step") == self.step]
                last = rows[-1] if rows else {}
            layers = sorted((k for k in last if k.startswith("sparsity/layer_")),
                            key=lambda k: int(k.rsplit("_", 1)[1]))
            summary = {
                "experiment": cfg.name,
                "overrides": self.overrides,
                "run_name": run_name(cfg.name, self.overrides),
                "steps": self.step,
                "final_loss": last.get("loss"),
                "final_lm_loss": last.get("lm_loss"),
                "sparsity": last.get("sparsity", 0.0),
                "layer_sparsity": [last[k] for k in layers],
                "sparsity_target": cfg.l2a.sparsity_target if cfg.l2a.enabled else None,
                "tokens_per_s": self.tokens_seen / self.train_time if self.train_time else None,
                "tokens": self.tokens_seen,
                "world_size": self.dist.world_size,
                "export_dir": export_dir,
                "checkpoint": str(self._own_checkpoint() or "") or None,
            }
            png = logger.close(plot=cfg.train.plot, summary=summary)
            summary["sparsity_plot"] = str(png) if png else None
            summary["loss_plot"] = str(logger.loss_plot) if logger.loss_plot else None
            tmp = self.run_dir / "summary.json.tmp"
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
            os.replace(tmp, self.run_dir / "summary.json")
        else:
            logger.close()
        return summary

    def _own_checkpoint(self) -> Path | None:
        """The checkpoint of this run's last step: the one it saved, or (nothing trained)
        the one it resumed from."""
        return self.last_checkpoint or self.resume_from

    @staticmethod
    def _print_summary(s: dict) -> None:
        layers = ", ".join(f"{v:.3f}" for v in s["layer_sparsity"])
        lines = [
            f"final loss {s['final_loss']:.4f} (lm {s['final_lm_loss']:.4f}) after {s['steps']} steps"
            if s["final_loss"] is not None else  # resumed at train.max_steps: nothing to do
            f"nothing to train: the checkpoint is at step {s['steps']} = train.max_steps",
            f"sparsity {s['sparsity']:.3f} (per layer: {layers or 'n/a'})"
            + (f", target {s['sparsity_target']}" if s.get("sparsity_target") is not None else ""),
            f"throughput {s['tokens_per_s']:.0f} tokens/s" if s["tokens_per_s"] else "",
            f"export: {s['export_dir']}" if s["export_dir"] else "export: disabled",
        ]
        print("\n".join(line for line in lines if line), flush=True)

    def close(self) -> None:
        """Free the engine (several runs in one process: tests, Hydra's basic multirun)."""
        self.engine.destroy() if hasattr(self.engine, "destroy") else None
        from train.zero3_leaks import release_destroyed_engine

        release_destroyed_engine(self.module)  # else this run's memory outlives it
        del self.engine, self.optimizer, self.module
        self._release_zero3_loading()
        self._release_groups()
        self._release_lock()

    def _release_zero3_loading(self) -> None:
        if self._zero3_loading is not None:
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            # Later models built in this process (the export, a next run) must not be
            # constructed partitioned under zero.Init.
            unset_hf_deepspeed_config()
            self._zero3_loading = None

    def _release_groups(self) -> None:
        if self.mpu is not None:
            from train.parallel.groups import release_groups

            release_groups()  # a later run in this process must not see this run's groups
            self.mpu = None


def run(cfg: RunConfig, run_dir: str | os.PathLike, overrides: list[str] | None = None,
        errors: list[str] | None = None, make_evaluator: MakeEvaluator | None = None) -> int:
    """Train and return the exit code; one-line errors for bad configs, data and checkpoints
    (exit code 2; a non-finite loss: 1), also appended to `errors`. Rank 0 copies what it
    prints to `<run dir>/train.log`."""
    from train.data import DataError
    from train.run_dir import RunDirError
    from train.run_log import copy_output_to_run_log

    def report(message: str, code: int) -> int:
        print(f"error: {message}", file=sys.stderr, flush=True)
        if errors is not None:
            errors.append(message)
        return code

    from train.library_output import set_library_output

    set_library_output(cfg.train.verbose)
    trainer = None
    try:
        with copy_output_to_run_log(run_dir):
            if int(os.environ.get("RANK", "0")) == 0:
                for warning in getattr(cfg, "warnings", []):
                    print(f"warning: {warning}", file=sys.stderr, flush=True)
            try:
                trainer = Trainer(cfg, run_dir, overrides, make_evaluator=make_evaluator)
                return trainer.fit()
            except (ConfigError, CheckpointError, NonFiniteError, DataError, RunDirError) as e:
                return report(str(e), 1 if isinstance(e, NonFiniteError) else 2)
            except WriteError as e:
                return report(str(e), 1)
            except OSError as e:  # a write of the data cache, say: the file names the place
                if not is_machine_fault(e):
                    raise
                return report(fault_line(e, run_dir), 1)
            finally:
                if trainer is not None:
                    trainer.close()
    except OSError as e:  # the run directory itself (train.log cannot be made)
        if not is_machine_fault(e):
            raise
        return report(fault_line(e, run_dir), 1)
