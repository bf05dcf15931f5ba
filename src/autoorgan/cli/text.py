"""Text from user data made safe for the terminal (used by the CLI only).

Case ids come from file names and DICOM headers, structure names from task files, errors quote
both. Printed raw, an ``ESC`` sequence in such a name could recolour, hide or rewrite what the
terminal shows (or, on some terminals, set the window title or a clipboard), and Rich would
interpret ``[bold]`` or ``[link=...]`` in it as markup. :func:`terminal_safe` shows control
characters as visible escapes (``\\x1b``, ``\\n``, ``\\u202e``) and escapes Rich markup;
:class:`SafeRichHandler` does the same for every log message.
"""

from __future__ import annotations

import logging
import unicodedata

from rich.logging import RichHandler
from rich.markup import escape

#: Unicode categories shown as escapes: control (C0, DEL, C1), format (bidirectional overrides,
#: zero-width characters), lone surrogates, line and paragraph separators.
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def visible(text: object) -> str:
    """``str(text)`` with every control or format character replaced by its Python escape."""
    value = str(text)
    if all(ch.isprintable() or ch == " " for ch in value):
        return value
    return "".join(ch.encode("unicode_escape").decode("ascii")
                   if unicodedata.category(ch) in _HIDDEN else ch for ch in value)


def terminal_safe(text: object, *, markup: bool = True) -> str:
    """User-derived text ready to print with Rich: control characters as visible escapes and,
    for strings printed with markup (Rich's default, tables and progress descriptions), Rich
    markup escaped so ``[bold]`` prints as written."""
    shown = visible(text)
    return escape(shown) if markup else shown


class SafeRichHandler(RichHandler):
    """A :class:`~rich.logging.RichHandler` that prints messages through :func:`terminal_safe`
    (log messages name cases, files and structures)."""

    def format(self, record: logging.LogRecord) -> str:
        """The message made safe as one line; a traceback (``--verbose``) keeps its line breaks."""
        saved = record.msg, record.args
        record.msg, record.args = terminal_safe(record.getMessage(), markup=self.markup), None
        try:
            text = super().format(record)
        finally:
            record.msg, record.args = saved
        return "\n".join(visible(line) for line in text.split("\n"))


__all__ = ["SafeRichHandler", "terminal_safe", "visible"]
