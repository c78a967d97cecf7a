"""CLI subcommands; each module exposes ``main(config)`` (``env`` takes argv)."""
