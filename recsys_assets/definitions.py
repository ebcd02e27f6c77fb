"""The code location: the graph for the config that `$RECSYS_CONFIG` names."""

from recsys_assets.config import load_config
from recsys_assets.graph import build_definitions

defs = build_definitions(load_config())
