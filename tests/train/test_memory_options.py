"""Activation-memory options (train/memory.py, l2a/router_logit.py): the tiled MLP, CPU
offload of the checkpointed layer inputs and the router without an fp32 copy of the
stream give the same outputs and gradients as the plain computation, and keep what they
promise out of (or in) the tensors autograd saves."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP

from train.memory import (
    enable_tiled_mlp,
    is_gated_mlp,
    offload_context,
    tiled_mlp_shards,
)
from train.memory import (
    MIN_SHARD_TOKENS,
    StepShape,
    auto_tiled_mlp_shards,
    resolve_tiled_mlp,
    step_peak_bytes,
)


def _plain_mlp(mlp, x):
    # The reference, written out: down(silu(gate x) * up x).
    return F.linear(F.silu(F.linear(x, mlp.gate_proj.weight)) * F.linear(x, mlp.up_proj.weight),
                    mlp.down_proj.weight)


def _mlp(trainable: bool, seed=0):
    torch.manual_seed(seed)
    mlp = Qwen3MLP(Qwen3Config(hidden_size=16, intermediate_size=40)).double()
    return mlp.requires_grad_(trainable)


@pytest.mark.parametrize("batch,seq,shards", [(1, 7, 3), (2, 5, 4), (1, 16, "auto"), (3, 1, 2)])
@pytest.mark.parametrize("trainable", [False, True])
def test_tiled_mlp_same_outputs_and_gradients(batch, seq, shards, trainable):
    mlp = _mlp(trainable)
    assert enable_tiled_mlp(mlp, shards) == 1
    x = torch.randn(batch, seq, 16, dtype=torch.float64, requires_grad=True)
    y = mlp(x)
    g = torch.randn_like(y)
    y.backward(g)
    x_ref = x.detach().clone().requires_grad_()
    ref_params = [p.detach().clone().requires_grad_(trainable) for p in
                  (mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)]
    y_ref = F.linear(F.silu(F.linear(x_ref, ref_params[0])) * F.linear(x_ref, ref_params[1]),
                     ref_params[2])
    y_ref.backward(g)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-12)
    for p, r in zip((mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight), ref_params):
        if trainable:
            torch.testing.assert_close(p.grad, r.grad, rtol=0, atol=1e-12)
        else:
            assert p.grad is None


def test_tiled_mlp_saves_only_its_input(monkeypatch):
    """What the forward keeps for backward: the (B, T, hidden) input, nothing of width
    `intermediate` (the point of tiling)."""
    # An in-process ZeRO-3 run earlier in the session can leave DeepSpeed's
    # memory-efficient `F.linear` installed process-wide (it saves the frozen weights'
    # inputs too); count what torch's own linear saves.
    monkeypatch.setattr(torch.nn.functional, "linear", torch._C._nn.linear)
    saved = []
    for tiled in (False, True):
        mlp = _mlp(False)
        if tiled:
            enable_tiled_mlp(mlp, 4)
        x = torch.randn(1, 12, 16, dtype=torch.float64, requires_grad=True)
        shapes: list = []
        saved.append(shapes)
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t, out=shapes: out.append(t.shape) or t, lambda t: t
        ):
            mlp(x)
    plain, tiled = saved
    assert plain.count(torch.Size([1, 12, 40])) == 3  # gate, silu(gate), up
    assert [s for s in tiled if len(s) == 3] == [torch.Size([1, 12, 16])]


@pytest.mark.parametrize("tokens,setting", [(7, 3), (4, 3), (10, 4), (5, 8), (33, 1), (100, "auto")])
def test_shard_count_is_the_number_of_pieces(tokens, setting):
    # TiledMLP marks trainable weights' gradients ready on shard number `shards`: it must
    # be the number of pieces torch.chunk really makes, or the last shard never says so.
    hidden = 16
    n = tiled_mlp_shards(setting, tokens, hidden)
    want = math.ceil(tokens / MIN_SHARD_TOKENS) if setting == "auto" else setting
    assert n == len(torch.chunk(torch.empty(tokens), min(want, tokens)))
    assert tiled_mlp_shards("off", tokens, hidden) == 1


def test_enable_tiled_mlp_finds_every_decoder_mlp(tiny_l2a):
    model = tiny_l2a()
    n = sum(is_gated_mlp(m) for m in model.modules())
    assert n == model.config.num_hidden_layers
    assert enable_tiled_mlp(model, "off") == 0
    assert enable_tiled_mlp(model, 2) == n
    with pytest.raises(ValueError, match="train.tiled_mlp"):
        enable_tiled_mlp(torch.nn.Linear(2, 2), 2)


# --------------------------------------------------------------------------- the model
@pytest.fixture
def tiny_l2a():
    from l2a.convert import convert_model
    from l2a.trainable import mark_trainable
    from train.tiny_base import qwen3_config, random_qwen3

    def make(layers=3):
        config = qwen3_config({"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": layers,
                               "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
                               "max_position_embeddings": 256}, vocab_size=97)
        base = random_qwen3(config, seed=0, device=torch.device("cpu"), dtype=torch.float64)
        model = convert_model(base, init="paper", window=5)
        with torch.no_grad():  # a router that routes some tokens and not others
            g = torch.Generator().manual_seed(1)
            for layer in model.model.layers:
                w = layer.self_attn.router.weight
                w.copy_(torch.randn(w.shape, generator=g, dtype=w.dtype) * 0.5)
        model.train()
        mark_trainable(model)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model

    return make


def _loss_and_grads(model, ids, pos, labels, offload=False):
    from train.trainer import LossModule

    module = LossModule(model, chunk_size=7, l2a=True, offload_checkpoints=offload)
    model.zero_grad(set_to_none=True)
    loss, probs, routes = module(ids, pos, labels)
    (loss + sum(p.sum() for p in probs) * 1e-3).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), [p.detach() for p in probs], [d for d in routes], grads


def _batch(seq=23, vocab=97):
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, vocab, (2, seq), generator=g)
    # Two packed documents in the first row (positions restart), one in the second.
    pos = torch.cat([torch.arange(10), torch.arange(seq - 10)]).expand(2, -1).clone()
    pos[1] = torch.arange(seq)
    return ids, pos, ids.clone()


@pytest.mark.parametrize("shards", [2, 5])
def test_tiled_mlp_in_checkpointed_model_same_loss_and_gradients(tiny_l2a, shards):
    ids, pos, labels = _batch()
    plain = _loss_and_grads(tiny_l2a(), ids, pos, labels)
    model = tiny_l2a()
    enable_tiled_mlp(model, shards)
    tiled = _loss_and_grads(model, ids, pos, labels)
    torch.testing.assert_close(tiled[0], plain[0], rtol=1e-12, atol=0)
    for a, b in zip(tiled[2], plain[2]):
        assert torch.equal(a, b)
    assert tiled[3].keys() == plain[3].keys()
    for name in plain[3]:
        torch.testing.assert_close(tiled[3][name], plain[3][name], rtol=1e-9, atol=1e-12,
                                   msg=name)


def test_offload_same_loss_and_gradients_and_moves_the_layer_inputs(tiny_l2a, monkeypatch):
    import train.memory as memory

    ids, pos, labels = _batch()
    plain = _loss_and_grads(tiny_l2a(), ids, pos, labels)
    used = []
    real = memory.offload_context

    def spy(enabled):
        ctx = real(enabled)
        used.append(ctx)
        return ctx

    monkeypatch.setattr(memory, "offload_context", spy)
    model = tiny_l2a(layers=3)
    off = _loss_and_grads(model, ids, pos, labels, offload=True)
    torch.testing.assert_close(off[0], plain[0], rtol=0, atol=0)
    for a, b in zip(off[1], plain[1]):
        assert torch.equal(a, b)
    for name in plain[3]:
        torch.testing.assert_close(off[3][name], plain[3][name], rtol=0, atol=0, msg=name)
    (ctx,) = used
    # Each checkpointed layer's input (B, T, hidden) went through the offload hook: one
    # per layer (plus the final norm's input and smaller tensors outside the layers).
    hidden_shape = (2, ids.shape[1], model.config.hidden_size)
    assert ctx.packed_shapes.count(hidden_shape) >= model.config.num_hidden_layers
    # Nothing of a layer's inside (e.g. the (B, T, intermediate) MLP tensors) is moved:
    # those are recomputed, not saved.
    assert all(s[-1] != model.config.intermediate_size for s in ctx.packed_shapes)


def test_offload_off_is_a_no_op():
    with offload_context(False) as ctx:
        assert ctx is None


# --------------------------------------------------------------------------- router
def _router_reference(g, w):
    return F.linear(g.float(), w.float()).squeeze(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_router_logit_same_values_and_gradients(dtype, chunk):
    from l2a.router_logit import router_logit

    torch.manual_seed(0)
    g = torch.randn(3, 13, 24, dtype=dtype, requires_grad=True)
    w = (torch.randn(1, 24) * 0.3).to(dtype).requires_grad_()
    out = router_logit(g, w, chunk_rows=chunk)
    g_ref = g.detach().clone().requires_grad_()
    w_ref = w.detach().clone().requires_grad_()
    ref = _router_reference(g_ref, w_ref)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    tau, thr = 0.1, 0.5
    p, p_ref = torch.sigmoid(out / tau), torch.sigmoid(ref / tau)
    assert torch.equal(out >= thr, ref >= thr)
    up = torch.randn(p.shape)
    (p * up).sum().backward()
    (p_ref * up).sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(g.grad, g_ref.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=tol, atol=tol)
    assert g.grad.dtype == dtype and w.grad.dtype == dtype


def test_l2a_layer_keeps_no_fp32_copy_of_the_stream(tiny_l2a):
    """Saved for backward by one bf16 L2A attention block (local branch, global norm,
    router, global branch, gate): no fp32 tensor of the stream's size (the router's input
    and the global norm's input were upcast copies before)."""
    model = tiny_l2a(layers=1).to(torch.bfloat16)
    attn = model.model.layers[0].self_attn
    from l2a.layers import AttentionContext

    x = torch.randn(1, 11, 32, dtype=torch.bfloat16, requires_grad=True)
    h = torch.randn(1, 11, 32, dtype=torch.bfloat16, requires_grad=True)
    pos = torch.arange(11)[None]
    pe = model.model.rotary_emb(x, pos)
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        attn(x, h, pe, AttentionContext(backend="torch"))
    fp32_stream = [t for t in saved.values() if t.dtype == torch.float32 and t.shape[-1] == 32
                   and t.numel() == 11 * 32]
    assert fp32_stream == [], [t.shape for t in fp32_stream]
    # ...while the router and the global branch did save the bf16 normed stream (once).
    assert any(t.dtype == torch.bfloat16 and t.numel() == 11 * 32 for t in saved.values())


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("override,msg", [
    ("train.tiled_mlp=0", "train.tiled_mlp: must be off, auto or an integer >= 1, got 0"),
    ("train.tiled_mlp=some", "train.tiled_mlp: must be off, auto or an integer >= 1, got 'some'"),
    ("train.offload_checkpoints=true",
     "train.offload_checkpoints: needs train.activation_checkpointing=true, got True"),
])
def test_bad_memory_settings_are_one_line_errors(override, msg):
    from train_helpers import compose_run

    from train.config import ConfigError

    with pytest.raises(ConfigError) as e:
        compose_run(["experiment=tiny", "train.activation_checkpointing=false", override])
    assert str(e.value) == msg


