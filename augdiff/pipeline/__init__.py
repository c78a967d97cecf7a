"""Experiments: ``augdiff run`` from a config to ``report.md``, resumable.

Read top-down: :mod:`~augdiff.pipeline.run` dispatches on ``config.experiment``;
:mod:`~augdiff.pipeline.loop` runs the stages of :mod:`~augdiff.pipeline.stages` in order,
each with the config :mod:`~augdiff.pipeline.wiring` derives for it, and records them in
``stages.json`` (:mod:`~augdiff.pipeline.book`); :mod:`~augdiff.pipeline.rows` runs a paper's
table row by row and :mod:`~augdiff.pipeline.mismatch` seed 004's Table 2; the reports are
written by :mod:`~augdiff.pipeline.report` and :mod:`~augdiff.pipeline.tables`.
"""
