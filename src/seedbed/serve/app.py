"""The live page's web app: a few HTML shells, JSON, and server-sent events that carry rows as they land.

Pages (static HTML + JS from `static/`, charts by the vendored uPlot):
  /                       the runs and trials under the runs folder, updated as they change
  /run?path=REL           one run, live: loss and every observer's series, emergences, checkpoints
  /inside?path=REL        inside at any checkpoint: attention pattern, head scores, scores over training
  /report?path=REL        a trial's (or run's) report.html, served as it is
Data:
  /api/runs/stream        SSE: `runs` events, the whole table whenever it changed
  /api/run/stream?path=   SSE: a `snapshot`, then `append` events with only the rows that landed since
  /api/inside?path=&step= JSON: patterns and head scores at a checkpoint
  /api/scores?path=       JSON: each head's scores at every checkpoint (at most MAX_STEPS of them)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from seedbed.errors import SeedbedError
from seedbed.serve.data import (
    UNREADABLE,
    Follower,
    NotServed,
    RunsTable,
    report_file,
    run_folder,
)
from seedbed.serve.inside import Inside

STATIC = Path(__file__).parent / "static"
POLL_S = 0.2  # how often a run's files are looked at (a stat; the index is read only when they changed)
RUNS_POLL_S = 1.0
PING_S = 15.0  # a comment line this often, so a client that went away is noticed
MAX_STEPS = 40  # checkpoints the scores-over-training chart computes (evenly spread, first and last kept)
# the pages load only what this server serves; a report from a run folder may not run any script at all
PAGE_CSP = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; connect-src 'self'"
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def make_app(runs_dir: Path, poll_s: float = POLL_S) -> Starlette:
    """The app serving `runs_dir` (read-only)."""
    root = Path(runs_dir).resolve()
    table = RunsTable(root)
    inside = Inside()

    def page(name: str) -> Callable:
        async def handler(request: Request) -> Response:
            return FileResponse(STATIC / name, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-store"})
        return handler

    async def runs_stream(request: Request) -> Response:
        async def events() -> AsyncIterator[str]:
            last = None
            while True:
                rows = await run_in_threadpool(table.rows)
                text = json.dumps(rows)
                if text != last:
                    last = text
                    yield sse("runs", text)
                await asyncio.sleep(RUNS_POLL_S)
        return stream(request, events())

    async def run_stream(request: Request) -> Response:
        path = run_folder(root, request.query_params.get("path", ""))
        follower = Follower(path)

        async def events() -> AsyncIterator[str]:
            quiet = 0.0
            try:
                yield sse("snapshot", json.dumps(await run_in_threadpool(follower.snapshot)))
            except UNREADABLE as err:
                yield sse("problem", json.dumps({"problem": line(err)}))
            while True:
                await asyncio.sleep(poll_s)
                try:
                    found = await run_in_threadpool(follower.poll)
                except UNREADABLE as err:  # half-written, corrupt, or locked past the timeout: say so and keep watching
                    follower.last_stamp = None
                    found = ("problem", {"problem": line(err)})
                    await asyncio.sleep(1.0)
                if found is not None:
                    quiet = 0.0
                    yield sse(found[0], json.dumps(found[1]))
                else:
                    quiet += poll_s
                    if quiet >= PING_S:
                        quiet = 0.0
                        yield ": ping\n\n"
        return stream(request, events())

    async def inside_at(request: Request) -> Response:
        path = run_folder(root, request.query_params.get("path", ""))
        step = _int(request.query_params.get("step"))
        return JSONResponse(await run_in_threadpool(inside.at, path, step))

    async def scores(request: Request) -> Response:
        path = run_folder(root, request.query_params.get("path", ""))
        steps = await run_in_threadpool(_checkpoint_steps, path)
        return JSONResponse(await run_in_threadpool(inside.scores_over_training, path, spread(steps, MAX_STEPS)))

    async def report(request: Request) -> Response:
        body = await run_in_threadpool(report_file, root, request.query_params.get("path", ""))
        return Response(body, media_type="text/html; charset=utf-8", headers={"Content-Security-Policy": REPORT_CSP})

    async def refused(request: Request, exc: Exception) -> Response:
        code = 404 if isinstance(exc, NotServed) else 422
        return JSONResponse({"problem": line(exc)}, status_code=code)

    routes = [
        Route("/", page("runs.html")),
        Route("/run", page("run.html")),
        Route("/inside", page("inside.html")),
        Route("/report", report),
        Route("/api/runs/stream", runs_stream),
        Route("/api/run/stream", run_stream),
        Route("/api/inside", inside_at),
        Route("/api/scores", scores),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    handlers = {exc: refused for exc in (SeedbedError, *UNREADABLE)}
    return Starlette(routes=routes, exception_handlers=handlers)


def sse(kind: str, data: str) -> str:
    return f"event: {kind}\ndata: {data}\n\n"


def stream(request: Request, events: AsyncIterator[str]) -> StreamingResponse:
    """An SSE response that ends quietly when its client goes away (Starlette cancels the generator)."""
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


def line(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0][:300]


def spread(steps: list[int], n: int) -> list[int]:
    """At most `n` of `steps`, evenly spread, the first and the last kept."""
    if len(steps) <= n:
        return steps
    return sorted({steps[round(i * (len(steps) - 1) / (n - 1))] for i in range(n)})


def _checkpoint_steps(path: Path) -> list[int]:
    from seedbed.serve.data import checkpoint_records

    return [r.step for r in checkpoint_records(path)]


def _int(text: str | None) -> int:
    try:
        return int(text or "")
    except ValueError:
        raise SeedbedError(f"step {text!r} is not a whole number") from None
