"""Tokenizers: the offline byte-level one, loading by path, and fast batch encoding."""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import os

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from l2a.errors import first_line
from train.data.config import BYTE_TOKENIZER_NAME
from train.data.errors import ConfigError, DataError

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable-character map, which ByteLevel pre-tokenization uses.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def build_byte_tokenizer(save_dir: str | os.PathLike | None = None) -> PreTrainedTokenizerFast:
    """An offline byte-level tokenizer: token id ``b`` is byte ``b`` (0..255), then
    ``<|endoftext|>`` (256, eos) and ``<|pad|>`` (257). Deterministic, nothing to train.

    If ``save_dir`` is given the tokenizer is saved there, so that
    ``AutoTokenizer.from_pretrained(save_dir)`` reloads it.
    """
    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(
        [
            AddedToken(EOS_TOKEN, special=True, normalized=False),
            AddedToken(PAD_TOKEN, special=True, normalized=False),
        ]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=1 << 30,
        clean_up_tokenization_spaces=False,
    )
    if save_dir is not None:
        tok.save_pretrained(str(save_dir))
    return tok


@functools.lru_cache(maxsize=1)
def _byte_backend_json() -> str:
    return build_byte_tokenizer().backend_tokenizer.to_str()


def is_byte_tokenizer(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when ``tokenizer`` encodes exactly like ``build_byte_tokenizer()``."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return (
        backend is not None and len(tokenizer) == 258 and backend.to_str() == _byte_backend_json()
    )


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """``"byte"`` -> the byte-level tokenizer; anything else -> ``AutoTokenizer``."""
    if name_or_path == BYTE_TOKENIZER_NAME:
        return build_byte_tokenizer()
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise DataError(
            f"data.tokenizer: cannot load tokenizer {name_or_path!r} ({first_line(err)})"
        ) from None


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash that changes whenever the tokenizer would encode differently."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        body = backend.to_str()
    else:
        from datasets.fingerprint import Hasher

        body = Hasher.hash(tokenizer)
    extra = json.dumps(
        [type(tokenizer).__name__, tokenizer.eos_token_id, tokenizer.pad_token_id, len(tokenizer)]
    )
    return hashlib.sha256((body + extra).encode()).hexdigest()[:16]


def check_same_tokenizer(spec: str | None, model_tokenizer: PreTrainedTokenizerBase) -> None:
    """`data.tokenizer`, where set, must encode as the model's tokenizer does: the trainer
    tokenizes with the model's, so another one would be silently ignored in training while
    `python -m train.data.prepare` used it (and prepared data the run never reads)."""
    if spec is None:
        return
    if tokenizer_fingerprint(load_tokenizer(spec)) != tokenizer_fingerprint(model_tokenizer):
        raise ConfigError(
            f"data.tokenizer: {spec!r} encodes differently from the model's tokenizer (the one "
            f"training uses); set data.tokenizer=null")


def special_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """(eos_id, pad_id); pad falls back to eos (padding is masked out of the loss anyway)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError(
            f"data.tokenizer: {getattr(tokenizer, 'name_or_path', 'tokenizer')} has no eos token; "
            "documents need one between them"
        )
    pad = tokenizer.pad_token_id
    return int(eos), int(eos if pad is None else pad)


class TextEncoder:
    """Encodes batches of texts to flat int32 ids + lengths, without special tokens.

    Text that spells a special token (``<|endoftext|>``) is encoded as plain text unless
    ``parse_special_tokens``: raw corpora must not be able to inject control tokens.
    The byte tokenizer takes a pure-numpy path with identical output.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, parse_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.parse_special_tokens = parse_special_tokens
        self.byte_level = is_byte_tokenizer(tokenizer) and not parse_special_tokens
        self._backend = None
        if not self.byte_level and getattr(tokenizer, "backend_tokenizer", None) is not None:
            self._backend = copy.deepcopy(tokenizer.backend_tokenizer)
            self._backend.encode_special_tokens = not parse_special_tokens
            self._backend.no_truncation()
            self._backend.no_padding()

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """-> (values int32 (sum of lengths,), lengths int64 (len(texts),))."""
        if self.byte_level:
            raw = [t.encode("utf-8") for t in texts]
            lengths = np.fromiter((len(r) for r in raw), dtype=np.int64, count=len(raw))
            values = np.frombuffer(b"".join(raw), dtype=np.uint8).astype(np.int32)
            return values, lengths
        if self._backend is not None:
            ids = [e.ids for e in self._backend.encode_batch_fast(texts, add_special_tokens=False)]
        else:
            ids = self.tokenizer(
                texts, add_special_tokens=False, split_special_tokens=not self.parse_special_tokens
            )["input_ids"]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        values = np.fromiter(
            itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum())
        )
        return values, lengths

    def count(self, texts: list[str]) -> np.ndarray:
        return self.encode(texts)[1]

    def __getstate__(self):
        # Rust tokenizers pickle fine; rebuild the copy so flags survive worker processes.
        return {"tokenizer": self.tokenizer, "parse_special_tokens": self.parse_special_tokens}

    def __setstate__(self, state):
        self.__init__(state["tokenizer"], state["parse_special_tokens"])
