"""`python -m study <step>`: the study's steps (study/steps.py)."""

import sys

from study.steps import main

sys.exit(main())
