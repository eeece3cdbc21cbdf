"""The import contract (scripts/import_graph.py): kernels < l2a < train < eval < bench <
study, no cycle between packages or between the modules of one package. The first test
reads the repository; the others build small trees that break one rule each, so that the
checker is seen to catch what it claims to (lazy imports included)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_checker():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["import_graph"] = module
    spec.loader.exec_module(module)
    return module


graph = _load_checker()


def test_repository_keeps_the_import_contract():
    problems = graph.report(ROOT)
    assert not problems, "\n".join(problems)


def test_cli_exit_code_on_the_repository():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "import_graph.py")],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "import contract holds" in done.stdout


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


BASE = {
    "kernels/__init__.py": "",
    "kernels/ops.py": "",
    "l2a/__init__.py": "",
    "l2a/layers.py": "from kernels import ops\n",
    "train/__init__.py": "",
    "train/trainer.py": "import l2a.layers\nfrom train.data import loader\n",
    "train/data/__init__.py": "",
    "train/data/loader.py": "from . import tasks\n",
    "train/data/tasks.py": "",
    "eval/__init__.py": "",
    "eval/runner.py": "from train.data.tasks import *\n",
}


def test_a_clean_tree_passes(tmp_path):
    assert graph.report(_tree(tmp_path, BASE)) == []


def test_upward_import_inside_a_function_is_caught(tmp_path):
    root = _tree(tmp_path, {**BASE, "l2a/prune.py": "def f():\n    from train.data import loader\n"})
    problems = graph.report(root)
    assert len(problems) == 1
    assert problems[0].startswith("l2a/prune.py:2: l2a.prune imports train.data.loader")


def test_library_importing_an_entry_point_is_caught(tmp_path):
    # train/__main__ may import eval (it wires the layers together) ...
    # (eval importing train beside it is no cycle: nothing imports an entry point).
    wired = {**BASE, "train/__main__.py": "import eval.runner\n", "eval/runner.py": "import train.trainer\n"}
    assert graph.report(_tree(tmp_path / "a", wired)) == []
    # ... but nothing may import a __main__.
    root = _tree(tmp_path / "b", {**BASE, "train/__main__.py": "def helper(): pass\n",
                                  "eval/__main__.py": "from train.__main__ import helper\n"})
    problems = graph.report(root)
    assert [p.split(":")[0] for p in problems] == ["eval/__main__.py"]
    assert "entry point" in problems[0]


@pytest.mark.parametrize("rel, text, first_line, edge", [
    # train.trainer imports train.data; train.data.loader importing train.trainer closes it.
    ("train/data/loader.py", "import train.trainer\n", "package cycle: train <-> train.data",
     "train/data/loader.py:1: train.data.loader -> train.trainer"),
    # loader imports tasks; a lazy import of loader in tasks closes it.
    ("train/data/tasks.py", "def f():\n    from .loader import x\n",
     "module cycle: train.data.loader <-> train.data.tasks",
     "train/data/tasks.py:2: train.data.tasks -> train.data.loader"),
])
def test_cycles_are_caught(tmp_path, rel, text, first_line, edge):
    problems = graph.report(_tree(tmp_path, {**BASE, rel: text}))
    assert len(problems) == 1
    assert problems[0].splitlines()[0] == first_line
    assert edge in problems[0]


def test_init_reexport_is_not_a_cycle_but_a_real_back_edge_is(tmp_path):
    files = {**BASE, "kernels/__init__.py": "from .flash import op\n",
             "kernels/flash/__init__.py": "", "kernels/flash/op.py": "from kernels import ops\n"}
    assert graph.report(_tree(tmp_path, files)) == []
    files["kernels/ops.py"] = "from kernels.flash import op\n"
    problems = graph.report(_tree(tmp_path, files))
    assert [p.split(":")[0] for p in problems] == ["package cycle"]


@pytest.mark.parametrize("harness", ["tests/test_x.py", "launch/job.py", "scripts/tool.py"])
def test_harnesses_may_import_anything_but_are_not_imported(tmp_path, harness):
    root = _tree(tmp_path, {**BASE, harness: "import eval.runner\nimport kernels.ops\n"})
    assert graph.report(root) == []
    if not harness.startswith("tests"):
        name = harness[:-3].replace("/", ".")
        root = _tree(tmp_path, {**BASE, harness: "", "train/cli.py": f"import {name}\n"})
        assert [p.split(":")[0] for p in graph.report(root)] == ["train/cli.py"]
