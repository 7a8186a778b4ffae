"""The one exception type users see: a single line naming what is at fault."""

from __future__ import annotations


class PipelineError(Exception):
    """Bad input or an unusable file; the message names the file, month or flag.

    The CLI prints ``error: <message>`` and exits non-zero; nothing is written.
    """
