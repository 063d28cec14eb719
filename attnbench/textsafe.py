"""Text attnbench did not write (plugins, suites, results files), made safe for a terminal or a spreadsheet.

``plain`` owns the terminal rule: every printer hands its foreign text
through it (``markup`` when the text goes into a rich markup string). Rich
escapes its own markup but passes ESC and the other control characters
through, so without this an implementation's description or a results file's
hardware name could move the cursor, recolour or clear the screen, set the
window title or write an OSC 8 link. ``csv_cell`` is the spreadsheet rule.
"""

from __future__ import annotations

import re

from rich.markup import escape

CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
"""C0 but tab and newline, DEL, C1 (CSI U+009B included), and the bidirectional overrides that reorder what is shown."""
LAYOUT = re.compile("[\t\n]")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""What a spreadsheet reads as the start of a formula (OWASP, CSV injection)."""


def plain(text: object, *, keep_lines: bool = False) -> str:
    """``text`` as a string without control characters; tabs and newlines become spaces unless ``keep_lines``
    (a table cell or an error paragraph that lays out lines; elsewhere a newline could fake a line of output)."""
    cleaned = CONTROL.sub("", str(text))
    return cleaned if keep_lines else LAYOUT.sub(" ", cleaned)


def markup(text: object, *, keep_lines: bool = False) -> str:
    """``plain(text)`` with rich markup escaped: how foreign text goes into a string rich will print."""
    return escape(plain(text, keep_lines=keep_lines))


def csv_cell(value: object) -> object:
    """A string a spreadsheet would run as a formula, prefixed with ``'``; anything else (numbers too) unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value
