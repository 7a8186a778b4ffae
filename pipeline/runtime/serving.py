"""Serving a deployment until stopped: Ctrl-C or SIGTERM (a service manager's stop) ends it cleanly.

Prefect 3.8.8's ``Runner.handle_sigterm`` calls the runner's ``stop()`` from inside the runner's own event loop,
where ``async_dispatch`` hands back the ``astop()`` coroutine instead of running it, then exits: the terminal
shows "RuntimeWarning: coroutine 'Runner.astop' was never awaited" and in-flight runs are not cancelled.
Prefect 3.9.1 schedules ``astop()`` on the runner's loop instead; :func:`serve` gives the runner that handler
on any version (``Runner.start`` installs ``self.handle_sigterm``). Delete the override, and serve with
``flow.serve`` again, once the lock holds prefect >= 3.9.1.

SIGTERM is the ordinary way to stop a service, so a stop by SIGTERM exits 0, as Prefect's own handler does;
Ctrl-C exits 130 as for any command.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any


def serve(flow: Any, name: str, schedules: list[Any], parameters: dict[str, Any]) -> bool:
    """Serve ``flow`` as the deployment ``FLOW/name`` on ``schedules`` until stopped; True if SIGTERM stopped it.

    On the way out the runner cancels the runs it started and pauses the deployment's schedules, as
    ``flow.serve`` does.
    """
    from prefect.runner import Runner

    runner = Runner(name=name)
    runner.add_flow(flow, name=name, schedules=schedules, parameters=parameters)
    return asyncio.run(_until_stopped(runner))


async def _until_stopped(runner: Any) -> bool:
    loop = asyncio.get_running_loop()
    stopping: list[Any] = []

    def on_sigterm(*args: Any) -> None:  # in the main thread, between two steps of the loop: only schedule the stop
        if not runner.started:  # not serving yet: nothing to stop (Prefect 3.9.1 exits so too)
            sys.exit(0)
        if not stopping:
            stopping.append(asyncio.run_coroutine_threadsafe(runner.astop(), loop))

    runner.handle_sigterm = on_sigterm
    await runner.start()
    return bool(stopping)
