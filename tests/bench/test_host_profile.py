"""bench.host_profile: host time by cause, launches, syncs and GPU busy from a trace.

The hand-made trace's answers are worked out by hand below (self time = an interval minus
the intervals nested in it); the profiled tiny model's from how activation checkpointing
runs (every layer's forward once in the forward, once more in the backward)."""

from __future__ import annotations

import json

import pytest
import torch

from bench.host_profile import (
    PASS_PREFIX,
    analyse_trace,
    mark_layer_passes,
    profile_host,
    python_package,
)


def _x(cat, name, ts, dur, tid=1):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": tid}


def _trace():
    return {"traceEvents": [
        # main thread: a layer forward (annotation, 0-100) holding one Python frame of our
        # layer (0-90) which calls an operator (10-60) that launches (20-30) and a .item()
        # (60-85) that synchronises (65-80).
        _x("user_annotation", "l2a_host/l2a.forward", 0, 100),
        _x("python_function", "l2a/layers.py(10): forward", 0, 90),
        _x("cpu_op", "aten::mm", 10, 50),
        _x("cuda_runtime", "cudaLaunchKernel", 20, 10),
        _x("cpu_op", "aten::_local_scalar_dense", 60, 25),
        _x("cuda_runtime", "cudaStreamSynchronize", 65, 15),
        # the backward thread: DeepSpeed's hook under the autograd engine (200-260) with a
        # driver launch (210-214).
        _x("cpu_op", "autograd::engine::evaluate_function: MmBackward0", 200, 60, tid=2),
        _x("python_function", "deepspeed/runtime/zero/stage3.py(5): hook", 205, 40, tid=2),
        _x("cuda_driver", "cuLaunchKernel", 210, 4, tid=2),
        # GPU: two overlapping kernels (union 100-180) and a memset apart (300-310).
        _x("kernel", "gemm", 100, 50, tid=7),
        _x("kernel", "gemm2", 120, 60, tid=8),
        _x("gpu_memset", "Memset", 300, 10, tid=7),
        {"ph": "i", "cat": "cpu_instant_event", "name": "x", "ts": 5, "pid": 1, "tid": 1},
    ]}


def test_hand_made_trace_by_cause_counts_and_gpu_busy():
    r = analyse_trace(_trace(), wall_ms=0.4)
    assert r["kernel_launches"] == 2 and r["host_syncs"] == 1 and r["kernels"] == 2
    assert r["host_syncs_by_api"] == {"cudaStreamSynchronize": 1}
    # The sync's origin is our layer's Python line, not torch's operator.
    assert r["host_syncs_by_origin"] == {"l2a/layers.py(10): forward": 1}
    assert r["sync_operators"] == {"aten::_local_scalar_dense": 1}
    assert r["gpu_busy_ms"] == pytest.approx(0.09)  # (180 - 100) + 10 us
    assert r["gpu_busy"] == pytest.approx(0.09 / 0.4, abs=1e-3)
    ms = r["host_ms_by_cause"]
    # launches 10 + 4; sync 15; aten: mm 50-10, item 25-15, the engine op 60-40; python:
    # the layer 90-50-25, deepspeed 40-4; the annotation's own 90-100, no Python open
    # around it: untraced.
    assert ms == {"aten_dispatch": pytest.approx(0.07), "deepspeed": pytest.approx(0.036),
                  "sync_wait": pytest.approx(0.015), "l2a_python": pytest.approx(0.015),
                  "kernel_launch": pytest.approx(0.014), "untraced_python": pytest.approx(0.01)}
    assert r["host_ms_traced"] == pytest.approx(0.16, abs=1e-3)  # 100 + 60
    assert {t: rec["traced_ms"] for t, rec in r["threads"].items()} == {
        "1": pytest.approx(0.1), "2": pytest.approx(0.06)}
    forward = r["passes"]["l2a.forward"]
    assert forward["count"] == 1 and forward["launches_per_pass"] == 1 and forward["syncs_per_pass"] == 1
    assert forward["host_ms"] == pytest.approx(0.1, abs=1e-3)
    backward = r["passes"]["backward"]
    assert backward["count"] == 1  # one backward ran (its node has no forward link: not a layer's)
    assert backward["launches_per_pass"] == 1 and backward["by_cause_ms"]["deepspeed"] == pytest.approx(0.036, abs=1e-3)


def test_python_packages_by_path():
    assert python_package("deepspeed/runtime/zero/x.py(1): f") == "deepspeed"
    assert python_package("flash_attn/cute/interface.py(9): _flash_attn_fwd") == "flash_attn4"
    assert python_package("torch/_dynamo/eval_frame.py(3): _fn") == "torch_compile"
    assert python_package("torch/nn/modules/module.py(3): _call_impl") == "torch_python"
    assert python_package("kernels/token_sparse/op.py(3): f") == "l2a_python"
    assert python_package("<built-in method item of Tensor object at 0x1>") is None


