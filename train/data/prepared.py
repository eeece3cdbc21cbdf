"""On-disk format of prepared (packed) data and its reader.

A prepared directory holds:
- ``tokens.bin``: the rows' tokens back to back, padding left out (uint16 or uint32);
- ``row_offsets.npy`` (int64, rows + 1): where each row starts in ``tokens.bin``;
- ``seg_offsets.npy`` (int64, rows + 1), ``seg_lens.npy`` (int32), ``seg_sources.npy``
  (int16): the segments (document pieces) of each row and the source each came from;
- ``stats.json``, ``bad_records.txt`` (when any were skipped) and ``meta.json``, written
  last: a directory without it is incomplete.
"""

from __future__ import annotations

import json
import os
from array import array
from dataclasses import dataclass, field

import numpy as np

from train.data.errors import DataError
from train.data.packing import Segment

FORMAT_VERSION = 1
IGNORE_INDEX = -100
_FILES = ("tokens.bin", "row_offsets.npy", "seg_offsets.npy", "seg_lens.npy", "seg_sources.npy")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


class PackedWriter:
    def __init__(self, out_dir: str, seq_len: int, dtype: np.dtype, eos_id: int, stores):
        self.out_dir, self.seq_len, self.dtype, self.eos, self.stores = (
            out_dir,
            seq_len,
            dtype,
            eos_id,
            stores,
        )
        self._fh = open(os.path.join(out_dir, "tokens.bin"), "wb", buffering=8 << 20)
        self._buf = np.empty(seq_len, dtype=dtype)
        self.row_offsets = array("q", [0])
        self.seg_offsets = array("q", [0])
        self.seg_lens = array("i")
        self.seg_sources = array("h")

    def write(self, row: list[Segment]) -> None:
        buf, pos = self._buf, 0
        for src, doc, start, length in row:
            toks = self.stores[src].tokens(doc)
            end, n = start + length, len(toks)
            body = min(end, n)
            if body > start:
                buf[pos : pos + body - start] = toks[start:body]
            if end > n:  # the segment ends with the document's EOS
                buf[pos + length - 1] = self.eos
            pos += length
            self.seg_lens.append(length)
            self.seg_sources.append(src)
        self._fh.write(buf[:pos].tobytes())
        self.row_offsets.append(self.row_offsets[-1] + pos)
        self.seg_offsets.append(len(self.seg_lens))

    def close(self) -> None:
        self._fh.close()
        for name, arr, dt in (
            ("row_offsets", self.row_offsets, np.int64),
            ("seg_offsets", self.seg_offsets, np.int64),
            ("seg_lens", self.seg_lens, np.int32),
            ("seg_sources", self.seg_sources, np.int16),
        ):
            np.save(os.path.join(self.out_dir, f"{name}.npy"), np.frombuffer(arr, dtype=dt))


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


