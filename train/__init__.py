"""Training for L2A: a Hydra app (`python -m train`) driving a DeepSpeed ZeRO trainer.

Entry points: `python -m train` (training), `python -m train.export` (HF export of any
checkpoint), `python -m train.tiny_base` (the tiny random-weight base), `train.data`
(the data pipeline). Nothing heavy is imported here.
"""
