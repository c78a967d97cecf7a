"""Training: classifiers (``classifier``), ``losses`` and the shared orbax ``checkpoint`` helper."""
