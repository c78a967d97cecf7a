"""``augdiff generate``: run a generation method into a synthetic store.

Dispatches on ``config.method`` to a module exposing ``generate(config) -> dict`` (imported
lazily, so one method never loads another's dependencies):

- ``sd``: plain Stable Diffusion text2img / img2img (:mod:`augdiff.sd.generate`)
- ``diffusemix``: :mod:`augdiff.methods.diffusemix`
- ``augcond``: :mod:`augdiff.methods.augcond`
- ``diffinv``: :mod:`augdiff.methods.inversion`
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

METHODS = {
    "sd": "augdiff.sd.generate",
    "diffusemix": "augdiff.methods.diffusemix",
    "augcond": "augdiff.methods.augcond",
    "diffinv": "augdiff.methods.inversion",
}


def main(config: Any) -> int:
    method = config.get("method", None)
    if method not in METHODS:
        print(
            f"augdiff generate: config.method must be one of {sorted(METHODS)}, got {method!r}",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(METHODS[method])
    summary = module.generate(config)
    print(json.dumps(summary, indent=2, default=str))
    return 0
