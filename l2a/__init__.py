"""L2A (Learning To Attend) layers for Qwen2 / Qwen3.

Importing this package registers the L2A configs and models with transformers' Auto
classes, so a converted or exported checkpoint loads with
``AutoModelForCausalLM.from_pretrained(path)`` after ``import l2a``.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache import L2ACache
from .configuration import L2AQwen2Config, L2AQwen3Config
from .losses import layer_sparsity, router_regulariser
from .modeling import (
    L2ACausalLMOutputWithPast,
    L2AModelOutputWithPast,
    L2AQwen2ForCausalLM,
    L2AQwen2Model,
    L2AQwen3ForCausalLM,
    L2AQwen3Model,
)
from .runtime import L2ARuntime, set_runtime
from .static_cache import L2AStaticCache
from .trainable import mark_trainable, trainable_parameter_names

for _config, _model, _lm in (
    (L2AQwen3Config, L2AQwen3Model, L2AQwen3ForCausalLM),
    (L2AQwen2Config, L2AQwen2Model, L2AQwen2ForCausalLM),
):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
    AutoModelForCausalLM.register(_config, _lm, exist_ok=True)

__all__ = [
    "L2ACache",
    "L2AStaticCache",
    "L2ACausalLMOutputWithPast",
    "L2AModelOutputWithPast",
    "L2AQwen2Config",
    "L2AQwen2ForCausalLM",
    "L2AQwen2Model",
    "L2AQwen3Config",
    "L2AQwen3ForCausalLM",
    "L2AQwen3Model",
    "L2ARuntime",
    "layer_sparsity",
    "mark_trainable",
    "router_regulariser",
    "set_runtime",
    "trainable_parameter_names",
]
