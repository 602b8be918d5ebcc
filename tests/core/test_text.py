from __future__ import annotations

import pytest

from app.core.text import plain_text


@pytest.mark.parametrize(("raw", "plain"), [
    ("Exception encountered.\n\n\x1b[1mInput 0 is incompatible\x1b[0m\n", "Exception "
     "encountered.\n\nInput 0 is incompatible\n"),
    ("a\x1b[38;5;196mred\x1b[0m", "ared"),
    ("title\x1b]0;owned\x07 and link \x1b]8;;http://x\x1b\\here\x1b]8;;\x1b\\", "title and "
     "link here"),
    ("csi8\x9b31m and osc8\x9d0;t\x9c end", "csi8 and osc8 end"),
    ("nul\x00 del\x7f bell\x07 cr\r\n tab\t", "nul del bell cr\n tab\t"),
    ("plain • é ✓", "plain • é ✓"),
])
def test_terminal_escapes_and_controls_are_removed(raw: str, plain: str) -> None:
    assert plain_text(raw) == plain
