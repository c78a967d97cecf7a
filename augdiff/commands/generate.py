"""``augdiff generate``: run a generation method into a synthetic store.

Dispatches on ``config.method`` through :data:`augdiff.methods.registry.METHODS` to a module
exposing ``generate(config) -> dict``:

- ``sd``: plain Stable Diffusion text2img / img2img (:mod:`augdiff.sd.generate`)
- ``diffusemix``: :mod:`augdiff.methods.diffusemix`
- ``augcond``: :mod:`augdiff.methods.augcond`
- ``diffinv``: :mod:`augdiff.methods.diffinv` (stage 1 in :mod:`augdiff.methods.inversion`)
"""

from __future__ import annotations

import json
import sys
from typing import Any

from augdiff.config import ConfigError
from augdiff.files import locked, workdir_of
from augdiff.methods.registry import get_method


@locked(workdir_of)
def main(config: Any) -> int:
    try:
        module = get_method(config.get("method", None))
    except ConfigError as e:
        print(f"augdiff generate: {e}", file=sys.stderr)
        return 2
    summary = module.generate(config)
    print(json.dumps(summary, indent=2, default=str))
    return 0
