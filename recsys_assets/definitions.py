"""The code location: the graph for the config that `$RECSYS_CONFIG` names, its steps run by
the executor `$RECSYS_EXECUTOR` names (`recsys_assets/executors.py`)."""

from recsys_assets.config import load_config
from recsys_assets.executors import run_executor
from recsys_assets.graph import build_definitions

defs = build_definitions(load_config(), executor=run_executor())
