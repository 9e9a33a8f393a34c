"""Text a server wrote (an error body, a reason phrase, a snippet of a reply), made safe to store and print.

A server's error text reaches rows, step files, the report, the run log and the terminal. Before it
does, ``clean_server_text`` scrubs every registered secret from the whole text (``dataflow_mm.common.secrets``:
the key, its escaped forms and any 8-character run of them), folds whitespace, escapes control
characters (an ANSI escape sequence prints as ``\\x1b[31m``, not in red) and only then cuts it to
``limit`` characters: cutting first could leave part of a key that no longer matches as a whole.
"""

from __future__ import annotations

from dataflow_mm.common.secrets import escape_controls, scrub


def clean_server_text(text: str, limit: int) -> str:
    """``text`` scrubbed, on one line, control characters escaped, then cut to ``limit`` characters (``...``)."""
    text = escape_controls(" ".join(scrub(text).split()))
    return text[:limit] + ("..." if len(text) > limit else "")
