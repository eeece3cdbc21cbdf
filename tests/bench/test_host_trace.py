"""bench.host_trace: host time of a trace counted once, by cause, thread and layer pass.

Every trace here is built by hand (times in us) and its answers worked out by hand in the
comments: each instant of a thread goes to the innermost event open on it then (the one
that began last); a thread's causes add up to the union of its events."""

from __future__ import annotations

import pytest

from bench.host_trace import analyse_trace


def _x(cat, name, ts, dur, tid=1):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": tid}


def _flow(ph, flow_id, ts, tid):
    """A forward-backward link: "s" at the operator that made an autograd node, "f" at the
    node's backward call."""
    ev = {"ph": ph, "cat": "fwdbwd", "name": "fwdbwd", "id": flow_id, "ts": ts, "pid": 1, "tid": tid}
    return {**ev, "bp": "e"} if ph == "f" else ev


def _ms(us):
    return pytest.approx(us / 1e3, abs=1e-6)


def _assert_counted_once(r):
    """The invariants every report keeps: no cause below 0, each thread's causes within its
    busy span and the window, the threads adding up to the whole, at most wall x threads."""
    assert min(r["host_ms_by_cause"].values()) >= 0
    for t in r["threads"].values():
        assert min(t["by_cause_ms"].values(), default=0) >= 0
        assert sum(t["by_cause_ms"].values()) == pytest.approx(t["traced_ms"], abs=1e-3)
        assert t["traced_ms"] <= t["span_ms"] + 1e-6 and t["span_ms"] <= r["window_ms"] + 1e-6
    assert sum(t["traced_ms"] for t in r["threads"].values()) == pytest.approx(r["host_ms_traced"], abs=1e-3)
    assert r["host_ms_traced"] <= r["wall_ms"] * len(r["threads"]) + 1e-6
    for p in r["passes"].values():
        assert p["host_ms"] >= 0 and min(p["by_cause_ms"].values(), default=0) >= 0


def test_annotation_opened_and_closed_from_python_hooks():
    """A layer's annotation begins inside the tracer's `__enter__` frame (in the pre-hook)
    and ends inside the forward hook: it does not nest with the Python frames around it.
    The old accounting (an interval minus the intervals nested in it) counted 15-20 and
    75-80 twice (100 us of causes for a thread busy 90 us)."""
    r = analyse_trace([
        _x("python_function", "bench/host_profile.py(2): pre", 5, 15),  # 5-20
        _x("python_function", "<built-in method _record_function_enter_new of PyCapsule>", 10, 8),  # 10-18
        _x("user_annotation", "l2a_host/l2a.forward", 15, 65),  # 15-80
        _x("python_function", "l2a/layers.py(3): forward", 25, 45),  # 25-70
        _x("cpu_op", "aten::mm", 30, 20),  # 30-50
        _x("python_function", "bench/host_profile.py(4): post", 75, 20),  # 75-95
    ])
    ms = r["host_ms_by_cause"]
    # pre 5-10, the built-in (its caller's package) 10-15, the annotation while the hook's
    # frames are open 15-20, post 75-95: 5 + 5 + 5 + 20
    assert ms["trainer"] == _ms(35)
    assert ms["l2a_python"] == _ms(25)  # forward 25-30 and 50-70
    assert ms["aten_dispatch"] == _ms(20)
    # the annotation with no Python frame open: 20-25 and 70-75
    assert ms["untraced_python"] == _ms(10)
    assert r["host_ms_traced"] == _ms(90) and r["threads"]["1"]["span_ms"] == _ms(90)
    # the pass: the annotation's 15-80 and what began inside it, post's 80-95 too
    assert r["passes"]["l2a.forward"]["host_ms"] == _ms(65 + 15)
    _assert_counted_once(r)


def test_an_aten_op_holding_python_frames():
    """A compiled region is an operator whose inside is Python (Inductor's wrapper, Triton's
    launcher) around more operators and launches."""
    r = analyse_trace([
        _x("python_function", "train/trainer.py(1): train_step", 0, 100),
        _x("cpu_op", "Torch-Compiled Region: 0/0", 10, 80),  # 10-90
        _x("python_function", "torch/_inductor/output_code.py(5): __call__", 20, 60),  # 20-80
        _x("cpu_op", "aten::mm", 30, 10),  # 30-40
        _x("python_function", "triton/runtime/jit.py(7): run", 50, 20),  # 50-70
        _x("cuda_driver", "cuLaunchKernel", 55, 5),  # 55-60
    ])
    ms = r["host_ms_by_cause"]
    assert ms["trainer"] == _ms(20)  # 0-10, 90-100
    # the region's own 10-20 and 80-90, Inductor's Python 20-30, 40-50, 70-80
    assert ms["torch_compile"] == _ms(50)
    assert ms["aten_dispatch"] == _ms(10)
    assert ms["triton_launcher"] == _ms(15)  # 50-55, 60-70
    assert ms["kernel_launch"] == _ms(5)
    assert r["kernel_launches"] == 1 and r["host_ms_traced"] == _ms(100)
    _assert_counted_once(r)