@dataclass
class PreparedData:
    """Packed rows of a prepared directory (memory-mapped).

    ``example(i)`` gives one row as the model sees it: ``input_ids`` padded to ``seq_len``,
    ``position_ids`` restarting at 0 at every segment (padding is one more segment), and
    ``labels`` equal to ``input_ids`` except ``-100`` on padding and on the first token of
    every segment, so no token is predicted from another document.
    """

    path: str
    meta: dict
    stats: dict
    validation_sequences: int = 0
    _arrays: dict = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: str | os.PathLike, validation_sequences: int | None = None) -> PreparedData:
        path = os.fspath(path)
        meta_path = os.path.join(path, "meta.json")
        if not os.path.exists(meta_path):
            raise DataError(f"{path}: not prepared data (no meta.json); run `make data` first")
        try:
            with open(meta_path) as fh:
                meta = json.load(fh)
            with open(os.path.join(path, "stats.json")) as fh:
                stats = json.load(fh)
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(f"{path}: unreadable prepared data ({err})") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{path}: prepared data format {meta.get('format_version')}, "
                f"this code reads {FORMAT_VERSION}; prepare it again"
            )
        for f in _FILES:
            if not os.path.exists(os.path.join(path, f)):
                raise DataError(f"{path}: incomplete prepared data (missing {f})")
        val = (
            meta.get("validation_sequences", 0)
            if validation_sequences is None
            else validation_sequences
        )
        out = cls(path, meta, stats, val)
        out._open()
        return out

    def _open(self) -> None:
        p = self.path
        n_tokens = self.meta["num_tokens"]
        dt = np.dtype(self.meta["token_dtype"])
        a = self._arrays
        a["tokens"] = (
            np.memmap(os.path.join(p, "tokens.bin"), dtype=dt, mode="r")
            if n_tokens
            else np.zeros(0, dtype=dt)
        )
        for name in ("row_offsets", "seg_offsets", "seg_lens", "seg_sources"):
            a[name] = np.load(os.path.join(p, f"{name}.npy"), mmap_mode="r")
        if len(a["tokens"]) != n_tokens or len(a["row_offsets"]) != self.num_sequences + 1:
            raise DataError(f"{p}: corrupt prepared data (sizes do not match meta.json)")
        if self.validation_sequences >= self.num_sequences:
            raise DataError(
                f"data.validation_sequences: {self.validation_sequences} is not less than the "
                f"{self.num_sequences} prepared sequences"
            )

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_arrays"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._arrays = {}
        self._open()

    @property
    def seq_len(self) -> int:
        return int(self.meta["seq_len"])

    @property
    def num_sequences(self) -> int:
        return int(self.meta["num_sequences"])

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def pad_token_id(self) -> int:
        return int(self.meta["pad_token_id"])

    @property
    def eos_token_id(self) -> int:
        return int(self.meta["eos_token_id"])

    @property
    def source_names(self) -> list[str]:
        return list(self.meta["sources"])

    def __len__(self) -> int:
        return self.num_sequences

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> (tokens without padding, segment lengths, segment source ids) of row ``i``."""
        a = self._arrays
        t0, t1 = a["row_offsets"][i], a["row_offsets"][i + 1]
        s0, s1 = a["seg_offsets"][i], a["seg_offsets"][i + 1]
        return a["tokens"][t0:t1], a["seg_lens"][s0:s1], a["seg_sources"][s0:s1]

    def example(self, i: int) -> dict[str, np.ndarray]:
        tokens, seg_lens, _ = self.row(i)
        n, used = self.seq_len, len(tokens)
        input_ids = np.full(n, self.pad_token_id, dtype=np.int64)
        input_ids[:used] = tokens
        starts = np.zeros(len(seg_lens) + 1, dtype=np.int64)
        np.cumsum(seg_lens, out=starts[1:])
        # Padding is its own segment so that positions restart there as well.
        seg_of = np.repeat(np.arange(len(seg_lens)), seg_lens)
        position_ids = np.arange(n, dtype=np.int64)
        position_ids[:used] -= starts[seg_of]
        position_ids[used:] -= used
        labels = input_ids.copy()
        labels[starts[:-1]] = IGNORE_INDEX
        labels[used:] = IGNORE_INDEX
        return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}

    def split_indices(self, split: str = "train") -> np.ndarray:
        """Rows of ``train`` or ``validation``: a seeded choice of ``validation_sequences``."""
        n, k = self.num_sequences, self.validation_sequences
        if split not in ("train", "validation"):
            raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
        if k == 0:
            if split == "validation":
                raise DataError("data.validation_sequences is 0: there is no validation split")
            return np.arange(n, dtype=np.int64)
        val = np.sort(np.random.default_rng([int(self.meta["seed"]), 0x76616C]).permutation(n)[:k])
        if split == "validation":
            return val
        mask = np.ones(n, dtype=bool)
        mask[val] = False
        return np.flatnonzero(mask)
