"""The repository speaks of itself and of a user's machines only: no tracked file carries the
phrases of one particular remote development setup (its output-folder variable, its
transfer and file-count limits, its machine loans, its install helpers and script names).
A user's cluster has none of these, and a reader could not tell the method's facts from the
circumstances of a run. Each hit is reported as file:line."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (what it is, pattern); case-insensitive. Each is narrow enough that ordinary text about
# GPUs, files and functions ("the caller", "64 MiB per copy", "a pytest session", "the
# job's time limit") does not match: tests below check both sides.
SETUP_PHRASES = [
    ("the remote tool's output-folder variable", r"(?-i:[$]OUT\b|[$]\{OUT[:}])"),  # not $out
    ("the remote setup's FA4 install folders", r"\.fa4[ab]\b|fa4sit[e]|fa4_(wheels|device)\.sh"),
    ("the remote setup's shared folder", r"shared/devic[e]"),
    ("the remote setup's machine notes", r"\bKIND[S]\.md\b"),
    ("a transfer limit", r"\ba call carr[i]es\b|\b64 MiB (a|per|that a) call\b"),
    ("a result-file count limit", r"\bat most (eight|five|8|5) files\b|\b(eight|five) files\b"),
    ("a remote call's limits", r"\bthe call'?s (limit|start|output|time limit)\b|\bcall[ ]limit\b"),
    ("device-time accounting", r"\bdevice[ ]time\b|\bbudget[_]left\b"),
    ("machine loans", r"\bwith[h]eld\b|\b(was|were|machines?|kinds?) lent\b|\bmachine was availabl[e]\b"),
    ("wheels carried to the remote machine", r"\bcarr(y|ied|ying) \.whl\b|(^|[\s`'\"(])\.whl/"),
    ("the remote machine as 'the device'", r"\bdevice (machine|image|runs?)\b"),
    ("the old helper names of that setup",
     r"\b(device_wheels|fast_path_device|study_device)\.sh\b"),
]
PATTERNS = [(what, re.compile(p, re.IGNORECASE)) for what, p in SETUP_PHRASES]


def setup_phrases_in(text: str) -> list[tuple[int, str, str]]:
    """(line number, what, the matched text) of every setup phrase in `text`."""
    hits = []
    for n, line in enumerate(text.splitlines(), 1):
        for what, pattern in PATTERNS:
            m = pattern.search(line)
            if m:
                hits.append((n, what, m.group(0).strip()))
    return hits


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no tracked files to scan")
    return [p for p in out.decode().split("\0") if p]


def test_no_tracked_file_describes_the_remote_setup():
    hits = []
    for rel in tracked_files():
        path = ROOT / rel
        if not path.is_file():  # deleted in the working tree
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:  # binary (plots, archives)
            continue
        for n, what, found in setup_phrases_in(data.decode("utf-8", errors="replace")):
            hits.append(f"{rel}:{n}: {what}: {found!r}")
    assert not hits, "text about one remote setup, not a user's machine:\n" + "\n".join(hits)


# Each example is written in two pieces joined at run time: this file is scanned too, so
# it must not hold the phrases it looks for (its patterns break them with [x] classes).
@pytest.mark.parametrize("pieces", [
    ("Logs and JSON go to $", "OUT (default ./gpu_out)."),
    ("OUT=${", "OUT:-fast_out}"),
    ("installed by `.fa", "4a/fa4_dev", "ice.sh stage` into /tmp/fa4si", "te"),
    ("see ../shared/dev", "ice/fa4_whe", "els.sh"),
    ("798 TFLOP/s, KIN", "DS.md"),
    ("the 64 MiB a ca", "ll car", "ries"),
    ("an output folder of at most eig", "ht files"),
    ("Dense was stopped by the call", "'s limit"),
    ("no device ti", "me was left"),
    ("H100s were with", "held that day"),
    ("no 8-GPU machine was avail", "able"),
    ("from the repository root, carrying .w", "hl (scripts/device_whe", "els.sh)"),
    ("python3 -m pip install --target /tmp/site .w", "hl/*.whl"),
    ("the 600-step base (second device r", "un) had not learned to copy"),
])
def test_each_phrase_of_the_setup_is_caught(pieces):
    text = "".join(pieces)
    assert setup_phrases_in(text), text


@pytest.mark.parametrize("text", [
    "a score block of 2^24 fp32 elements, 64 MiB per copy",
    "the caller re-seeds this rank's streams; the calls pass use_cache=False",
    "a GPU test session of the fast path; tests that share a pytest session",
    "stopped by the job's time limit; before the time limit the job requeues itself",
    "torch.cumsum(r, dim=1, out=cum[:, 1:]); OUT_DIR = results; --out \"$out\"",
    "python -m pip install --no-index --find-links wheelhouse flash_attn_4-4.0.0b36-py3-none-any.whl",
    "the device's SM count; host-device synchronisation; fa4 backends",
    "documents are carried once into the next buffer",
])
def test_ordinary_text_is_not_caught(text):
    assert not setup_phrases_in(text), setup_phrases_in(text)
