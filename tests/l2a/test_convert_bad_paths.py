"""`python -m l2a.convert` with paths and sizes a user gets wrong: one line, exit 2, nothing
written; and the files it writes follow the umask."""

from __future__ import annotations

import os
import stat

import pytest

import l2a  # noqa: F401
from l2a.convert import main

from test_convert import save_tokenizer  # noqa: E402  (tests/l2a helper)


@pytest.fixture
def base_dir(base_model, tmp_path):
    path = tmp_path / "base"
    base_model.save_pretrained(path)  # conftest: max_position_embeddings=1024
    save_tokenizer(path)  # conversion refuses a base without one
    return path


def _one_error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    return err[0]


def test_base_directory_that_does_not_exist(tmp_path, capsys):
    """Named as a missing directory, not as a malformed hub id."""
    missing = tmp_path / "models" / "qwen3-8b"
    assert main(["--base", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert _one_error_line(capsys) == f"l2a.convert: error: {missing}: no such directory"
    assert main(["--base", "./no-such-dir", "--out", str(tmp_path / "o")]) == 2
    assert "./no-such-dir: no such directory" in _one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_base_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    assert main(["--base", str(f), "--out", str(tmp_path / "o")]) == 2
    assert _one_error_line(capsys).endswith(f"{f}: not a directory")


def test_missing_base_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "o")])
    assert e.value.code == 2
    assert "the following arguments are required: --base" in capsys.readouterr().err


def test_output_path_that_is_a_file(base_dir, tmp_path, capsys):
    out = tmp_path / "model.bin"
    out.write_text("keep")
    for extra in ([], ["--overwrite"]):
        assert main(["--base", str(base_dir), "--out", str(out), *extra]) == 2
        assert _one_error_line(capsys) == (f"l2a.convert: error: {out}: exists and is not a "
                                           f"directory (choose another output path)")
        assert out.read_text() == "keep"


def test_window_larger_than_the_context(base_dir, tmp_path, capsys):
    assert main(["--base", str(base_dir), "--out", str(tmp_path / "o"), "--window", "1025"]) == 2
    assert _one_error_line(capsys) == ("l2a.convert: error: --window: must be at most the "
                                       "model's context (max_position_embeddings=1024), got 1025")
    assert not (tmp_path / "o").exists()
    # The context the conversion sets is the one that counts; the window may fill it.
    assert main(["--base", str(base_dir), "--out", str(tmp_path / "o"), "--window", "2048",
                 "--max-position-embeddings", "2048"]) == 0


@pytest.mark.parametrize("umask, dir_mode, file_mode", [(0o022, 0o755, 0o644),
                                                        (0o027, 0o750, 0o640)])
def test_output_follows_the_umask(base_dir, tmp_path, umask, dir_mode, file_mode):
    """Teammates on a shared cluster read what the umask lets them (the temporary
    directory the output is renamed from used to stay 0700)."""
    old = os.umask(umask)
    try:
        assert main(["--base", str(base_dir), "--out", str(tmp_path / "o")]) == 0
    finally:
        os.umask(old)
    out = tmp_path / "o"
    assert stat.S_IMODE(out.stat().st_mode) == dir_mode
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and {stat.S_IMODE(p.stat().st_mode) for p in files} == {file_mode}
