"""HF-style L2A models for Qwen2 / Qwen3: decoder stack and causal LM.

The router statistics (soft probabilities and hard decisions of every L2A layer) travel in
the model outputs, so the trainer computes the sparsity loss and metrics from what the
forward returned: the model keeps no per-step state of its own.

How a forward runs (attention backend, routed-only projections, compiled elementwise work)
is ``model.l2a_runtime`` (l2a/runtime.py), shared by the causal LM and its decoder stack and
never saved with the model.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache

from kernels.decode import DECODE_MAX_QUERIES
from kernels.utils import doc_ids_from_position_ids

from .cache import L2ACache
from .configuration import L2AQwen2Config, L2AQwen3Config
from .layers import QWEN2, QWEN3, AttentionContext, Family, L2AAttention, L2ADecoderLayer
from .outputs import L2ACausalLMOutputWithPast, L2AModelOutputWithPast  # noqa: F401  (public here)
from .runtime import L2ARuntime
from .static_cache import L2AStaticCache


class L2APreTrainedModel(PreTrainedModel):
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["L2ADecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    # Attention is chosen by ``l2a_runtime.attn_backend``, not by ``attn_implementation``.
    _supports_sdpa = True
    _supports_attention_backend = False
    family: Family

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, L2AAttention) and module.has_global:
            # p = 0.5 and d = 1 at step 0: every token starts on the global branch.
            init.zeros_(module.router.weight)


class _L2AModelBase(L2APreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [L2ADecoderLayer(config, i, self.family) for i in range(config.num_hidden_layers)]
        )
        self.norm = self.family.rmsnorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = self.family.rotary(config=config)
        self.gradient_checkpointing = False
        self.l2a_runtime = L2ARuntime()
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        l2a_dense: bool = False,
        doc_ids: torch.Tensor | None = None,
        cache_position: torch.Tensor | None = None,
        **kwargs,
    ) -> L2AModelOutputWithPast:
        """Decoder stack. Packed sequences: pass ``position_ids`` that restart at 0 for every
        document (or ``doc_ids`` directly); no attention crosses a document boundary.
        ``l2a_dense=True`` runs every global branch for all tokens (stochastic dense path).
        ``cache_position`` (static cache only, ``(T,)`` long): the cache indices of the new
        tokens, as a device tensor a captured decoding step reads (default: the next ones)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        bsz, seq = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if use_cache and past_key_values is None:
            past_key_values = L2ACache(self.config)
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        static = isinstance(past_key_values, L2AStaticCache)
        step = static and past_key_values.is_decoding_step(seq)
        if cache_position is not None and not step:
            raise ValueError("cache_position: only for decoding steps (one token per row) on an L2AStaticCache")
        if position_ids is None:
            if step and cache_position is not None:
                position_ids = cache_position[None, :].expand(bsz, -1)
            else:
                position_ids = torch.arange(past, past + seq, device=device).unsqueeze(0).expand(bsz, -1)
        run = self.l2a_runtime
        ctx = AttentionContext(
            backend=run.attn_backend,
            cache=past_key_values,
            routed_projections=run.routed_projections,
            row_capacity=run.routed_rows == "capacity",
            # With a cache: prefills only (a decoding step's few rows gain nothing from it).
            fused=run.fused_elementwise and (past_key_values is None or seq > DECODE_MAX_QUERIES),
        )
        if step:
            # Fixed shapes, device work only: CUDA graphs capture this (l2a/decode_graph.py).
            ctx.step = past_key_values.begin_step(bsz, device, attention_mask, cache_position).masks
        else:
            ctx.doc_ids = key_doc_ids(attention_mask, position_ids, doc_ids, past, seq)
            if static:
                ctx.doc_ids = past_key_values.begin_prefill(bsz, device, ctx.doc_ids, attention_mask, seq)

        hidden = inputs_embeds
        position_embeddings = self.rotary_emb(hidden, position_ids)
        probs, routes = [], []
        for layer in self.layers:
            hidden, p, d = layer(hidden, position_embeddings=position_embeddings, ctx=ctx, dense=l2a_dense)
            if p is not None:
                probs.append(p)
                routes.append(d)
        hidden = self.norm(hidden)
        if static:
            past_key_values.end(seq)
        return L2AModelOutputWithPast(
            last_hidden_state=hidden,
            past_key_values=past_key_values if use_cache else None,
            router_probs=tuple(probs),
            routes=tuple(routes),
        )


def key_doc_ids(attention_mask, position_ids, doc_ids, past: int, seq: int) -> torch.Tensor | None:
    """Document ids of every key position a layer sees in this call (``(B, past + seq)``).

    Padding (``attention_mask == 0``) is one more document, so the kernels' document masking
    keeps real tokens off it; a padded query sees only padding (its output is never used).
    Without a cache, packed documents (``doc_ids`` or position ids that restart) count as
    well, as in training. With a cache, documents are the attention mask's segments: a
    prompt's packed documents are not tracked across calls.
    """
    mask_docs = None
    if attention_mask is not None:
        if attention_mask.dim() != 2 or attention_mask.shape[1] != past + seq:
            raise ValueError(
                f"attention_mask: expected shape (batch, {past + seq}) = (batch, cached + new "
                f"tokens), got {tuple(attention_mask.shape)}"
            )
        if not bool(attention_mask.all()):
            mask_docs = segment_ids(attention_mask.bool())
    if past > 0:
        return mask_docs
    docs = doc_ids if doc_ids is not None else doc_ids_from_position_ids(position_ids)
    if mask_docs is None:
        return docs
    return segment_ids(docs.expand(mask_docs.shape[0], -1), mask_docs)


