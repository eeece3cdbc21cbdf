"""The decoder shape the memory model needs, from a run's `model` config: the random base's
numbers, or the HF config of `model.base` (a hub name or a local directory)."""

from __future__ import annotations

from train.plan.memory_model import SHAPES, Shape


class PlanError(ValueError):
    """A config the plan cannot read or does not model: one line naming the setting."""


def shape_from_hf(c, vocab_size: int | None = None) -> Shape:
    """A Qwen2 / Qwen3 config (transformers `PretrainedConfig` or a dict of its fields)."""
    get = c.get if isinstance(c, dict) else (lambda k, d=None: getattr(c, k, d))
    heads = get("num_attention_heads")
    hidden = get("hidden_size")
    model_type = str(get("model_type", "qwen3"))
    qwen2 = model_type.startswith("qwen2")
    vocab = get("vocab_size") or vocab_size
    if vocab is None:
        raise PlanError("model.random_base.vocab_size: needed to plan (the byte tokenizer's "
                        "size is known only once it is built); set it")
    return Shape(hidden=hidden, layers=get("num_hidden_layers"), heads=heads,
                 kv_heads=get("num_key_value_heads") or heads,
                 head_dim=get("head_dim") or hidden // heads,
                 intermediate=get("intermediate_size"), vocab=vocab,
                 tied=bool(get("tie_word_embeddings", False)),
                 qk_norm=not qwen2, qkv_bias=qwen2)


def shape_of(model_cfg, shape_name: str | None = None) -> Shape:
    """`shape_name`: one of memory_model.SHAPES instead of reading the config (offline)."""
    if shape_name is not None:
        if shape_name not in SHAPES:
            raise PlanError(f"--shape: one of {', '.join(sorted(SHAPES))}, got {shape_name!r}")
        return SHAPES[shape_name]
    if model_cfg.random_base is not None:
        return shape_from_hf(dict(model_cfg.random_base))
    from transformers import AutoConfig

    try:
        c = AutoConfig.from_pretrained(model_cfg.base).get_text_config()
    except Exception as e:  # offline, a typo: one line, not a traceback
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PlanError(f"model.base: cannot read the config of {model_cfg.base!r} ({first}); "
                        f"offline, pass --shape ({', '.join(sorted(SHAPES))})") from None
    return shape_from_hf(c)