def _two_thread_step():
    """A CUDA-like step: the step's thread (1) runs a layer's forward and the loss, then waits
    in backward() while the autograd engine's thread (2) runs the nodes; one recomputation
    (activation checkpointing) inside the layer's first node; a sync at the end."""
    return {"traceEvents": [
        _x("user_annotation", "l2a_host_step", 0, 940),
        _x("user_annotation", "l2a_host/l2a.forward", 100, 200),  # 100-300
        _x("cpu_op", "aten::mm", 120, 80), _flow("s", 1, 120, 1),  # 120-200, makes MmBackward0
        _x("cuda_runtime", "cudaLaunchKernel", 130, 10),
        _x("cpu_op", "aten::mul", 210, 50), _flow("s", 2, 210, 1),  # 210-260, makes MulBackward0
        _x("cuda_runtime", "cudaLaunchKernel", 220, 5),
        _x("cpu_op", "aten::sum", 320, 20), _flow("s", 3, 320, 1),  # the loss, outside the layer
        _x("cuda_runtime", "cudaDeviceSynchronize", 950, 40),  # 950-990: after the step returned
        _x("cpu_op", "aten::empty", 1100, 50),  # past the step's window (wall 1000 us): not counted
        # the autograd engine's thread
        _x("cpu_op", "autograd::engine::evaluate_function: SumBackward0", 400, 50, tid=2),
        _x("cpu_op", "SumBackward0", 401, 48, tid=2), _flow("f", 3, 401, 2),
        _x("cpu_op", "autograd::engine::evaluate_function: MulBackward0", 460, 140, tid=2),  # 460-600
        _x("cpu_op", "MulBackward0", 461, 138, tid=2), _flow("f", 2, 461, 2),
        _x("user_annotation", "l2a_host/l2a.recompute", 470, 50, tid=2),  # 470-520
        _x("cpu_op", "aten::mm", 480, 20, tid=2),
        _x("cuda_runtime", "cudaLaunchKernel", 540, 10, tid=2),
        _x("cpu_op", "autograd::engine::evaluate_function: MmBackward0", 610, 190, tid=2),  # 610-800
        _x("cpu_op", "MmBackward0", 611, 188, tid=2), _flow("f", 1, 611, 2),
        _x("cuda_runtime", "cudaLaunchKernel", 700, 10, tid=2),
        _x("cuda_runtime", "cudaStreamSynchronize", 720, 40, tid=2),  # 720-760
        _x("cpu_op", "autograd::engine::evaluate_function: torch::autograd::AccumulateGrad", 810, 40, tid=2),
        _x("kernel", "gemm", 150, 300, tid=7),
    ]}


def test_backward_on_the_autograd_thread():
    r = analyse_trace(_two_thread_step(), wall_ms=1.0)
    assert r["window_ms"] == _ms(1000)
    main, engine = r["threads"]["1"], r["threads"]["2"]
    assert (main["role"], engine["role"]) == ("step", "autograd")
    # Step thread: its annotations alone 0-120, 200-210, 260-320, 340-940 (600, of which the
    # engine's nodes cover 400-450, 460-600, 610-800, 810-850: 420 waited); mm 70, mul 45,
    # sum 20; launches 10 + 5; the final sync 40. Traced 0-940 and 950-990: 980 of 990.
    assert main["by_cause_ms"] == {"untraced_python": _ms(100 + 20 + 10 + 40 + 20 + 180),
                                   "autograd_wait": _ms(420), "aten_dispatch": _ms(135),
                                   "sync_wait": _ms(40), "kernel_launch": _ms(15)}
    assert main["traced_ms"] == _ms(980) and main["span_ms"] == _ms(990)
    # Engine thread: nodes 50 + 140 + 190 + 40 = 420 of its span 400-850, of which the
    # recompute annotation's own 30, two launches 20, one stream sync 40, the rest aten.
    assert engine["by_cause_ms"] == {"aten_dispatch": _ms(330), "sync_wait": _ms(40),
                                     "untraced_python": _ms(30), "kernel_launch": _ms(20)}
    assert engine["traced_ms"] == _ms(420) and engine["span_ms"] == _ms(450)
    assert r["host_ms_traced"] == _ms(1400)
    assert r["kernel_launches"] == 4 and r["host_syncs"] == 2
    assert r["host_syncs_by_origin"] == {"MmBackward0": 1, "(no operator)": 1}
    p = r["passes"]
    assert p["l2a.forward"]["count"] == 1 and p["l2a.forward"]["host_ms"] == _ms(200)
    assert p["l2a.forward"]["launches_per_pass"] == 2
    assert p["l2a.recompute"]["count"] == 1 and p["l2a.recompute"]["host_ms"] == _ms(50)
    # The layer's backward: the nodes its forward made (mul, mm), less the recomputation.
    assert p["l2a.backward"]["count"] == 1
    assert p["l2a.backward"]["host_ms"] == _ms(140 - 50 + 190)
    assert (p["l2a.backward"]["launches_per_pass"], p["l2a.backward"]["syncs_per_pass"]) == (2, 1)
    # The rest of the backward (the loss's node, the gradient accumulation): one run.
    assert p["backward"]["count"] == 1 and p["backward"]["host_ms"] == _ms(50 + 40)
    assert r["gpu_busy"] == pytest.approx(0.3)
    _assert_counted_once(r)


