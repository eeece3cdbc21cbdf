"""Tiny models and an oracle stand-in for the evaluation tests (nothing downloaded)."""

from __future__ import annotations

import importlib.util
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

import l2a  # noqa: F401

# tests/l2a/conftest.py's tiny Qwen2/Qwen3 bases (a module of the same name: load by path).
_spec = importlib.util.spec_from_file_location(
    "l2a_test_bases", Path(__file__).resolve().parent.parent / "l2a" / "conftest.py")
_bases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bases)
tiny_base = _bases.tiny_base


def tiny_l2a(family: str = "qwen3", window: int = 32, seed: int = 0):
    from l2a.convert import convert_model

    base = tiny_base(family, seed=seed, max_position_embeddings=2048)
    model = convert_model(base, init="paper", window=window)
    model.config.use_cache = True
    return model.eval()


class Oracle(nn.Module):
    """A stand-in model whose `generate` reads the answer out of the prompt as a perfect
    long-context model would: the values of the needles whose key is asked, the chain of
    variables holding the asked value, or the ten most frequent words of the list, always of
    the last task in the prompt (the one asked; a worked example may come before it).
    `wrong=True` answers with another needle, nothing, or the worked example's answer: a
    model that does not retrieve, or that copies the example."""

    def __init__(self, tokenizer, wrong: bool = False, context: int = 4096):
        super().__init__()
        self.tokenizer, self.wrong = tokenizer, wrong
        self.dummy = nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(model_type="oracle", max_position_embeddings=context)

    def answer(self, prompt: str) -> str:
        m = re.search(r"magic numbers? for (.+?) mentioned in the provided text\?", prompt)
        if m:
            keys = re.split(r", and |, ", m.group(1))
            found = re.findall(r"magic numbers for (\S+) is: (\d+)\.", prompt)
            if self.wrong:
                return " ".join(v for k, v in found if k not in keys)
            return ", ".join(v for key in keys for k, v in found if k == key)
        if "Memorize and track" in prompt:
            task = prompt[prompt.rindex("Memorize and track"):]
            value = re.search(r"assigned the value (\d+) in the text above", task).group(1)
            held, names = {value}, []
            for name, src in re.findall(r"VAR (\w+) = (?:VAR )?(\w+)\.", task):
                if src in held:
                    held.add(name)
                    names.append(name)
            return "" if self.wrong else " ".join(names)
        if "Below is a numbered list" in prompt:
            if self.wrong:  # the example's answer: the numbered words after the first question
                return prompt.split("appear most often in the list are:", 1)[1].split("\n")[0]
            task = prompt[prompt.rindex("Below is a numbered list"):]
            words = re.findall(r"\d+\. (\w+)", task.split("\nQuestion:")[0])
            top = [w for w, _ in Counter(words).most_common(10)]
            return " ".join(f"{i + 1}. {w}" for i, w in enumerate(top))
        return ""

    def generate(self, input_ids, max_new_tokens: int = 16, **kwargs):
        prompt = self.tokenizer.decode(input_ids[0])
        ids = self.tokenizer(" " + self.answer(prompt), add_special_tokens=False,
                             return_tensors="pt").input_ids
        return torch.cat([input_ids, ids.to(input_ids.device)], dim=1)
