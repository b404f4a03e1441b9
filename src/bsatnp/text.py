"""Text for a terminal: stored strings are data, never control sequences or floods."""

from __future__ import annotations

MAX_LINE = 400
"""Characters of one line shown before the rest is cut."""


def terminal_safe(text: str, max_line: int = MAX_LINE) -> str:
    r"""``text`` with control characters escaped and each line cut to ``max_line``.

    Newlines separate lines and stay; every other character below U+0020, DEL and the C1
    controls (ESC sequences, carriage returns, bells) appear as escapes such as ``\x1b``,
    so a checkpoint's card cannot recolour, move or clear the terminal.
    """
    lines = []
    for line in text.split("\n"):
        safe = "".join(ch if ch.isprintable() or ch == "\t" else ch.encode(
            "unicode_escape").decode("ascii") for ch in line)
        if len(safe) > max_line:
            safe = f"{safe[:max_line]}… ({len(safe) - max_line:,} more characters)"
        lines.append(safe)
    return "\n".join(lines)
