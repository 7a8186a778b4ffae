"""The one exception type users see: a single line naming what is at fault."""

from __future__ import annotations


class PipelineError(Exception):
    """Bad input or an unusable file; the message names the file, month or flag.

    The CLI prints ``error: <message>`` and exits non-zero; nothing is written.

    It never carries a cause or context: the message says everything, and a
    chained exception travels with it when a Dask worker pickles it for the flow
    (tblib pickles the chain), where one that cannot be rebuilt from its args,
    such as urllib's ``HTTPError``, turned the user's line into a ``TypeError``.
    """

    @property
    def __cause__(self) -> BaseException | None:
        return None

    @__cause__.setter
    def __cause__(self, value: BaseException | None) -> None:
        pass  # dropped, see the class docstring

    @property
    def __context__(self) -> BaseException | None:
        return None

    @__context__.setter
    def __context__(self, value: BaseException | None) -> None:
        pass
