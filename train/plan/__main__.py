"""`python -m train.plan`: will a training config fit on N GPUs of M GiB? (train/plan/cli.py)"""

import sys

from train.plan.cli import main

sys.exit(main())