def segment_ids(*labels: torch.Tensor) -> torch.Tensor:
    """int32 ids of the runs of equal values along dim 1: a new run wherever any of the
    ``(B, T)`` label tensors changes."""
    change = torch.zeros_like(labels[0], dtype=torch.int32)
    for x in labels:
        change[:, 1:] |= (x[:, 1:] != x[:, :-1]).to(torch.int32)
    return torch.cumsum(change, dim=1, dtype=torch.int32)


class _L2AForCausalLMBase(L2APreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    model_class: type

    def __init__(self, config):
        super().__init__(config)
        self.model = self.model_class(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @property
    def l2a_runtime(self) -> L2ARuntime:
        """The decoder stack's runtime options (one object: setting it here sets it there)."""
        return self.model.l2a_runtime

    @l2a_runtime.setter
    def l2a_runtime(self, value: L2ARuntime) -> None:
        if not isinstance(value, L2ARuntime):
            raise TypeError(f"l2a_runtime: expected an l2a.runtime.L2ARuntime, got {type(value).__name__}")
        self.model.l2a_runtime = value

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def _prepare_cache_for_generation(
        self, generation_config, model_kwargs, generation_mode=None, batch_size=None, max_cache_length=None,
        *args, **kwargs,
    ):
        # The L2A caches: a window for the local branch, all keys for the global one.
        # None / "dynamic": the growing L2ACache (l2a/cache.py, any length); "static": the
        # preallocated L2AStaticCache (l2a/static_cache.py) of max_length (or the
        # generation config's max_cache_len, if larger) tokens, whose decoding steps are
        # CUDA-graph replays on a GPU (get_compiled_call). A cache passed by the caller (any
        # Cache, e.g. DynamicCache or an L2AStaticCache) is used as is.
        impl = generation_config.cache_implementation
        if model_kwargs.get("past_key_values") is None and generation_config.use_cache is not False:
            if impl in (None, "dynamic"):
                model_kwargs["past_key_values"] = L2ACache(self.config)
                return
            if impl == "static":
                length = max(max_cache_length or 0, generation_config.max_cache_len or 0)
                model_kwargs["past_key_values"] = L2AStaticCache(self.config, max_cache_len=length)
                return
            # transformers' other caches have one slot per decoder layer.
            raise ValueError(
                f"cache_implementation={impl!r}: L2A models generate with their own caches "
                "(leave it unset or 'dynamic' for the growing cache, 'static' for the "
                "preallocated one, or pass past_key_values)"
            )
        return super()._prepare_cache_for_generation(
            generation_config, model_kwargs, generation_mode, batch_size, max_cache_length, *args, **kwargs
        )

    def create_masks_for_generate(self, *args, attention_mask=None, **kwargs):
        """generate builds 4D masks for static caches; an L2A model takes the 2D mask (its
        document masking is in the kernels and the static cache)."""
        return attention_mask

    def get_compiled_call(self, compile_config=None):
        """generate's decoding call on a static cache: CUDA-graph replays of the decoding step
        (l2a/decode_graph.py) instead of transformers' torch.compile of the whole forward."""
        from .decode_graph import GraphedCall

        if getattr(self, "_graphed_call", None) is None:
            self._graphed_call = GraphedCall(self)
        return self._graphed_call

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        l2a_dense: bool = False,
        doc_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> L2ACausalLMOutputWithPast:
        """As a Qwen causal LM, plus ``l2a_dense`` / ``doc_ids`` (see the decoder stack) and
        ``router_probs`` / ``routes`` in the output. ``loss`` is the LM loss only: the router
        regulariser is the trainer's to weigh."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            l2a_dense=l2a_dense,
            doc_ids=doc_ids,
        )
        hidden = out.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return L2ACausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=out.past_key_values,
            router_probs=out.router_probs,
            routes=out.routes,
        )


class L2AQwen3PreTrainedModel(L2APreTrainedModel):
    config_class = L2AQwen3Config
    config: L2AQwen3Config
    family = QWEN3


class L2AQwen3Model(_L2AModelBase, L2AQwen3PreTrainedModel):
    pass


class L2AQwen3ForCausalLM(_L2AForCausalLMBase, L2AQwen3PreTrainedModel):
    model_class = L2AQwen3Model


class L2AQwen2PreTrainedModel(L2APreTrainedModel):
    config_class = L2AQwen2Config
    config: L2AQwen2Config
    family = QWEN2


class L2AQwen2Model(_L2AModelBase, L2AQwen2PreTrainedModel):
    pass


class L2AQwen2ForCausalLM(_L2AForCausalLMBase, L2AQwen2PreTrainedModel):
    model_class = L2AQwen2Model
