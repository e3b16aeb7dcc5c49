"""`genpercept train`: GenPercept's one-step fine-tuning recipe (paper §3-4) on your own data.

config (TOML + overrides) -> data (paired folders, mixed by ratio, flipped) -> engine (accelerate: the
recipe's losses, accumulation to the effective batch, warm-up + exponential lr, resume) -> export
(checkpoints in the released layout that `predict`, `eval` and `bench-speed` load unchanged).
Importing this package imports nothing heavy; the modules below import torch.
"""
