"""recsys-assets: the offline factory of a recommender stack, as a Dagster asset graph.

`defs` (what `dagster ... -m recsys_assets` loads) is built on first access from the config
that `$RECSYS_CONFIG` names, so importing the package for its pure functions or its CLI
never reads a config.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "defs":
        from recsys_assets.definitions import defs

        return defs
    raise AttributeError(f"module 'recsys_assets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return ["__version__", "defs"]
