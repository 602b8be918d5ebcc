"""Plain text out of messages written for a terminal.

Keras and TensorFlow format their exception messages for a console: `\\x1b[1m…\\x1b[0m` around
the cause, sometimes other escape sequences. Once such a message becomes a job's failure reason
or a problem's detail it is data, read by browsers, JSON clients and log viewers, where the
escapes are noise at best and, in a terminal that replays them, a way to rewrite what is shown.
"""

from __future__ import annotations

import re

# ANSI/ECMA-48 escape sequences: CSI (ESC [ … final byte), OSC (ESC ] … BEL or ESC \\), the
# other string commands (DCS, SOS, PM, APC, up to ESC \\), and two-byte escapes; the 8-bit
# forms of CSI (0x9b) and OSC (0x9d) too.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[PX^_][^\x1b\x9c]*(?:\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
)
# What is left of the control characters (C0 but tab and newline, DEL, C1) after the escape
# sequences are gone; NUL among them (a PostgreSQL text column cannot hold it).
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain_text(text: str) -> str:
    """`text` without terminal escape sequences and control characters (tab and newline stay;
    a carriage return becomes nothing, as in a `\\r\\n` line end)."""
    if not _needs_cleaning(text):
        return text
    return _CONTROLS.sub("", _ESCAPES.sub("", text))


def _needs_cleaning(text: str) -> bool:
    return _CONTROLS.search(text) is not None
