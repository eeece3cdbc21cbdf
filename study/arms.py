"""The study's extension arms: their order in tables and plots and their display names."""

ARM_ORDER = ["dense", "l2a", "l2a_s08", "l2a_s09"]
ARM_NAMES = {"dense": "dense", "l2a": "L2A paper", "l2a_s08": "L2A target 0.8",
             "l2a_s09": "L2A target 0.9"}
