"""Online synthetic rows inside classifier training: the generic parts the trainer needs.

``synthetic.online`` in a classifier config replaces (or joins) a synthetic store by a
generator sampled while the classifier trains (seed 000 §4.6, seed 003 §4.1). The generators
themselves (:class:`augdiff.methods.online.OnlineEDM`, :class:`augdiff.methods.online.OnlineEdit`)
live with the methods; this module holds what the loader and the trainer share with them:

- :func:`online_config` / :func:`online_rows`: whether a config asks for online rows and how
  many of each batch (``m = round(share · B)``; the loader then gives ``B − m`` real rows and
  the source's ``complete(batch, step)`` appends ``m`` synthetic rows on device).
- :class:`Spill` (``spill_every = N > 0``): every N-th synthetic row the classifier saw (global
  row ``s · m + j ≡ 0 mod N``) is written to a synthetic store with its seed, step, row, label
  and source fields, committed at every checkpoint, so ``augdiff inspect`` / ``export`` read it
  and a resumed run's store equals the uninterrupted run's.

Images are quantised to uint8 as a store would hold them
(:func:`augdiff.data.pixels.signed_to_uint8`), so online and offline rows take the same path
through the train step.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from augdiff import distributed
from augdiff.config import ConfigError
from augdiff.data.store import StoreWriter


def online_config(cfg: ml_collections.ConfigDict | None) -> ml_collections.ConfigDict | None:
    """``synthetic.online`` when it names a generator (``kind = 'edm'`` or ``'edit'``), else
    None."""
    syn = cfg.get("synthetic", None) if cfg is not None else None
    on = syn.get("online", None) if syn is not None else None
    if on is None or str(on.get("kind", "") or "") in ("", "none"):
        return None
    if str(on.kind) not in ("edm", "edit"):
        raise ConfigError(f"synthetic.online.kind {on.kind!r} unknown; choose none, edm or edit")
    return on


def online_rows(config: ml_collections.ConfigDict) -> int:
    """Synthetic rows per batch ``m = round(share · batch_size)`` (0 without an online source)."""
    on = online_config(config)
    if on is None:
        return 0
    share = float(on.get("share", 0.5))
    if not 0.0 < share < 1.0:
        raise ConfigError(f"synthetic.online.share must be in (0, 1), got {share}")
    return int(round(share * int(config.batch_size)))


class Spill:
    """Provenance spill shared by the online sources: every ``spill_every``-th synthetic row the
    classifier saw goes into a :class:`augdiff.data.store.SyntheticStore` (process 0 writes)."""

    rows: int
    seed: int
    num_steps: int
    spill_every: int
    spill_store: str
    provenance: dict[str, Any]

    def _open_spill(self, method: str, config: dict[str, Any]) -> None:
        self.spill_every = int(self.spill_every or 0)
        self._spill = None
        if self.spill_every <= 0:
            return
        if not self.spill_store:
            raise ConfigError("synthetic.online.spill_every needs synthetic.online.spill_store")
        if jax.process_index() == 0:
            self._spill = StoreWriter(self.spill_store, method=method, process_index=0,
                                      config={**config, "spill_every": self.spill_every,
                                              **self.provenance})

    def _row_provenance(self, step: int, pick: int) -> dict[str, Any]:
        """Provenance of one spilled row; each online source
        (:class:`augdiff.methods.online.OnlineEDM`, :class:`augdiff.methods.online.OnlineEdit`)
        defines its own."""
        raise NotImplementedError(f"{type(self).__name__} must define _row_provenance")

    def spill_rows(self, step: int) -> list[int]:
        """Synthetic rows ``j`` of ``step`` that are spilled: global synthetic row index
        ``step · m + j`` divisible by ``spill_every`` (every N-th image the classifier saw)."""
        m, n = int(self.rows), self.spill_every
        first = (-step * m) % n
        return list(range(first, m, n))

    def _spill_rows(self, batch: dict[str, jax.Array], pick: jax.Array, step: int) -> None:
        """Write the spilled rows of ``batch`` (its last ``m`` rows) into ``spill_store`` with
        provenance ``seed, step, row, label, num_steps`` and the source's own fields; keys
        ``online-s<step>-r<row>`` (a resumed run skips the keys already written)."""
        rows = self.spill_rows(step)
        if not rows:
            return
        m = int(self.rows)
        host = distributed.gather_to_host({"image": batch["image"][-m:],
                                           "label": batch["label"][-m:], "pick": pick})
        if self._spill is None:
            return
        for j in rows:
            label = int(host["label"][j])
            self._spill.add(
                f"online-s{step:08d}-r{j:04d}", np.asarray(host["image"][j]), label,
                provenance={"seed": int(self.seed), "step": step, "row": j, "label": label,
                            "sampler": "heun", "num_steps": int(self.num_steps),
                            **self._row_provenance(step, int(host["pick"][j])),
                            **self.provenance})

    def flush_spill(self) -> None:
        """Commit the spilled rows so far as a complete shard (call at every checkpoint, so a
        run resumed from it re-spills exactly the rows after it)."""
        if self._spill is not None:
            self._spill.flush()

    def close(self, *, commit: bool = True) -> None:
        """Close the spill store; ``commit = False`` drops the uncommitted rows like a kill."""
        if self._spill is not None:
            if commit:
                self._spill.close()
            else:
                self._spill.__exit__(RuntimeError, None, None)
            self._spill = None