def test_memory_settings_accepted():
    from train_helpers import compose_run

    cfg = compose_run(["experiment=tiny", "train.activation_checkpointing=true",
                       "train.tiled_mlp=auto", "train.offload_checkpoints=true"])
    assert cfg.train.tiled_mlp == "auto" and cfg.train.offload_checkpoints
    assert compose_run(["experiment=tiny", "train.tiled_mlp=4"]).train.tiled_mlp == 4
    assert compose_run(["experiment=tiny"]).train.tiled_mlp == "off"


def test_zero3_checkpointed_run_with_tiled_mlp_and_offload_takes_the_same_steps(base_overrides,
                                                                                  tmp_path):
    """Both options under ZeRO-3 (the MLP weights partitioned and gathered per shard) and
    activation checkpointing, through the trainer: the same losses and gradient norms as
    without them."""
    from train_helpers import assert_same_steps, run_in_process

    short = base_overrides + ["train.max_steps=1", "train.ckpt_every=0", "train.save_final=false",
                              "deepspeed=zero3", "train.activation_checkpointing=true"]
    code_a, _ = run_in_process(short, tmp_path / "plain")
    code_b, _ = run_in_process(short + ["train.tiled_mlp=3", "train.offload_checkpoints=true"],
                               tmp_path / "memory")
    assert code_a == code_b == 0
    assert_same_steps(tmp_path / "plain", tmp_path / "memory", loss_rel=1e-6, grad_rel=1e-5,
                      steps=1)


