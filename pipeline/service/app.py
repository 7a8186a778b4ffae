"""The HTTP prediction service: ``POST /predict``, ``GET /model``, ``GET /health`` (and ``/docs``).

``create_app`` loads the model before anything listens, so a bad folder or a
folder that is not a registry fails at start, with the message the CLI prints.
With a registry, a background task stats ``champion.json`` every
``poll_seconds`` and loads a new champion in a worker thread; requests only
read the slot, so none waits for a load and none sees its model change midway.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import numpy as np
import pydantic_core
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from uvicorn.supervisors import Multiprocess

from pipeline import __version__
from pipeline.errors import PipelineError
from pipeline.service.payload import ModelInfo, Prediction, Problems, finite, problems, request_schema
from pipeline.service.source import ModelSlot, ModelSource, Served

__all__ = ["ModelSource", "create_app", "serve"]

log = logging.getLogger(__name__)

#: A body may carry this many bytes per trip (a whole TLC row as JSON is about 450): more is refused unread (413).
BYTES_PER_TRIP = 2048
#: Bodies above this size are parsed in a worker thread, so a big batch does not hold up the event loop.
INLINE_BYTES = 64 * 1024
#: How each process of ``serve(workers=N)`` learns what to serve: uvicorn starts them from an import string.
WORKER_ENV = "TAXI_PIPELINE_SERVE"


def create_app(source: ModelSource, max_batch: int = 10_000, poll_seconds: float = 1.0) -> FastAPI:
    """The service for ``source``, its model loaded (PipelineError if a folder or registry cannot be read).

    An empty registry, or a champion that does not load, is not an error here:
    the service answers 503 until a champion it can load is promoted.
    """
    if max_batch < 1:
        raise PipelineError(f"max_batch {max_batch}: must be at least 1")
    if not poll_seconds > 0:
        raise PipelineError(f"poll_seconds {poll_seconds}: must be more than 0")
    slot = ModelSlot(source, max_batch)
    limit = max_batch * BYTES_PER_TRIP + 4096

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("serving %s from %s", slot.current or "nothing yet", source)  # logging is set up by now; it was not at load
        watcher = asyncio.create_task(_watch(slot, poll_seconds)) if slot.watches else None
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with suppress(asyncio.CancelledError):
                    await watcher

    app = FastAPI(
        title="taxi-pipeline",
        version=__version__,
        summary=f"NYC taxi trip durations from the model in {source}",
        lifespan=lifespan,
    )
    app.state.slot = slot

    @app.post(
        "/predict",
        response_model=Prediction,
        summary="Predicted minutes for a batch of trips",
        responses={
            413: {"description": f"More than {BYTES_PER_TRIP} bytes a trip"},
            422: {"model": Problems, "description": "Not a list of 1 to max_batch valid trips; loc names index and field"},
            503: {"description": "No model loaded (an empty registry)"},
        },
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": request_schema(max_batch)}}}},
    )
    async def predict(request: Request) -> Response:
        served = _served(slot)  # this request's model to the end, whatever a reload does meanwhile
        body = await _body(request, limit)
        if len(body) > INLINE_BYTES:
            content = await run_in_threadpool(prediction_json, served, body)
        else:
            content = prediction_json(served, body)
        return Response(content, media_type="application/json")

    @app.get("/model", response_model=ModelInfo, summary="The model being served", responses={503: {"description": "No model loaded"}})
    async def model() -> dict[str, Any]:
        return _served(slot).describe()

    @app.get("/health", summary="200 while a model is loaded, 503 before")
    async def health() -> JSONResponse:
        if slot.current is None:
            return JSONResponse({"status": "unavailable", "detail": slot.problem}, status_code=503)
        return JSONResponse({"status": "ok"})

    return app


def serve(
    source: ModelSource,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 10_000,
    poll_seconds: float = 1.0,
    access_log: bool = True,
    workers: int = 1,
) -> None:
    """Load the model, then answer on ``host:port`` with uvicorn until interrupted.

    ``workers`` > 1 runs that many uvicorn processes on the one port (the kernel spreads connections): each
    loads the model and follows the registry's champion by itself, so during a promotion two processes may
    answer with two versions for up to ``poll_seconds``, each answer whole from one and naming it. The model
    is loaded here first, so a bad folder or registry fails before any process starts.
    """
    if workers < 1:
        raise PipelineError(f"--workers {workers}: must be at least 1")
    app = create_app(source, max_batch, poll_seconds)
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["pipeline.service"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_config=config, access_log=access_log)
        return
    del app  # each process loads its own
    settings = {"kind": source.kind, "location": source.location, "max_batch": max_batch, "poll_seconds": poll_seconds}
    os.environ[WORKER_ENV] = json.dumps(settings)  # inherited by the processes uvicorn spawns
    target = f"{__name__}:worker_app"
    options = uvicorn.Config(target, factory=True, workers=workers, host=host, port=port, log_config=config, access_log=access_log)
    # What uvicorn.run does for workers > 1, with the listener marked TCP (see _tcp_listener).
    with suppress(KeyboardInterrupt):
        Multiprocess(options, sockets=[_tcp_listener(options.bind_socket())]).run()


def _tcp_listener(sock: socket.socket) -> socket.socket:
    """The bound listener marked ``IPPROTO_TCP``, so asyncio sets ``TCP_NODELAY`` on the connections it accepts.

    uvicorn's ``Config.bind_socket`` leaves ``proto`` 0, accepted sockets inherit it, and asyncio turns Nagle's
    algorithm off only for ``proto == IPPROTO_TCP``: with ``--workers N`` each keep-alive answer then waited ~40 ms
    for the client's delayed ACK (measured here: 670 single-trip requests/s with 2 workers against 2,500 with 1).
    Upstream: https://github.com/Kludex/uvicorn/issues/3149 (open). Delete this once ``bind_socket`` returns
    ``proto == IPPROTO_TCP``; until then it does nothing to a listener that already is.
    """
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.proto == socket.IPPROTO_TCP:
        return sock
    tcp = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
    tcp.set_inheritable(True)
    return tcp


def worker_app() -> FastAPI:
    """The app of one process of ``serve(workers=N)``, built from what :func:`serve` put in the environment."""
    settings = json.loads(os.environ[WORKER_ENV])
    return create_app(ModelSource(settings["kind"], settings["location"]), int(settings["max_batch"]), float(settings["poll_seconds"]))


def _served(slot: ModelSlot) -> Served:
    served = slot.current
    if served is None:
        raise HTTPException(503, detail=slot.problem or "no model loaded")
    return served


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) once it passes ``limit`` bytes, declared or read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, detail=f"body of {int(declared):,} bytes: at most {limit:,} for this max_batch")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, detail=f"body over {limit:,} bytes: at most {limit:,} for this max_batch")
        chunks.append(chunk)
    return b"".join(chunks)


def prediction_json(served: Served, body: bytes) -> bytes:
    """The ``/predict`` JSON for ``body``; RequestValidationError (422) naming the index and field at fault."""
    try:
        pu, do, x, levels, pickup = served.parser.parse(body)
    except ValidationError as exc:
        raise RequestValidationError(problems(exc)) from None
    with np.errstate(over="ignore", invalid="ignore"):  # a huge number overflows to inf: refused just below, not warned about
        minutes = served.model.predict_codes(pu, do, x, levels, pickup)
    bad = finite(minutes)
    if bad is not None:
        problem = {"type": "prediction_not_finite", "loc": ["body", bad], "msg": "the trip's numbers are too large for a finite prediction"}
        raise RequestValidationError([problem])
    return pydantic_core.to_json({"minutes": minutes.tolist(), "model": {"version": served.version, "format": served.format}})


async def _watch(slot: ModelSlot, every: float) -> None:
    """Look for a new champion every ``every`` seconds, loading it off the event loop; never dies of a bad file."""
    while True:
        await asyncio.sleep(every)
        try:
            await asyncio.to_thread(slot.refresh)
        except Exception:
            log.exception("checking %s for a new champion failed; still serving the model loaded before", slot.source)
