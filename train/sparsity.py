"""Router sparsity control for L2A training.

Two modes, chosen by ``l2a.sparsity_target``:

* ``regulariser`` (the paper; ``sparsity_target`` is null): the loss term is
  ``lambda(step) * R`` with ``R`` the method's regulariser (mean over L2A layers of the
  batch mean of the per-sequence sum of ``p_t ** 2``) and ``lambda`` ramped by
  :class:`LambdaSchedule` from 0 after the LR warm-up to ``l2a.lambda_final`` at the last step.

* ``target`` (ours; ``sparsity_target = s``): reach a requested sparsity ``s`` (the fraction
  of valid tokens whose hard decision ``d_t`` is 0) with an augmented-Lagrangian penalty
  whose multiplier is learnt by dual ascent, as in CoFi / Sheared-LLaMA pruning.

Target-mode conventions:

- error ``e = target - achieved``, on *hard* sparsity: positive while the router is not
  sparse enough;
- soft sparsity ``s_soft = mean over valid tokens of (1 - p_t)``: the differentiable proxy.
  Its gradient w.r.t. a router logit is ``p_t (1 - p_t) / tau``, the factor the
  straight-through estimator also puts on the LM-loss gradient, so penalty and LM loss
  compete on equal terms token by token, at any sequence length;
- loss term ``mu_eff * (target - s_soft)``, ``mu_eff = mu + rho * e_batch`` (``e_batch`` from
  the current micro-batch, a constant in backward), i.e. the gradient of the Lagrangian
  ``mu * (target - s) + rho / 2 * (target - s) ** 2`` with the hard sparsity standing in for
  ``s`` in the coefficient (straight-through, like the router), so the *hard* sparsity is
  driven to the target, not the proxy. ``mu_eff > 0`` lowers every ``p_t`` (sparser),
  ``mu_eff < 0`` raises them (denser);
- dual ascent once per optimizer step on the hard sparsity of all its micro-batches (and
  ranks): ``mu <- clip(mu + multiplier_lr * e * (|mu| + multiplier_scale))``.

Both the dual step and ``rho = quadratic_weight * (|mu| + multiplier_scale)`` are relative to
the multiplier's magnitude. Why: the equilibrium multiplier is the LM loss given up per unit
of sparsity, which is unknown by orders of magnitude (about 1e-3 for the paper's 128K setting,
by converting its lambda = 1e-8; about 1 in the toy problem of the tests). A fixed additive
step is either too slow at one end or oscillates at the other; a relative one is multiplicative
far from zero (reaches any scale in tens of steps) and additive near zero (can change sign).
The strong proportional term reacts within the step: an overshoot of more than
``1 / quadratic_weight`` flips the sign of ``mu_eff`` whatever ``mu`` has wound up to, which
matters because switched-off tokens get no LM gradient outside dense steps and are slow to
come back.

Measured with the defaults: on the toy router of tests/train/test_sparsity.py, targets 0.5
and 0.8 end within 2 points after 200 steps for task strengths 1e-3..10 and router learning
rates 3e-3..3e-2 (worst miss with a fixed additive step of 0.05: 58 points; with
``quadratic_weight=20``: 6 points). In the tiny run (100 steps, ``make train
ARGS="l2a.sparsity_target=s"``) the last step's sparsity was 0.500 and 0.801 for targets 0.5
and 0.8.

``per_layer_target=False`` (default) constrains only the mean over layers, so layers keep
their own sparsity (which is what later pruning exploits); ``True`` gives every layer its own
multiplier and drives each one to the target. ``target_constraint="at_least"`` keeps
``mu, mu_eff >= 0`` (sparser than the target is fine); ``"equality"`` (default) lets them go
negative. The target ramps linearly from 0 at the end of the LR warm-up to its value over the
first ``target_ramp`` fraction of the remaining steps; nothing happens before the warm-up ends.

Trainer protocol, for the optimizer step ``step`` (0-based = completed optimizer steps)::

    for micro_batch in step_batches:
        out = model(...)
        term, metrics = controller.penalty(out.router_probs, out.routes, mask, step)
        (lm_loss + term).backward()
    optimizer.step()
    step_metrics = controller.update(step)   # the dual step; every rank calls it
    # a skipped step (non-finite loss / grad norm): controller.discard_pending() instead

``penalty`` accumulates hard-decision counts and never syncs with the host; ``update`` sums
them over the micro-batches, averages them over data-parallel ranks through the optional
``all_reduce_mean`` callable (a collective, so all ranks must call ``update``) and takes the
dual step, so the multiplier is identical on every rank. No distributed code lives here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

# The method's R and the per-layer hard sparsity live with the model; re-exported here.
from l2a.losses import layer_sparsity, router_regulariser
from l2a.validate import check_bool, check_choice, check_number, fail

__all__ = [
    "LambdaSchedule",
    "SparsityConfig",
    "SparsityController",
    "layer_sparsity",
    "router_regulariser",
]

LAMBDA_SCHEDULES = ("linear", "cosine", "constant")
TARGET_CONSTRAINTS = ("equality", "at_least")


def _valid_mask(attention_mask: Tensor | None, like: Tensor, name: str) -> Tensor | None:
    if attention_mask is None:
        return None
    if attention_mask.shape != like.shape:
        raise ValueError(
            f"{name}: attention_mask has shape {tuple(attention_mask.shape)}, "
            f"expected {tuple(like.shape)} (batch, seq)"
        )
    return attention_mask.to(device=like.device, dtype=torch.float32)


def _check_layers(values: Sequence[Tensor], name: str) -> None:
    if len(values) == 0:
        raise ValueError(f"{name}: empty; the model has no L2A layer")
    shape = values[0].shape
    if len(shape) != 2:
        raise ValueError(f"{name}: expected (batch, seq) tensors, got shape {tuple(shape)}")
    for i, v in enumerate(values):
        if v.shape != shape:
            raise ValueError(f"{name}[{i}]: shape {tuple(v.shape)} differs from {tuple(shape)}")


def _layer_counts(routes: Sequence[Tensor], attention_mask: Tensor | None) -> Tensor:
    """``(2, L)`` float64: row 0 = valid tokens with ``d_t = 0``, row 1 = valid tokens.
    Counts rather than fractions, so that sums over micro-batches and means over ranks give
    the token-weighted sparsity."""
    _check_layers(routes, "routes")
    mask = _valid_mask(attention_mask, routes[0], "routes")
    fraction = layer_sparsity(tuple(routes), attention_mask).to(torch.float64)
    valid = float(routes[0].numel()) if mask is None else mask.sum().to(torch.float64)
    valid = fraction.new_ones(()) * valid
    return torch.stack([fraction * valid, valid.expand_as(fraction)])


def _soft_sparsity(router_probs: Sequence[Tensor], attention_mask: Tensor | None) -> Tensor:
    """``(L,)`` differentiable proxy: mean over valid tokens of ``1 - p_t``, in fp32."""
    mask = _valid_mask(attention_mask, router_probs[0], "soft sparsity")
    out = []
    for p in router_probs:
        q = 1.0 - p.float()
        out.append(q.mean() if mask is None else (q * mask).sum() / mask.sum().clamp_min(1.0))
    return torch.stack(out)


@dataclass
class LambdaSchedule:
    """Weight of the regulariser: 0 up to ``start_step`` (the end of the LR warm-up), then a
    ramp to ``final`` reached at the last step ``total_steps - 1``.

    ``linear``: proportional to progress; ``cosine``: half-cosine ease-in
    ``(1 - cos(pi * progress)) / 2``; ``constant``: ``final`` from ``start_step`` on.
    ``step`` is the 0-based index of the optimizer step (= completed optimizer steps).
    """

    final: float
    kind: str = "linear"
    start_step: int = 0
    total_steps: int = 1

    def __post_init__(self) -> None:
        check_number("l2a.lambda_final", self.final, 0)
        check_choice("l2a.lambda_schedule", self.kind, LAMBDA_SCHEDULES)
        if not isinstance(self.total_steps, int) or self.total_steps < 1:
            raise ValueError(
                "lambda schedule total_steps (the run's optimizer steps): must be an int >= 1, "
                f"got {self.total_steps!r}"
            )
        if not isinstance(self.start_step, int) or not 0 <= self.start_step < self.total_steps:
            raise ValueError(
                "lambda schedule start_step (the end of the LR warm-up): must be an int in "
                f"[0, total_steps={self.total_steps}), got {self.start_step!r}"
            )
        self.final = float(self.final)

    def progress(self, step: int) -> float:
        """0 at ``start_step``, 1 at the last step, clamped outside."""
        span = self.total_steps - 1 - self.start_step
        if span <= 0:
            return 1.0 if step >= self.start_step else 0.0
        return min(max((step - self.start_step) / span, 0.0), 1.0)

    def value(self, step: int) -> float:
        if step < self.start_step:
            return 0.0
        if self.kind == "constant":
            return self.final
        f = self.progress(step)
        if self.kind == "cosine":
            f = 0.5 * (1.0 - math.cos(math.pi * f))
        return self.final * f

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        restored = LambdaSchedule(**state)
        self.final, self.kind = restored.final, restored.kind
        self.start_step, self.total_steps = restored.start_step, restored.total_steps


@dataclass
class SparsityConfig:
    """The ``l2a.*`` keys of the sparsity controller; errors name them with that prefix.

    Defaults suit real runs; they were also tuned to converge in ~200 steps on the toy.
    """

    # null: the paper's regulariser; a number in [0, 1): target mode.
    sparsity_target: float | None = None
    # Regulariser mode. The paper's value at 128K tokens per sequence; R grows with the
    # sequence length, so shorter sequences need a proportionally larger lambda.
    lambda_final: float = 1e-8
    lambda_schedule: str = "linear"
    # Target mode. Relative dual-ascent step per unit of sparsity error.
    multiplier_lr: float = 0.5
    # Proportional (augmented-Lagrangian) weight, relative to |mu| + multiplier_scale.
    quadratic_weight: float = 80.0
    # Magnitude below which the multiplier's steps become additive (see the module doc).
    multiplier_scale: float = 1e-3
    multiplier_init: float = 0.0
    # Anti-windup clip on |mu| (units: LM loss per unit of mean sparsity).
    multiplier_max: float = 100.0
    # Fraction of the post-warm-up steps over which the target ramps up from 0.
    target_ramp: float = 0.1
    per_layer_target: bool = False
    target_constraint: str = "equality"

    def __post_init__(self) -> None:
        self.sparsity_target = check_number("l2a.sparsity_target", self.sparsity_target, 0, 1,
                                            high_open=True, allow_none=True)
        # lambda_final and lambda_schedule: validated by the LambdaSchedule they build.
        LambdaSchedule(self.lambda_final, self.lambda_schedule)
        check_number("l2a.multiplier_lr", self.multiplier_lr, 0, low_open=True)
        check_number("l2a.quadratic_weight", self.quadratic_weight, 0)
        check_number("l2a.multiplier_scale", self.multiplier_scale, 0, low_open=True)
        check_number("l2a.multiplier_max", self.multiplier_max, 0, low_open=True)
        check_number("l2a.multiplier_init", self.multiplier_init)
        if abs(self.multiplier_init) > self.multiplier_max:
            fail("l2a.multiplier_init",
                 f"|{self.multiplier_init}| exceeds l2a.multiplier_max ({self.multiplier_max})")
        check_number("l2a.target_ramp", self.target_ramp, 0, 1)
        check_bool("l2a.per_layer_target", self.per_layer_target)
        check_choice("l2a.target_constraint", self.target_constraint, TARGET_CONSTRAINTS)
        if self.target_constraint == "at_least" and self.multiplier_init < 0:
            fail("l2a.multiplier_init", "must be >= 0 with l2a.target_constraint=at_least",
                 self.multiplier_init)

    @property
    def mode(self) -> str:
        return "regulariser" if self.sparsity_target is None else "target"


class SparsityController:
    """Turns router outputs into the sparsity loss term; owns the multiplier state.

    cfg: :class:`SparsityConfig`; start_step: the end of the LR warm-up (neither mode acts
    before it); total_steps: optimizer steps of the run; all_reduce_mean: optional
    ``Tensor -> Tensor`` returning the mean of a tensor over data-parallel ranks.
    """

    def __init__(
        self,
        cfg: SparsityConfig,
        start_step: int,
        total_steps: int,
        all_reduce_mean: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.cfg = cfg
        self.mode = cfg.mode
        # Also validates start_step / total_steps, which the target mode uses too.
        self.schedule = LambdaSchedule(
            cfg.lambda_final, cfg.lambda_schedule, start_step, total_steps
        )
        self.all_reduce_mean = all_reduce_mean
        # One multiplier (or one per layer), created on first use when the layer count is known.
        self.multipliers: list[float] | None = None
        self._pending: Tensor | None = None  # (2, L) hard counts since the last update()

    # ------------------------------------------------------------------ schedules
    def target(self, step: int) -> float:
        """The ramped sparsity target at ``step`` (0 up to the end of the LR warm-up)."""
        if self.cfg.sparsity_target is None:
            raise ValueError("target(): l2a.sparsity_target is null (regulariser mode)")
        s = self.schedule
        if step < s.start_step:
            return 0.0
        ramp = self.cfg.target_ramp * (s.total_steps - 1 - s.start_step)
        frac = 1.0 if ramp <= 0 else min((step - s.start_step) / ramp, 1.0)
        return self.cfg.sparsity_target * frac

    def _ensure_multipliers(self, num_layers: int) -> list[float]:
        n = num_layers if self.cfg.per_layer_target else 1
        if self.multipliers is None:
            self.multipliers = [float(self.cfg.multiplier_init)] * n
        elif len(self.multipliers) != n:
            raise ValueError(
                f"sparsity controller: holds {len(self.multipliers)} multiplier(s), the model "
                f"gives {num_layers} L2A layers (l2a.per_layer_target={self.cfg.per_layer_target})"
            )
        return self.multipliers

    # ------------------------------------------------------------------ loss term
    def penalty(
        self,
        router_probs: Sequence[Tensor],
        routes: Sequence[Tensor],
        attention_mask: Tensor | None,
        step: int,
    ) -> tuple[Tensor, dict]:
        """Loss term to add to this micro-batch's LM loss, and metrics.

        router_probs / routes: one ``(B, T)`` tensor per L2A layer (soft ``p_t`` / hard
        ``d_t``); attention_mask: ``(B, T)`` 1 for real tokens, or None.
        Metrics (floats, or detached 0-dim tensors: nothing here syncs with the host):
        ``reg`` (R), ``sparsity`` (hard, mean over layers), ``sparsity/layer_<i>`` (``i`` =
        position in ``router_probs``), ``sparsity_soft``; regulariser mode: ``lambda``;
        target mode: ``target`` (ramped), ``multiplier`` (mean over layers if per layer),
        ``multiplier_eff``.
        """
        _check_layers(router_probs, "router_probs")
        _check_layers(routes, "routes")
        if len(routes) != len(router_probs) or routes[0].shape != router_probs[0].shape:
            raise ValueError(
                f"routes: {len(routes)} x {tuple(routes[0].shape)} do not match router_probs: "
                f"{len(router_probs)} x {tuple(router_probs[0].shape)}"
            )
        _valid_mask(attention_mask, router_probs[0], "penalty")  # shape check
        reg = router_regulariser(tuple(router_probs), attention_mask)
        counts = _layer_counts(routes, attention_mask)
        self._pending = counts if self._pending is None else self._pending + counts
        hard = (counts[0] / counts[1].clamp_min(1)).float()  # (L,)
        soft = _soft_sparsity(router_probs, attention_mask)  # (L,), differentiable

        metrics: dict = {
            "reg": reg.detach(),
            "sparsity": hard.mean(),
            "sparsity_soft": soft.detach().mean(),
        }
        metrics.update({f"sparsity/layer_{i}": hard[i] for i in range(len(router_probs))})
        if self.mode == "regulariser":
            lam = self.schedule.value(step)
            metrics["lambda"] = lam
            return lam * reg, metrics

        mus = self._ensure_multipliers(len(router_probs))
        target = self.target(step)
        metrics["target"] = target
        metrics["multiplier"] = sum(mus) / len(mus)
        if step < self.schedule.start_step:
            metrics["multiplier_eff"] = 0.0
            # Zero, but connected to the router so every trainable parameter gets a gradient.
            return 0.0 * soft.sum(), metrics
        mu = torch.tensor(mus, dtype=torch.float32, device=soft.device)
        if not self.cfg.per_layer_target:
            hard, soft = hard.mean().reshape(1), soft.mean().reshape(1)
        rho = self.cfg.quadratic_weight * (mu.abs() + self.cfg.multiplier_scale)
        mu_eff = mu + rho * (target - hard)
        if self.cfg.target_constraint == "at_least":
            mu_eff = mu_eff.clamp_min(0.0)
        metrics["multiplier_eff"] = mu_eff.mean()
        return (mu_eff * (target - soft)).mean(), metrics

    # ------------------------------------------------------------------ dual step
    def update(self, step: int) -> dict:
        """After optimizer step ``step``: reduce the hard counts gathered since the last call
        (all micro-batches; all ranks through ``all_reduce_mean``) and, in target mode from
        the end of the warm-up on, take the dual step. Returns float metrics of the step:
        ``sparsity``, ``sparsity/layer_<i>``; ``lambda`` (regulariser) or ``target``,
        ``multiplier`` and, per layer, ``multiplier/layer_<i>`` (target mode).
        """
        if self._pending is None:
            raise RuntimeError("SparsityController.update(): no penalty() since the last update")
        counts, self._pending = self._pending, None
        if self.all_reduce_mean is not None:
            # Mean of the counts, then the ratio: the token-weighted sparsity over all ranks.
            counts = self.all_reduce_mean(counts)
        counts = counts.detach().to("cpu", torch.float64)
        per_layer = (counts[0] / counts[1].clamp_min(1)).tolist()
        out: dict = {"sparsity": sum(per_layer) / len(per_layer)}
        out.update({f"sparsity/layer_{i}": s for i, s in enumerate(per_layer)})
        if self.mode == "regulariser":
            out["lambda"] = self.schedule.value(step)
            return out

        mus = self._ensure_multipliers(len(per_layer))
        target = self.target(step)
        if step >= self.schedule.start_step:
            achieved = per_layer if self.cfg.per_layer_target else [out["sparsity"]]
            low = 0.0 if self.cfg.target_constraint == "at_least" else -self.cfg.multiplier_max
            lr, scale = self.cfg.multiplier_lr, self.cfg.multiplier_scale
            self.multipliers = [
                min(max(mu + lr * (target - a) * (abs(mu) + scale), low), self.cfg.multiplier_max)
                for mu, a in zip(mus, achieved)
            ]
        out["target"] = target
        out["multiplier"] = sum(self.multipliers) / len(self.multipliers)
        if self.cfg.per_layer_target:
            out.update({f"multiplier/layer_{i}": m for i, m in enumerate(self.multipliers)})
        return out

    def discard_pending(self) -> None:
        """Forget the statistics of a step that was skipped (non-finite loss or gradient)."""
        self._pending = None

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        """Multipliers and pending counts. The schedules are functions of the step and the
        current config, so they are not restored (kept here for reference only)."""
        return {
            "mode": self.mode,
            "config": asdict(self.cfg),
            "schedule": self.schedule.state_dict(),
            "multipliers": None if self.multipliers is None else list(self.multipliers),
            "pending": None if self._pending is None else self._pending.detach().cpu().clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("mode") != self.mode:
            raise ValueError(
                f"sparsity controller checkpoint: mode {state.get('mode')!r}, this run is "
                f"configured for {self.mode!r} (l2a.sparsity_target)"
            )
        mus = state["multipliers"]
        self.multipliers = None if mus is None else [float(m) for m in mus]
        pending = state.get("pending")
        self._pending = None if pending is None else pending.clone()