class ToyDecoderLayer(torch.nn.Module):
    """Stands for a decoder layer (the profiler marks modules named *DecoderLayer)."""

    def __init__(self, d: int, sync: bool):
        super().__init__()
        self.lin = torch.nn.Linear(d, d)
        self.sync = sync

    def forward(self, x):
        y = torch.relu(self.lin(x))
        if self.sync:
            _ = bool(y.sum() > 0)  # a data-dependent branch: a host sync on CUDA
        return y + x


class Toy(torch.nn.Module):
    def __init__(self, n: int, sync: bool):
        super().__init__()
        self.layers = torch.nn.ModuleList(ToyDecoderLayer(16, sync) for _ in range(n))

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint

        for layer in self.layers:
            x = checkpoint(layer, x, use_reentrant=False)
        return x


def _step(model):
    x = torch.randn(4, 16, requires_grad=True)
    return lambda: model(x).sum().backward()


@pytest.mark.parametrize("sync", [False, True])
def test_profiled_step_marks_forward_and_recompute_per_layer(tmp_path, sync):
    model = Toy(3, sync)
    r = profile_host(_step(model), model, tmp_path / "t.json", python_stacks=False)
    assert (tmp_path / "t.json").exists() and r["trace"] == "t.json"
    assert r["passes"]["dense.forward"]["count"] == 3
    assert r["passes"]["dense.recompute"]["count"] == 3  # checkpointing re-runs each forward
    # Checkpointing stops each recomputation early (by raising once the saved tensors are
    # back): the recompute annotations still close there, so the backward's own time is not
    # swallowed by them and no interval's self time comes out negative.
    assert r["passes"]["backward"]["host_ms"] > 0
    assert r["passes"]["backward"]["launches_per_pass"] == 0  # CPU: no launches at all
    # every layer's backward (the nodes its forward made), and one backward run for the rest
    # (the loss's sum, the gradient accumulation)
    assert r["passes"]["dense.backward"]["count"] == 3
    assert r["passes"]["backward"]["count"] == 1
    _assert_counted_once(r)
    # Structurally (no timings): the three recompute annotations are disjoint, one after
    # another as the backward walks the layers. Left open, each would stay open to the end
    # of the step and hold the next ones inside it.
    events = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    recomputes = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in events
        if e.get("ph") == "X" and e.get("name") == f"{PASS_PREFIX}dense.recompute")
    assert len(recomputes) == 3
    assert all(end <= nxt_start for (_, end), (nxt_start, _) in zip(recomputes, recomputes[1:]))
    n_sync_ops = r["sync_operators"].get("aten::is_nonzero", 0) + r["sync_operators"].get(
        "aten::_local_scalar_dense", 0)
    # one data-dependent branch per layer pass (3 forwards + 3 recomputations), else none
    assert n_sync_ops == (6 if sync else 0)
    # hooks are removed afterwards
    assert all(not layer._forward_pre_hooks for layer in model.layers)


def test_python_stacks_attribute_host_time_to_packages(tmp_path):
    model = Toy(2, False)
    r = profile_host(_step(model), model, tmp_path / "t.json", python_stacks=True)
    assert r["python_stacks"]
    # torch.nn's Python ran (Module.__call__): the tracer's time is attributed to it
    assert r["host_ms_by_cause"].get("torch_python", 0) > 0
    total = sum(r["host_share_by_cause"].values())
    assert total == pytest.approx(1.0, abs=0.01)
    # the hooks' annotations do not nest with the tracer's frames: still counted once
    _assert_counted_once(r)


def _assert_counted_once(r):
    """No cause below 0; each thread's causes add up to its traced time, within its busy
    span and the step's window (the wall time); the threads to the whole."""
    assert min(r["host_ms_by_cause"].values()) >= 0
    assert r["window_ms"] <= r["wall_ms"] + 1e-3
    for t in r["threads"].values():
        assert min(t["by_cause_ms"].values()) >= 0
        assert sum(t["by_cause_ms"].values()) == pytest.approx(t["traced_ms"], abs=0.01)
        assert t["traced_ms"] <= t["span_ms"] + 1e-3 <= r["window_ms"] + 2e-3
    assert sum(t["traced_ms"] for t in r["threads"].values()) == pytest.approx(r["host_ms_traced"], abs=0.01)
    assert r["host_ms_traced"] <= r["wall_ms"] * len(r["threads"])
    for p in r["passes"].values():
        assert p["host_ms"] >= 0 and min(p["by_cause_ms"].values(), default=0) >= 0


