"""Router sparsity control: lambda ramps, the method's R, the target-mode controller."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from train.sparsity import (
    LambdaSchedule,
    SparsityConfig,
    SparsityController,
    layer_sparsity,
    router_regulariser,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors: thread start-up costs more than it saves on a busy 2-core machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
def test_lambda_schedule_shape_and_bounds(kind):
    s = LambdaSchedule(final=2e-3, kind=kind, start_step=10, total_steps=51)
    values = [s.value(t) for t in range(0, 60)]
    assert all(v == 0.0 for v in values[:10]), "nothing before the end of the LR warm-up"
    assert all(0.0 <= v <= 2e-3 for v in values)
    assert all(b >= a for a, b in zip(values, values[1:])), "ramps never go down"
    assert values[50] == pytest.approx(2e-3), "final value at the last step (total_steps - 1)"
    assert values[59] == pytest.approx(2e-3), "clamped after the last step"
    if kind == "constant":
        assert values[10] == 2e-3
    else:
        assert values[10] == 0.0, "ramps start from 0 after warm-up"
        assert values[30] == pytest.approx(1e-3), "half way at the middle step"
    if kind == "linear":
        assert values[20] == pytest.approx(0.5e-3)
    if kind == "cosine":
        # Half-cosine ease-in: below the linear ramp in the first half, above in the second.
        assert values[20] == pytest.approx(1e-3 * (1 - math.cos(math.pi * 0.25)))
        assert values[20] < 0.5e-3 and values[40] > 1.5e-3


def test_lambda_schedule_degenerate_spans():
    # Warm-up ending on the last step: the final value from there on.
    s = LambdaSchedule(final=1.0, kind="linear", start_step=4, total_steps=5)
    assert [s.value(t) for t in range(6)] == [0, 0, 0, 0, 1.0, 1.0]
    s = LambdaSchedule(final=3.0, kind="cosine", start_step=0, total_steps=1)
    assert s.value(0) == 3.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(final=-1.0), "l2a.lambda_final"),
        (dict(final=float("nan")), "l2a.lambda_final"),
        (dict(final="1e-8"), "l2a.lambda_final"),
        (dict(final=1.0, kind="exp"), "l2a.lambda_schedule"),
        (dict(final=1.0, total_steps=0), "total_steps"),
        (dict(final=1.0, start_step=5, total_steps=5), "start_step"),
        (dict(final=1.0, start_step=-1, total_steps=5), "start_step"),
    ],
)
def test_lambda_schedule_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LambdaSchedule(**kwargs)


def test_lambda_schedule_state_dict_round_trip():
    a = LambdaSchedule(final=0.5, kind="cosine", start_step=3, total_steps=20)
    b = LambdaSchedule(final=1.0)
    b.load_state_dict(a.state_dict())
    assert [b.value(t) for t in range(25)] == [a.value(t) for t in range(25)]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sparsity_target=1.0), "l2a.sparsity_target"),
        (dict(sparsity_target=-0.1), "l2a.sparsity_target"),
        (dict(sparsity_target=True), "l2a.sparsity_target"),
        (dict(lambda_schedule="step"), "l2a.lambda_schedule"),
        (dict(lambda_final=-1e-8), "l2a.lambda_final"),
        (dict(multiplier_lr=0.0), "l2a.multiplier_lr"),
        (dict(quadratic_weight=-1.0), "l2a.quadratic_weight"),
        (dict(multiplier_scale=0.0), "l2a.multiplier_scale"),
        (dict(multiplier_max=0.0), "l2a.multiplier_max"),
        (dict(multiplier_init=5.0, multiplier_max=1.0), "l2a.multiplier_init"),
        (dict(target_ramp=1.5), "l2a.target_ramp"),
        (dict(per_layer_target="yes"), "l2a.per_layer_target"),
        (dict(target_constraint="le"), "l2a.target_constraint"),
        (dict(target_constraint="at_least", multiplier_init=-1.0), "l2a.multiplier_init"),
    ],
)
def test_sparsity_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparsityConfig(**kwargs)


def test_controller_validates_steps():
    with pytest.raises(ValueError, match="start_step"):
        SparsityController(SparsityConfig(sparsity_target=0.5), start_step=10, total_steps=10)


def test_target_ramp():
    c = SparsityController(
        SparsityConfig(sparsity_target=0.8, target_ramp=0.5), start_step=10, total_steps=51
    )
    assert c.target(0) == c.target(9) == 0.0
    assert c.target(10) == 0.0
    assert c.target(20) == pytest.approx(0.4)
    assert c.target(30) == pytest.approx(0.8) and c.target(50) == pytest.approx(0.8)
    no_ramp = SparsityController(
        SparsityConfig(sparsity_target=0.8, target_ramp=0.0), start_step=10, total_steps=51
    )
    assert no_ramp.target(10) == 0.8


# ---------------------------------------------------------------------------- R and sparsity


def _probs_and_mask():
    p0 = torch.tensor([[0.9, 0.2, 0.5], [0.6, 0.4, 0.7]])
    p1 = torch.tensor([[0.1, 0.8, 0.3], [1.0, 0.05, 0.25]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # last token of row 1 is padding
    return (p0, p1), mask


def test_router_regulariser_matches_hand_computation():
    (p0, p1), mask = _probs_and_mask()
    # (1/L) sum_l mean_b sum_t p^2, by hand.
    l0 = ((0.81 + 0.04 + 0.25) + (0.36 + 0.16 + 0.49)) / 2
    l1 = ((0.01 + 0.64 + 0.09) + (1.0 + 0.0025 + 0.0625)) / 2
    assert router_regulariser((p0, p1)).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    # Padding (row 1, token 2) drops out of the sum; the batch mean still divides by B = 2.
    l0m = ((0.81 + 0.04 + 0.25) + (0.36 + 0.16)) / 2
    l1m = ((0.01 + 0.64 + 0.09) + (1.0 + 0.0025)) / 2
    assert router_regulariser((p0, p1), mask).item() == pytest.approx((l0m + l1m) / 2, rel=1e-6)


def test_layer_sparsity_counts_valid_tokens_only():
    (p0, p1), mask = _probs_and_mask()
    routes = (p0 >= 0.5, p1 >= 0.5)
    # Layer 0 off: 0.2, 0.4 -> 2 of 6; layer 1 off: 0.1, 0.3, 0.05, 0.25 -> 4 of 6.
    assert layer_sparsity(routes).tolist() == pytest.approx([2 / 6, 4 / 6])
    # Masked: the padded token (0.7 on, 0.25 off) leaves; 2 of 5 and 3 of 5.
    assert layer_sparsity(routes, mask).tolist() == pytest.approx([2 / 5, 3 / 5])


@pytest.mark.parametrize("mode", ["regulariser", "target"])
def test_padding_does_not_count(mode):
    """Whatever the router says at padded positions changes neither the term, nor the
    metrics, nor the gradient at valid positions; the gradient at padding is zero."""
    cfg = SparsityConfig(sparsity_target=0.6 if mode == "target" else None, lambda_final=0.1)
    (p0, p1), mask = _probs_and_mask()

    def run(pad_value):
        c = SparsityController(cfg, start_step=0, total_steps=10)
        probs = []
        for p in (p0, p1):
            p = p.clone()
            p[1, 2] = pad_value
            probs.append(p.requires_grad_())
        routes = tuple(p.detach() >= 0.5 for p in probs)
        term, metrics = c.penalty(tuple(probs), routes, mask, step=5)
        term.backward()
        return term.item(), metrics, [p.grad for p in probs]

    t_a, m_a, g_a = run(0.99)
    t_b, m_b, g_b = run(0.01)
    assert t_a == pytest.approx(t_b, abs=1e-7)
    for key in ("reg", "sparsity", "sparsity_soft", "sparsity/layer_0", "sparsity/layer_1"):
        assert float(m_a[key]) == pytest.approx(float(m_b[key]))
    for ga, gb in zip(g_a, g_b):
        assert ga[1, 2] == 0 and gb[1, 2] == 0
        torch.testing.assert_close(ga, gb)
        assert ga[mask.bool()].abs().min() > 0, "every valid token feels the penalty"


def test_regulariser_mode_term_and_metrics():
    cfg = SparsityConfig(lambda_final=0.2, lambda_schedule="linear")
    c = SparsityController(cfg, start_step=2, total_steps=12)
    (p0, p1), mask = _probs_and_mask()
    routes = (p0 >= 0.5, p1 >= 0.5)
    term, m = c.penalty((p0, p1), routes, mask, step=7)
    lam = 0.2 * (7 - 2) / (11 - 2)
    assert m["lambda"] == pytest.approx(lam)
    assert term.item() == pytest.approx(lam * router_regulariser((p0, p1), mask).item())
    assert float(m["sparsity"]) == pytest.approx(0.5)
    out = c.update(7)
    assert out["sparsity"] == pytest.approx(0.5) and out["lambda"] == pytest.approx(lam)
    term, m = c.penalty((p0, p1), routes, mask, step=1)
    assert term.item() == 0.0 and m["lambda"] == 0.0


# ---------------------------------------------------------------------------- target mode


def _grad_wrt_probs(c, probs, step, mask=None):
    probs = tuple(p.clone().requires_grad_() for p in probs)
    routes = tuple(p.detach() >= 0.5 for p in probs)
    term, metrics = c.penalty(probs, routes, mask, step)
    term.backward()
    return [p.grad for p in probs], metrics


def test_penalty_gradient_sign():
    """Descent on the term lowers p (sparser) when achieved < target and, with an equality
    target, raises p when achieved > target; an at-least target leaves it alone."""
    gen = torch.Generator().manual_seed(0)
    dense = tuple(torch.rand(2, 16, generator=gen) * 0.4 + 0.55 for _ in range(3))  # all on
    sparse = tuple(torch.rand(2, 16, generator=gen) * 0.4 + 0.05 for _ in range(3))  # all off
    for per_layer in (False, True):
        cfg = SparsityConfig(sparsity_target=0.5, target_ramp=0.0, per_layer_target=per_layer)
        c = SparsityController(cfg, start_step=0, total_steps=100)
        grads, m = _grad_wrt_probs(c, dense, step=0)
        assert float(m["multiplier_eff"]) > 0
        assert all((g > 0).all() for g in grads), "not sparse enough: push p down"
        grads, m = _grad_wrt_probs(c, sparse, step=0)
        assert float(m["multiplier_eff"]) < 0
        assert all((g < 0).all() for g in grads), "too sparse: pull p up"
    c = SparsityController(
        SparsityConfig(sparsity_target=0.5, target_ramp=0.0, target_constraint="at_least"),
        start_step=0,
        total_steps=100,
    )
    grads, m = _grad_wrt_probs(c, sparse, step=0)
    assert all((g == 0).all() for g in grads)


def test_dual_update_direction_clip_and_warmup():
    cfg = SparsityConfig(sparsity_target=0.5, target_ramp=0.0, multiplier_max=0.01)
    c = SparsityController(cfg, start_step=3, total_steps=100)
    dense = (torch.full((1, 8), 0.9),)
    for step in range(3):  # LR warm-up: no term, no dual step
        term, m = c.penalty(dense, (dense[0] >= 0.5,), None, step)
        assert term.item() == 0.0 and m["target"] == 0.0
        assert c.update(step)["multiplier"] == 0.0
    trajectory = []
    for step in range(3, 200):
        c.penalty(dense, (dense[0] >= 0.5,), None, step)
        trajectory.append(c.update(step)["multiplier"])
    assert trajectory[0] == pytest.approx(cfg.multiplier_lr * 0.5 * cfg.multiplier_scale)
    assert all(b > a for a, b in zip(trajectory, trajectory[1:]) if b < 0.01)
    assert trajectory[-1] == 0.01, "clipped at l2a.multiplier_max"
    # Now far too sparse: the multiplier comes down through zero (equality target).
    off = (torch.full((1, 8), 0.1),)
    for step in range(200, 400):
        c.penalty(off, (off[0] >= 0.5,), None, step)
        mu = c.update(step)["multiplier"]
    assert mu == -0.01


def test_update_is_token_weighted_over_micro_batches_and_ranks():
    """update() sums the counts of all micro-batches and averages counts (not fractions)
    over ranks, so the result is the sparsity of all tokens of the step."""
    other_rank = torch.tensor([[30.0], [40.0]], dtype=torch.float64)  # 30 of 40 tokens off

    def fake_all_reduce_mean(t):
        return (t + other_rank) / 2

    cfg = SparsityConfig(sparsity_target=0.5)
    c = SparsityController(cfg, 0, 10, all_reduce_mean=fake_all_reduce_mean)
    p_a = torch.tensor([[0.9, 0.9, 0.1, 0.9]])  # 1 of 4 off
    p_b = torch.tensor([[0.1, 0.1, 0.9, 0.9, 0.9, 0.9]])  # 2 of 6 off
    c.penalty((p_a,), (p_a >= 0.5,), None, 0)
    c.penalty((p_b,), (p_b >= 0.5,), None, 0)
    out = c.update(0)
    assert out["sparsity"] == pytest.approx((1 + 2 + 30) / (4 + 6 + 40))
    with pytest.raises(RuntimeError, match="no penalty"):
        c.update(1)
    c.penalty((p_a,), (p_a >= 0.5,), None, 1)
    c.discard_pending()
    with pytest.raises(RuntimeError, match="no penalty"):
        c.update(1)


def test_input_errors():
    c = SparsityController(SparsityConfig(sparsity_target=0.5), 0, 10)
    p = torch.full((2, 4), 0.7)
    with pytest.raises(ValueError, match="empty"):
        c.penalty((), (), None, 0)
    with pytest.raises(ValueError, match="do not match"):
        c.penalty((p, p), (p > 0.5,), None, 0)
    with pytest.raises(ValueError, match="attention_mask"):
        c.penalty((p,), (p > 0.5,), torch.ones(2, 5), 0)
    c.penalty((p,), (p > 0.5,), None, 0)
    c.update(0)
    per_layer = SparsityController(
        SparsityConfig(sparsity_target=0.5, per_layer_target=True), 0, 10
    )
    per_layer.penalty((p, p), (p > 0.5, p > 0.5), None, 0)
    with pytest.raises(ValueError, match="multiplier"):
        per_layer.penalty((p,), (p > 0.5,), None, 1)


def test_state_dict_carries_pending_counts():
    """A checkpoint taken between micro-batches keeps the counts gathered so far."""
    c = SparsityController(SparsityConfig(sparsity_target=0.5), 0, 10)
    p = torch.tensor([[0.9, 0.1, 0.2, 0.8]])
    c.penalty((p,), (p >= 0.5,), None, 0)
    c.update(0)
    c.penalty((p,), (p >= 0.5,), None, 1)
    buf = io.BytesIO()
    torch.save(c.state_dict(), buf)
    buf.seek(0)
    d = SparsityController(SparsityConfig(sparsity_target=0.5), 0, 10)
    d.load_state_dict(torch.load(buf, weights_only=False))
    q = torch.tensor([[0.1, 0.1, 0.1, 0.1]])
    for ctrl in (c, d):
        ctrl.penalty((q,), (q >= 0.5,), None, 1)
    assert c.update(1) == d.update(1)
    assert d.multipliers == c.multipliers and d.multipliers[0] != 0.0


def test_load_state_dict_rejects_other_mode():
    target = SparsityController(SparsityConfig(sparsity_target=0.5), 0, 10)
    paper = SparsityController(SparsityConfig(), 0, 10)
    with pytest.raises(ValueError, match="mode"):
        paper.load_state_dict(target.state_dict())


# ---------------------------------------------------------------------------- toy problem


class ToyRouter:
    """An L2A-like router without a transformer.

    Per layer a linear router over random features (feature 0 is constant, standing in for
    the mean of the normalised residual stream), ``p = sigmoid(w . x / tau)``, hard decision
    ``p >= 0.5`` with the straight-through estimator. A fake task loss rewards routing token
    ``t`` by ``c_t`` (most tokens gain, ~20% lose), and, as in the model, a token that is not
    routed gets no task gradient except on "dense" steps (probability 0.1). The fresh
    features of every step come from a generator that is part of the state.
    """

    L, B, T, D, TAU = 2, 4, 64, 16, 0.1

    def __init__(self, cfg, steps, warmup=10, strength=(1.0, 1.0), lr=1e-2, seed=0):
        self.gen = torch.Generator().manual_seed(seed)
        v = torch.randn(self.L, self.D, generator=self.gen)
        v[:, 0] = 0.0
        # Offsets put the task's own preference at ~20% sparsity.
        self.offset = v.norm(dim=1) * 0.8416
        self.v = v * torch.tensor(strength)[:, None]
        self.offset = self.offset * torch.tensor(strength)
        self.w = torch.zeros(self.L, self.D, requires_grad=True)
        self.opt = torch.optim.Adam([self.w], lr=lr)
        self.ctrl = SparsityController(cfg, start_step=warmup, total_steps=steps)
        self.step = 0

    def features(self, batch):
        x = torch.randn(self.L, batch, self.T, self.D, generator=self.gen)
        x[..., 0] = 1.0
        return x

    def train_step(self):
        x = self.features(self.B)
        p = torch.sigmoid(torch.einsum("lbtd,ld->lbt", x, self.w) / self.TAU)
        route = p >= 0.5
        d_tilde = route.float() + p - p.detach()
        gain = torch.einsum("lbtd,ld->lbt", x, self.v) + self.offset[:, None, None]
        dense = bool(torch.rand((), generator=self.gen) < 0.1)
        task = -(d_tilde * gain * (route | dense).float()).mean()
        term, _ = self.ctrl.penalty(tuple(p), tuple(route), None, self.step)
        self.opt.zero_grad()
        (task + term).backward()
        self.opt.step()
        out = self.ctrl.update(self.step)
        self.step += 1
        return out

    @torch.no_grad()
    def eval_sparsity(self):
        x = self.features(16)
        return (torch.einsum("lbtd,ld->lbt", x, self.w) < 0).float().mean(dim=(1, 2))

    def state_dict(self):
        return {
            "w": self.w.detach().clone(),
            "opt": copy.deepcopy(self.opt.state_dict()),
            "gen": self.gen.get_state(),
            "ctrl": self.ctrl.state_dict(),
            "step": self.step,
        }

    def load_state_dict(self, s):
        with torch.no_grad():
            self.w.copy_(s["w"])
        self.opt.load_state_dict(s["opt"])
        self.gen.set_state(s["gen"])
        self.ctrl.load_state_dict(s["ctrl"])
        self.step = s["step"]


@pytest.mark.parametrize("target", [0.5, 0.8])
def test_toy_reaches_mean_target(target):
    steps = 200
    toy = ToyRouter(SparsityConfig(sparsity_target=target), steps)
    history = [toy.train_step() for _ in range(steps)]
    achieved = toy.eval_sparsity().mean().item()
    assert abs(achieved - target) <= 0.03, (achieved, history[-1])
    # The multiplier did the work: it grew from 0 to a positive value.
    assert history[-1]["multiplier"] > 0
    last = [h["sparsity"] for h in history[-20:]]
    assert abs(sum(last) / len(last) - target) <= 0.03


def test_toy_per_layer_target():
    """Layers whose task gains differ 100x: the mean constraint lets them differ, the
    per-layer constraint drives each to the target with its own multiplier."""
    steps, target = 200, 0.6
    mean = ToyRouter(SparsityConfig(sparsity_target=target), steps, strength=(0.1, 10.0))
    per = ToyRouter(
        SparsityConfig(sparsity_target=target, per_layer_target=True), steps, strength=(0.1, 10.0)
    )
    for _ in range(steps):
        mean.train_step()
        out = per.train_step()
    s_mean, s_per = mean.eval_sparsity(), per.eval_sparsity()
    assert abs(s_mean.mean().item() - target) <= 0.03
    assert (s_mean[0] - s_mean[1]).abs() > 0.1, s_mean
    assert ((s_per - target).abs() <= 0.03).all(), s_per
    assert out["multiplier/layer_1"] > 10 * out["multiplier/layer_0"] > 0


def test_state_dict_round_trip_reproduces_trajectory():
    cfg = SparsityConfig(sparsity_target=0.7)
    steps, cut = 80, 37
    whole = ToyRouter(cfg, steps)
    reference = [whole.train_step() for _ in range(steps)]

    first = ToyRouter(cfg, steps)
    for _ in range(cut):
        first.train_step()
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = ToyRouter(cfg, steps)
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    rest = [resumed.train_step() for _ in range(steps - cut)]
    assert rest == reference[cut:]
    assert resumed.ctrl.multipliers == whole.ctrl.multipliers
    assert reference[-1]["multiplier"] != reference[cut]["multiplier"], "the state did move"