GB = 10**9


def _qwen3(hidden, layers, heads, kv_heads, intermediate, vocab, tied, tokens, world):
    """An L2A step on a Qwen3 shape (head_dim 128): parameters counted from the shape, two
    attention branches and the router trained, MLPs and embeddings frozen."""
    q, kv = heads * 128, kv_heads * 128
    branch = 2 * hidden * q + 2 * hidden * kv + 2 * 128
    mlp = 3 * hidden * intermediate
    trainable = layers * (2 * branch + 4 * hidden) + hidden
    params = trainable + layers * mlp + vocab * hidden * (1 if tied else 2)
    return StepShape(hidden=hidden, intermediate=intermediate, layers=layers, q_width=q,
                     kv_width=kv, params=params, trainable=trainable, tokens=tokens,
                     dtype_bytes=2, world=world, zero_stage=3, l2a=True)


QWEN3_1P7B_128K_ONE_GPU = _qwen3(2048, 28, 16, 8, 6144, 151936, True, 131072, world=1)
QWEN3_8B_512K_SP2 = _qwen3(4096, 36, 32, 8, 12288, 151936, False, 524288 // 2, world=2)


def test_auto_does_not_tile_what_fits():
    # Qwen3-1.7B at 128K on one 80 GB card: ~50 GB, the MLP's intermediates ~8 GB of it.
    assert auto_tiled_mlp_shards(QWEN3_1P7B_128K_ONE_GPU, 80 * GB) == 1
    assert auto_tiled_mlp_shards(QWEN3_1P7B_128K_ONE_GPU, None) == 1  # no GPU: nothing to fit


@pytest.mark.parametrize("gpu_gb", [80, 141])
def test_auto_tiles_what_does_not_fit_in_long_shards(gpu_gb):
    # Qwen3-8B at 512K over SP=2: 262,144 tokens per GPU; the untiled MLP alone would hold
    # 5 x 262144 x 12288 x 2 B = 32 GB of intermediates and gradients.
    s = QWEN3_8B_512K_SP2
    assert step_peak_bytes(s, 1) > 0.85 * gpu_gb * GB
    n = auto_tiled_mlp_shards(s, gpu_gb * GB)
    assert n >= 2
    assert s.tokens / n >= MIN_SHARD_TOKENS


def test_auto_takes_the_fewest_shards_that_fit():
    s = QWEN3_8B_512K_SP2
    # 190 GB: two shards are just over the budget, four fit.
    assert step_peak_bytes(s, 2) > 0.85 * 190 * GB >= step_peak_bytes(s, 4)
    assert auto_tiled_mlp_shards(s, 190 * GB) == (3 if step_peak_bytes(s, 3) <= 0.85 * 190 * GB else 4)
    # More memory never asks for more shards.
    shards = [auto_tiled_mlp_shards(s, gb * GB) for gb in (80, 141, 190, 200, 400)]
    assert shards == sorted(shards, reverse=True) and shards[-1] == 1


def test_tiling_saves_the_mlp_intermediates():
    s = QWEN3_8B_512K_SP2
    saved = step_peak_bytes(s, 1) - step_peak_bytes(s, 2)
    # Untiled: 3 saved intermediates + ZeRO-3's kept down_proj input + 2 gradients = 6 I per
    # token (+ h); tiled in 2: 2.5 I of one shard's transient.
    per_token = (6 - 2.5) * s.intermediate * s.dtype_bytes
    assert saved == pytest.approx(per_token * s.tokens, rel=0.01)


def test_resolve_keeps_explicit_choices_and_resolves_auto_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_tiled_mlp(4, None, cpu) == 4
    assert resolve_tiled_mlp("off", None, cpu) == "off"
    assert resolve_tiled_mlp("auto", lambda: QWEN3_8B_512K_SP2, cpu) == "off"  # no GPU to fit
