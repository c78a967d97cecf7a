"""Ahead-of-time compilation of augdiff's programs for accelerator topologies (``augdiff compile``).

- :mod:`~augdiff.aot.chips`: the chips' datasheet figures and TPU topologies by name;
- :mod:`~augdiff.aot.hlo`: what a compiled program holds (collectives, loops, host transfers);
- :mod:`~augdiff.aot.programs`: every jitted program an experiment runs, built at its real size
  from abstract parameters and sharded as a launch shards it;
- :mod:`~augdiff.aot.compile`: compile them for a topology and measure each per chip.
"""
