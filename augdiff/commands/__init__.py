"""CLI subcommands; each module exposes ``main(config)`` (``env``, ``export``, ``inspect``,
``compile`` and ``config`` take argv and build their flags with ``build_parser()``), and
:func:`plain_text`, which turns a docstring into help text."""

from __future__ import annotations

import re

_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`~?([^`]+)`")  # :func:`x`, :py:mod:`x`
_LITERAL = re.compile(r"``([^`]*)``")
_BACKTICK = re.compile(r"`([^`]+)`")


def plain_text(doc: str | None) -> str:
    """``doc`` without reStructuredText markup, for ``--help``: roles and double backticks
    become their text, a paragraph's closing ``::`` becomes ``:``; the indentation is kept."""
    text = _ROLE.sub(r"\1", doc or "")
    text = _LITERAL.sub(r"\1", text)
    text = _BACKTICK.sub(r"\1", text)
    text = re.sub(r"\s*::$", ":", text, flags=re.MULTILINE)
    return text.strip("\n")
