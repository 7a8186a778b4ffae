"""Serving a deployment until stopped: Ctrl-C or SIGTERM (a service manager's stop) ends it cleanly.

Prefect's ``Runner`` handles SIGTERM itself since 3.9.1 (it schedules ``astop()`` on its loop, which cancels
in-flight runs and pauses the deployment's schedules, and ``start()`` returns); 3.8.8 left ``astop()`` unawaited.
The runner is built here rather than through ``flow.serve`` only to tell a SIGTERM stop (exit 0, as Prefect's
handler intends) from Ctrl-C (exit 130, as for any command). It runs one retrain at a time (``limit=1``): two would
train the same months side by side and race to promote; a run due while one runs starts at the runner's next poll after it.
"""

from __future__ import annotations

import asyncio
from typing import Any


def serve(flow: Any, name: str, schedules: list[Any], parameters: dict[str, Any]) -> bool:
    """Serve ``flow`` as the deployment ``FLOW/name`` on ``schedules`` until stopped; True if SIGTERM stopped it."""
    from prefect.runner import Runner

    runner = Runner(name=name, limit=1)
    runner.add_flow(flow, name=name, schedules=schedules, parameters=parameters)
    asyncio.run(runner.start())
    return bool(runner.stopping)  # set by Runner.handle_sigterm
