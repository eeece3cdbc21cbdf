"""Line-exact readers for local jsonl and text files.

``datasets``' own json/text builders skip blank lines and report parse errors without a
line number, so these readers parse every line themselves: each record carries its file
and line, and a bad record becomes a row with a non-empty ``_error`` instead of vanishing.
Files are cut into byte ranges at line starts so that ``num_proc`` workers share one file.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator

from train.data.config import LOCAL_SUFFIXES
from train.data.errors import DataError

SHARD_BYTES = 64 << 20  # upper bound of a shard; smaller so that num_proc workers share a file
MIN_SHARD_BYTES = 1 << 12

RECORD_FEATURES = {"text": "string", "_error": "string", "_file": "int32", "_line": "int64"}


def resolve_files(path: str, kind: str, where: str) -> list[str]:
    """Files of a local source: a file, a glob, or a directory (its files of ``kind``)."""
    if any(ch in path for ch in "*?["):
        files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
        if not files:
            raise DataError(f"{path}: no files match ({where})")
        return files
    if os.path.isdir(path):
        suffixes = tuple(s for s, k in LOCAL_SUFFIXES.items() if k == kind)
        files = sorted(
            os.path.join(root, f)
            for root, _, names in os.walk(path)
            for f in names
            if f.endswith(suffixes)
        )
        if not files:
            raise DataError(f"{path}: no {kind} files in this directory ({where})")
        return files
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file ({where})")
    return [path]


def file_signature(files: list[str]) -> list[tuple[str, int, int]]:
    """What invalidates caches when a file changes: absolute path, size, mtime."""
    out = []
    for f in files:
        st = os.stat(f)
        out.append((os.path.abspath(f), st.st_size, st.st_mtime_ns))
    return out


def plan_shards(
    files: list[str], split_files: bool, num_proc: int = 1
) -> list[tuple[int, int, int, int]]:
    """(file index, start byte, end byte, line number of the first line) per shard."""
    total = sum(os.path.getsize(f) for f in files)
    shard_bytes = max(MIN_SHARD_BYTES, min(SHARD_BYTES, -(-total // max(1, num_proc))))
    shards = []
    for fi, f in enumerate(files):
        size = os.path.getsize(f)
        if not split_files or size <= shard_bytes:
            shards.append((fi, 0, size, 1))
            continue
        with open(f, "rb") as fh:
            start, line = 0, 1
            while start < size:
                fh.seek(min(start + shard_bytes, size))
                fh.readline()  # move to the next line start
                end = min(fh.tell(), size)
                shards.append((fi, start, end, line))
                fh.seek(start)
                line += fh.read(end - start).count(b"\n")
                start = end
    return shards


def _get_field(obj: dict, field: str):
    value = obj
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


_MISSING = object()
_JSON_TYPES = {
    type(None): "null",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    list: "a list",
    dict: "an object",
}


def _check_text(value, field: str) -> str | None:
    """The problem with a text value, or None."""
    if value is _MISSING:
        return f"missing field '{field}'"
    if not isinstance(value, str):
        return f"field '{field}' is {_JSON_TYPES.get(type(value), type(value).__name__)}, expected a string"
    if not value:
        return f"empty field '{field}'"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"invalid Unicode in field '{field}' ({err.reason} at character {err.start})"
    return None


def _row(text: str, error: str, fi: int, line: int) -> dict:
    return {"text": text, "_error": error, "_file": fi, "_line": line}


def read_jsonl(files: list[str], shards, text_field: str) -> Iterator[dict]:
    for fi, start, end, line in shards:
        with open(files[fi], "rb") as fh:
            fh.seek(start)
            pos = start
            while pos < end:
                raw = fh.readline()
                if not raw:
                    break
                pos += len(raw)
                body = raw.rstrip(b"\r\n")
                error, text = "", ""
                if not body.strip():
                    error = "empty line"
                else:
                    try:
                        decoded = body.decode("utf-8")
                    except UnicodeDecodeError as err:
                        error = f"non-UTF-8 bytes (byte {err.start + 1} of the line)"
                    else:
                        try:
                            obj = json.loads(decoded)
                        except json.JSONDecodeError as err:
                            error = f"corrupt JSON ({err.msg} at column {err.colno})"
                        else:
                            if not isinstance(obj, dict):
                                error = (
                                    f"not a JSON object ({_JSON_TYPES.get(type(obj), 'a string')})"
                                )
                            else:
                                value = _get_field(obj, text_field)
                                error = _check_text(value, text_field) or ""
                                text = value if not error else ""
                yield _row(text, error, fi, line)
                line += 1


def _decode(data: bytes) -> tuple[str, int, str]:
    """(text, 0-based byte offset of the first bad byte or -1, reason)."""
    try:
        return data.decode("utf-8"), -1, ""
    except UnicodeDecodeError as err:
        return "", err.start, "non-UTF-8 bytes"


def read_text(files: list[str], shards, sample_by: str) -> Iterator[dict]:
    for fi, start, end, line in shards:
        with open(files[fi], "rb") as fh:
            fh.seek(start)
            data = fh.read(end - start)
        if sample_by == "document":
            text, bad, reason = _decode(data)
            if bad >= 0:
                at = line + data.count(b"\n", 0, bad)
                yield _row("", f"{reason} (document starting at line {line})", fi, at)
            elif not text.strip():
                yield _row("", "empty document", fi, line)
            else:
                yield _row(text, "", fi, line)
            continue
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        if sample_by == "line":
            for i, raw in enumerate(lines):
                text, bad, reason = _decode(raw.rstrip(b"\r"))
                if bad >= 0:
                    yield _row("", f"{reason} (byte {bad + 1} of the line)", fi, line + i)
                elif text.strip():
                    yield _row(text, "", fi, line + i)
                # Blank lines separate records in line mode; they are not records.
            continue
        # paragraph: blank-line separated blocks, each starting at its first line.
        block: list[bytes] = []
        block_line = line
        for i, raw in enumerate([*lines, b""]):
            if raw.strip():
                if not block:
                    block_line = line + i
                block.append(raw.rstrip(b"\r"))
                continue
            if block:
                joined = b"\n".join(block)
                text, bad, reason = _decode(joined)
                if bad >= 0:
                    at = block_line + joined.count(b"\n", 0, bad)
                    yield _row("", reason, fi, at)
                else:
                    yield _row(text, "", fi, block_line)
                block = []