def test_the_engine_entry_waits_while_the_engine_thread_runs_nodes():
    """With Python stacks the step's thread sits in `run_backward` (the engine's entry): its
    own time is the wait where the engine's thread runs a node, the engine's otherwise."""
    r = analyse_trace([
        _x("user_annotation", "l2a_host_step", 0, 500),
        _x("python_function", "train/trainer.py(1): train_step", 10, 480),  # 10-490
        _x("python_function", "torch/autograd/graph.py(2): _engine_run_backward", 100, 300),  # 100-400
        _x("python_function", "<built-in method run_backward of torch._C._EngineBase object at 0x1>", 110, 280),
        _x("cpu_op", "autograd::engine::evaluate_function: MmBackward0", 150, 100, tid=2),  # 150-250
        _x("python_function", "deepspeed/runtime/zero/stage3.py(9): reduce", 160, 40, tid=2),
        _x("cpu_op", "autograd::engine::evaluate_function: AddBackward0", 260, 40, tid=2),  # 260-300
    ])
    main = r["threads"]["1"]["by_cause_ms"]
    assert main["autograd_wait"] == _ms(100 + 40)  # run_backward 110-390 against 150-250, 260-300
    assert main["torch_python"] == _ms(10 + 140 + 10)  # graph.py 100-110, 390-400; run_backward's rest
    assert main["trainer"] == _ms(90 + 90) and main["untraced_python"] == _ms(10 + 10)
    assert r["threads"]["2"]["by_cause_ms"] == {"aten_dispatch": _ms(100), "deepspeed": _ms(40)}
    assert r["passes"]["backward"]["count"] == 1  # two nodes, no layer forward between them
    assert r["passes"]["backward"]["by_cause_ms"]["deepspeed"] == _ms(40)
    _assert_counted_once(r)


def test_an_annotation_left_open_past_the_node_it_began_in():
    """The shape of the 2026-12-07 H100 record's recomputation: a pass annotation that began
    inside an autograd node and stayed open past it (activation checkpointing stopped the
    recomputation early and the hook that closes it did not run). Counting an interval
    minus the ones it holds, the node held the annotation (180 us inside 100) and came out
    at -80 us, the annotation at +180 - 70; here 200 us of a 200 us span."""
    r = analyse_trace([
        _x("cpu_op", "autograd::engine::evaluate_function: PreBackwardFunctionForModuleBackward", 100, 100, tid=2),
        _x("user_annotation", "l2a_host/l2a.recompute", 120, 180, tid=2),  # 120-300
        _x("cpu_op", "autograd::engine::evaluate_function: MmBackward0", 210, 70, tid=2),  # 210-280
    ])
    # 100-120 and 210-280 in the nodes; 120-210 and 280-300 the open annotation's own
    assert r["host_ms_by_cause"] == {"untraced_python": _ms(110), "aten_dispatch": _ms(90)}
    assert r["threads"]["2"]["traced_ms"] == _ms(200) == r["threads"]["2"]["span_ms"]
    assert r["passes"]["l2a.recompute"]["host_ms"] == _ms(110)
    assert r["passes"]["backward"]["host_ms"] == _ms(90)
    assert r["passes"]["backward"]["count"] == 1
    _assert_counted_once(r)


def test_backward_runs_are_split_by_a_layer_forward():
    """Gradient accumulation: forward, backward, forward, backward: two backward runs, and
    the layer's backward counted once per forward whose nodes ran."""
    r = analyse_trace([
        _x("user_annotation", "l2a_host/dense.forward", 0, 10), _x("cpu_op", "aten::mm", 2, 5),
        _flow("s", 1, 2, 1),
        _x("cpu_op", "autograd::engine::evaluate_function: MmBackward0", 20, 10),
        _x("cpu_op", "MmBackward0", 21, 8), _flow("f", 1, 21, 1),
        _x("cpu_op", "autograd::engine::evaluate_function: torch::autograd::AccumulateGrad", 31, 4),
        _x("user_annotation", "l2a_host/dense.forward", 40, 10), _x("cpu_op", "aten::mm", 42, 5),
        _flow("s", 2, 42, 1),
        _x("cpu_op", "autograd::engine::evaluate_function: MmBackward0", 60, 10),
        _x("cpu_op", "MmBackward0", 61, 8), _flow("f", 2, 61, 1),
        _x("cpu_op", "autograd::engine::evaluate_function: torch::autograd::AccumulateGrad", 71, 4),
    ])
    assert r["passes"]["dense.forward"]["count"] == 2
    assert r["passes"]["dense.backward"]["count"] == 2
    assert r["passes"]["dense.backward"]["host_ms"] == _ms(20)
    assert r["passes"]["backward"]["count"] == 2 and r["passes"]["backward"]["host_ms"] == _ms(8)
    _assert_counted_once(r)
