"""A document of the synthetic tasks, as the data pipeline stores it (a module of its own:
both task families make them, `train.data.synthetic` and `train.data.eval_format`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class SyntheticSample:
    task: str
    prompt: str
    answer: str
    answers: list[str]
    length: int  # tokens of prompt + answer
    seed: int = 0
    index: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.prompt + self.answer

    def to_dict(self) -> dict:
        d = asdict(self)
        d["text"] = self.text
        return d
