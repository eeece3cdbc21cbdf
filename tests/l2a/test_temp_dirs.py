"""Temporary directories of an atomic write (conversion, conversion cache, export, prune):
one whose writer was killed is removed by the next write to the same place; one a live
process is still writing (another node converting the same cache entry) is not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from l2a.convert import convert_model, save_atomically, temp_prefix
from l2a.files import held_temp_dir, remove_abandoned_temp_dirs

ROOT = Path(__file__).resolve().parents[2]
# Holds a temporary directory the way save_atomically does, writes into it, then waits.
WRITER = ("import sys, time\n"
          "from l2a.files import held_temp_dir\n"
          "with held_temp_dir(sys.argv[1], sys.argv[2]) as tmp:\n"
          "    (tmp / 'model.safetensors').write_bytes(b'half written')\n"
          "    print(tmp, flush=True)\n"
          "    time.sleep(600)\n")


def _writer(parent: Path, prefix: str) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(parent), prefix], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    return proc, Path(proc.stdout.readline().strip())


@pytest.fixture
def writers(tmp_path):
    """(killed writer's directory, live writer's directory, the live writer)."""
    out = tmp_path / "model"
    killed, killed_dir = _writer(tmp_path, temp_prefix(out))
    killed.kill()  # SIGKILL: nothing runs on its way out
    killed.wait()
    live, live_dir = _writer(tmp_path, temp_prefix(out))
    yield out, killed_dir, live_dir
    live.kill()
    live.wait()


def test_save_removes_a_killed_writers_directory_not_a_live_ones(writers, make_base):
    out, killed_dir, live_dir = writers
    assert killed_dir.is_dir() and live_dir.is_dir()
    assert killed_dir.name.startswith(temp_prefix(out)) and live_dir.name.startswith(temp_prefix(out))
    save_atomically(convert_model(make_base("qwen3"), window=4), None, out)
    assert (out / "config.json").is_file()
    assert not killed_dir.exists()
    assert (live_dir / "model.safetensors").read_bytes() == b"half written"
    # Only the live writer's directory is left beside the model.
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["model", live_dir.name])


def test_remove_abandoned_leaves_other_names_and_files(tmp_path):
    prefix = ".model.tmp-"
    with held_temp_dir(tmp_path, prefix) as mine:
        assert mine.name.startswith(prefix)
        (tmp_path / f"{prefix}abandoned").mkdir()  # no lock: its writer is gone
        (tmp_path / f"{prefix}a-file").write_text("x")  # not a directory
        (tmp_path / ".other.tmp-x").mkdir()  # another output's
        removed = remove_abandoned_temp_dirs(tmp_path, prefix)
        assert removed == [tmp_path / f"{prefix}abandoned"]
        assert mine.is_dir()  # held by this writer
    assert remove_abandoned_temp_dirs(tmp_path, prefix) == [mine]  # released: abandoned
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.tmp-a-file", ".other.tmp-x"]
