"""Shared test set-up: one torch thread (two collapse under a competing process)."""

import os

import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
torch.set_num_threads(1)
