"""wandb online without credentials or without a reachable server: a one-line error before
any work when online was asked for explicitly, else a one-line warning and offline logging;
never a traceback after a long wait, never an empty run directory."""

from __future__ import annotations

import pytest
from train_helpers import compose_run, run_cli

from l2a.errors import ConfigError
from train.wandb_check import resolve_mode

CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, the connect is refused


@pytest.fixture
def no_wandb_env(monkeypatch, tmp_path):
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no `wandb login` either
    return monkeypatch


def test_explicit_online_without_credentials_is_an_error(no_wandb_env):
    with pytest.raises(ConfigError) as e:
        resolve_mode("online", 1.0)
    assert str(e.value).startswith("train.wandb.mode: online, but no wandb credentials")
    no_wandb_env.setenv("WANDB_MODE", "online")
    with pytest.raises(ConfigError, match=r"^WANDB_MODE: online, but no wandb credentials"):
        resolve_mode(None, 1.0)


def test_explicit_online_with_an_unreachable_server_is_an_error(no_wandb_env, tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login user password k" + "0" * 39 + "\n")
    netrc.chmod(0o600)
    no_wandb_env.setenv("NETRC", str(netrc))  # credentials from `wandb login`
    no_wandb_env.setenv("WANDB_BASE_URL", CLOSED)
    with pytest.raises(ConfigError, match=rf"^train.wandb.mode: online, but cannot reach {CLOSED}"):
        resolve_mode("online", 1.0)


def test_online_only_by_api_key_falls_back_to_offline(no_wandb_env):
    no_wandb_env.setenv("WANDB_API_KEY", "k" * 40)
    no_wandb_env.setenv("WANDB_BASE_URL", CLOSED)
    mode, warning = resolve_mode(None, 1.0)
    assert mode == "offline"
    assert warning.startswith(f"wandb: cannot reach {CLOSED} (") and "logging offline" in warning
    assert resolve_mode("offline", 1.0) == ("offline", None)
    assert resolve_mode("disabled", 1.0) == ("disabled", None)


def test_cli_explicit_online_fails_before_any_work(base_overrides, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli([*base_overrides, "train.wandb.mode=online", "train.wandb.init_timeout=2"],
                   run_dir, env={"NETRC": str(tmp_path / "none"), "WANDB_API_KEY": "",
                                 "HOME": str(tmp_path)})
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith(
        "error: train.wandb.mode: online, but no wandb credentials"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists()  # no empty run directory


def test_run_logs_offline_when_the_server_is_unreachable(no_wandb_env, base_overrides,
                                                         tmp_path, capsys):
    from train.trainer import run

    no_wandb_env.setenv("WANDB_API_KEY", "k" * 40)
    no_wandb_env.setenv("WANDB_BASE_URL", CLOSED)
    overrides = [o for o in base_overrides if not o.startswith("train.wandb.mode")]
    overrides += ["train.max_steps=2", "train.ckpt_every=0", "train.wandb.init_timeout=5"]
    run_dir = tmp_path / "run"
    assert run(compose_run(overrides), run_dir, overrides) == 0
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning: wandb")]
    assert len(warnings) == 1 and "logging offline" in warnings[0], err[-2000:]
    assert list((run_dir / "wandb").glob("offline-run-*")), list(run_dir.iterdir())
    assert (run_dir / "summary.json").exists()