def _tiny_l2a(layers: int):
    """A Qwen3-shaped L2A model as the trainer runs it: routed mixture (random router), the
    trainer's trainable set, non-reentrant activation checkpointing."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from l2a.convert import convert_model
    from l2a.trainable import mark_trainable

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         max_position_embeddings=512)
    model = convert_model(Qwen3ForCausalLM(config).float(), init="paper", window=16)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.router.weight.normal_(0, 1.0)
    model.train()
    mark_trainable(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


@pytest.mark.parametrize("backward_thread", [False, True])
def test_a_profiled_l2a_training_step_is_counted_once(tmp_path, backward_thread):
    """A real L2A training step on CPU: forward, loss, backward with checkpointing. With
    `backward_thread` the backward runs on a thread of its own while the step's thread
    waits, as the autograd engine runs a CUDA backward."""
    import threading

    layers = 3
    model = _tiny_l2a(layers)
    ids = torch.randint(0, 64, (1, 96), generator=torch.Generator().manual_seed(1))
    pos = torch.cat([torch.arange(60), torch.arange(36)])[None]  # two packed documents

    def step():
        loss = model(input_ids=ids, position_ids=pos, labels=ids).loss
        if backward_thread:
            t = threading.Thread(target=loss.backward)
            t.start()
            t.join()
        else:
            loss.backward()

    r = profile_host(step, model, tmp_path / "t.json", python_stacks=False, all_threads=backward_thread)
    _assert_counted_once(r)
    p = r["passes"]
    # every layer once forward, once recomputed, once backward; one backward run
    assert [p[f"l2a.{k}"]["count"] for k in ("forward", "recompute", "backward")] == [layers] * 3
    assert p["backward"]["count"] == 1
    assert p["l2a.backward"]["host_ms"] > 0
    roles = sorted(t["role"] for t in r["threads"].values())
    if backward_thread:
        assert roles == ["autograd", "step"]
        step_thread = next(t for t in r["threads"].values() if t["role"] == "step")
        # the step's thread waited in backward() while the other ran the nodes
        assert step_thread["by_cause_ms"].get("autograd_wait", 0) > 0
    else:
        assert roles == ["step"] and "autograd_wait" not in r["host_ms_by_cause"]


def test_every_pass_annotation_closes_within_the_step():
    """Non-reentrant checkpointing ends a recomputation by raising once the saved tensors are
    back (early stop): the layer's forward hook must run then too, or the recomputation's
    annotation stays open over the rest of the backward."""
    model = Toy(3, False)
    with mark_layer_passes(model) as still_open:
        _step(model)()
        assert not any(still_open.values())


def test_mark_layer_passes_closes_annotations_when_forward_raises():
    class Bad(ToyDecoderLayer):
        def forward(self, x):
            raise RuntimeError("boom")

    model = torch.nn.ModuleList([Bad(4, False)])
    with pytest.raises(RuntimeError), mark_layer_passes(model):
        model[0](torch.randn(2, 4))
    assert not model[0]._forward_pre_hooks and not model[0]._forward_hooks


def test_cli_reads_a_saved_trace(tmp_path, capsys):
    from bench.host_profile import main

    p = tmp_path / "t.json"
    p.write_text(json.dumps(_trace()))
    assert main([str(p), "--wall-ms", "0.4"]) == 0
    assert "2 launches, 1 syncs" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{")
    assert main([str(tmp_path / "bad.json")]) == 2


@pytest.mark.gpu
def test_a_cuda_step_runs_its_backward_on_the_engines_thread(tmp_path):
    """On CUDA the autograd engine runs the backward on a device thread of its own while the
    step's thread waits in backward(): the recomputations and the layers' backward are on
    that thread, found and counted; the step's thread's wait is autograd_wait."""
    model = Toy(3, sync=True).cuda()
    x = torch.randn(4, 16, device="cuda", requires_grad=True)

    def step():
        model(x).sum().backward()

    step()  # CUDA's lazy set-up outside the profiled step
    r = profile_host(step, model, tmp_path / "t.json", python_stacks=False)
    _assert_counted_once(r)
    roles = [t["role"] for t in r["threads"].values()]
    assert roles.count("step") == 1 and "autograd" in roles
    p = r["passes"]
    assert [p[f"dense.{k}"]["count"] for k in ("forward", "recompute", "backward")] == [3, 3, 3]
    assert p["backward"]["count"] == 1
    assert p["dense.backward"]["launches_per_pass"] > 0
    # one value read per layer pass (bool(y.sum() > 0)): 3 forwards, 3 recomputations
    assert r["host_syncs"] >= 6
    step_thread = next(t for t in r["threads"].values() if t["role"] == "step")
    assert step_thread["by_cause_ms"].get("autograd_wait", 0) > 0
