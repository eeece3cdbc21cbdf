"""The attention core of a branch under DeepSpeed-Ulysses: q/k/v all-to-all from sequence
slices to head groups, the unchanged kernel on whole sequences, the output back."""

from __future__ import annotations

import torch

from train.parallel.comm import gather_sequence


class UlyssesCore:
    """Replaces one branch's attention core: gathers the route over the SP group and runs
    the original core on whole sequences for H/N heads through DeepSpeed's
    `UlyssesSPAttentionHF`. Not an nn.Module: the model's parameters and state dict are
    unchanged."""

    def __init__(self, inner, ulysses, group):
        self.inner = inner
        self.ulysses = ulysses
        self.group = group

    def __call__(self, q, k, v, route, window, doc_ids, scale, backend):
        bsz, heads, local, dim = q.shape
        if route is not None:
            route = gather_sequence(route.to(torch.uint8), self.group).bool()

        def core(_module, qf, kf, vf, _mask, *args, **kwargs):
            # After the all-to-all: (B, H/N, T, D); DeepSpeed gathered the `position_ids`
            # we passed, i.e. the whole row's document ids.
            o = self.inner(qf, kf, vf, route, window, kwargs["position_ids"], scale, backend)
            return o.transpose(1, 2), None  # (B, T, H/N, D), as DeepSpeed expects

        self.ulysses.attn = core
        # DeepSpeed all-gathers `position_ids` (it needs the whole row's); we hand it our
        # slice of the whole row's document ids instead, which is what the kernels need.
        out, _ = self.ulysses(NO_EVAL_MODULE, q, k, v, None, position_ids=doc_ids.contiguous())
        return out.view(bsz, local, heads, dim).transpose(1, 2)


class _NoEvalModule:
    training = True  # UlyssesSPAttentionHF only reads `module.training` (disable_in_eval)


NO_EVAL_MODULE = _NoEvalModule()
