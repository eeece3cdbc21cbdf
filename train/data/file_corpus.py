"""``type: files`` sources: a directory tree of text files, one document per file.

For corpora that exist on any machine without a download: the Python standard library
(``path: python:stdlib``), installed packages (``python:purelib``), ``/usr/share/doc``.
What a source selects depends only on the files under its root, never on the order the
file system lists them in:

1. every regular file under the root (symlinked directories are not followed), as a path
   relative to the root with ``/`` separators, sorted;
2. kept if it matches an ``include`` pattern and no ``exclude`` pattern (fnmatch; ``*``
   also matches ``/``), is at most ``max_file_bytes`` long and is not whitespace only;
3. ``dedup``: among files with the same content (sha256, after ``.gz`` decompression)
   only the first in sorted order stays;
4. split by file: a file is held out for validation when the first 8 bytes of
   sha256(relative path), as a fraction of 2**64, are below ``holdout``; the same file is
   on the same side on every machine and whatever else the tree holds.

``manifest`` summarises a selection (counts, bytes, and a digest of the sorted
(path, content hash) pairs) so that two machines can check they read the same corpus.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import os
import sysconfig
from collections import Counter
from dataclasses import dataclass, field

from train.data.errors import DataError

PYTHON_PREFIX = "python:"


def resolve_root(path: str, where: str) -> str:
    """``python:<name>`` -> that ``sysconfig`` path of the running interpreter (stdlib,
    purelib, platlib, ...); anything else is a directory."""
    if path.startswith(PYTHON_PREFIX):
        key = path[len(PYTHON_PREFIX):]
        paths = sysconfig.get_paths()
        if key not in paths:
            raise DataError(f"{path}: unknown sysconfig path (known: {', '.join(sorted(paths))}) ({where})")
        path = paths[key]
    if not os.path.isdir(path):
        raise DataError(f"{path}: not a directory ({where})")
    return os.path.realpath(path)


def read_file_text(path: str) -> bytes:
    with open(path, "rb") as fh:
        data = fh.read()
    if path.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise DataError(f"{path}: not a readable gzip file ({err})") from None
    return data


def holdout_bucket(rel: str) -> float:
    """Where a relative path falls in [0, 1): the validation side is ``< holdout``."""
    return int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "big") / 2.0**64


def _matches(rel: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(rel, p) for p in patterns)


@dataclass
class Selection:
    """The files of one source, in order, plus what was left out and why."""

    root: str
    files: list[str] = field(default_factory=list)  # absolute paths
    rels: list[str] = field(default_factory=list)  # relative to root
    hashes: list[str] = field(default_factory=list)  # sha256 of the (decompressed) content
    sizes: list[int] = field(default_factory=list)  # bytes of text
    skipped: Counter = field(default_factory=Counter)

    def manifest(self) -> dict:
        digest = hashlib.sha256()
        for rel, h in zip(self.rels, self.hashes):
            digest.update(f"{rel}\0{h}\n".encode())
        return {
            "root": self.root,
            "files": len(self.files),
            "bytes": int(sum(self.sizes)),
            "skipped": dict(self.skipped),
            "digest": digest.hexdigest()[:16],
        }


def walk(root: str) -> list[str]:
    """Every regular file under ``root`` as a sorted list of ``/``-separated relative paths."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.isfile(full) and not os.path.islink(full):
                out.append(os.path.relpath(full, root).replace(os.sep, "/"))
    return sorted(out)


def select_files(path: str, files_cfg, split: str, where: str) -> Selection:
    """Apply the rules of the module docstring; ``split`` is train | validation | all."""
    root = resolve_root(path, where)
    sel = Selection(root=root)
    seen: set[str] = set()
    for rel in walk(root):
        if not _matches(rel, files_cfg.include) or _matches(rel, files_cfg.exclude):
            continue
        full = os.path.join(root, rel)
        limit = files_cfg.max_file_bytes
        if limit is not None and os.path.getsize(full) > limit and not rel.endswith(".gz"):
            sel.skipped["too large"] += 1
            continue
        data = read_file_text(full)
        if limit is not None and len(data) > limit:
            sel.skipped["too large"] += 1
            continue
        if not data.strip():
            sel.skipped["empty"] += 1
            continue
        digest = hashlib.sha256(data).hexdigest()
        if files_cfg.dedup:
            if digest in seen:
                sel.skipped["duplicate"] += 1
                continue
            seen.add(digest)
        held_out = holdout_bucket(rel) < files_cfg.holdout
        if split != "all" and held_out != (split == "validation"):
            sel.skipped["other split"] += 1
            continue
        sel.files.append(full)
        sel.rels.append(rel)
        sel.hashes.append(digest)
        sel.sizes.append(len(data))
    if not sel.files:
        raise DataError(
            f"{path}: no files selected ({where}; include {files_cfg.include}, "
            f"split {split}, skipped {dict(sel.skipped) or 'none'})"
        )
    return sel


def read_documents(files: list[str], start: int, stop: int):
    """Records of files ``[start, stop)``: the text, or ``_error`` when not UTF-8."""
    for i in range(start, stop):
        data = read_file_text(files[i])
        try:
            text, error = data.decode("utf-8"), ""
        except UnicodeDecodeError as err:
            text, error = "", f"non-UTF-8 bytes (byte {err.start + 1} of the file)"
        yield {"text": text, "_error": error, "_file": i, "_line": 1}
