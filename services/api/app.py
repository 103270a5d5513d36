"""The retrieval HTTP API (FastAPI): recommendations, similar items, the event gateway,
health, stats, metrics.

``POST /events`` changes state (it produces to Kafka), so it needs the bearer
token the replica was started with; without a token it is off.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from services.api.gateway import (
    BATCH_SCHEMA,
    MAX_BODY_BYTES,
    BatchRejected,
    EventSink,
    GatewayUnavailable,
    check_batch,
)
from services.api.live import ASSETS, STATIC, LiveView
from services.api.metrics import ServingMetrics
from services.api.state import ServingState
from stream.schemas import InvalidEvent, decode_json

ID_PATTERN = r"^[^/]{1,256}$"  # ids are any 1..256 characters (stream.schemas); "/" routes
MAX_EXCLUDE = 1000
EXCLUDE = Query([], max_length=MAX_EXCLUDE, description="item ids to leave out (repeatable)")


class ScoredItem(BaseModel):
    item_id: str
    score: float


class Recommendations(BaseModel):
    user_id: str
    # "personal" (user vector + ANN), "popular" (no vector yet), or "mixed" (a user with few
    # updates, with --popular-mix: part personal, part popular)
    strategy: str
    items: list[ScoredItem]


class SimilarItems(BaseModel):
    item_id: str
    items: list[ScoredItem]


class Health(BaseModel):
    status: str
    caught_up: bool
    items: int
    users: int


class Freshness(BaseModel):
    p50: float | None
    p95: float | None
    p99: float | None
    samples: int


class Stats(BaseModel):
    items: int
    users: int
    freshness_seconds: Freshness
    index_fresh_items: int
    index_graph_nodes: int
    index_deleted_nodes: int


class LiveData(BaseModel):
    ts: float
    events_seen: dict[str, float]
    vectors_applied: dict[str, float]
    freshness_seconds: dict[str, float | int | None]
    replica_lag: dict[str, int]
    worker_lag: dict[int, int] | None
    index: dict[str, int]
    recent_users: list[str]


class LivePoints(BaseModel):
    fitted_at: float | None
    points: list[list[str | float]]  # [item id, x, y, updates]


class Accepted(BaseModel):
    accepted: int


class RejectedEvent(BaseModel):
    index: int
    reason: str
    error: str


class BatchError(BaseModel):
    detail: str
    rejected: list[RejectedEvent]


class Error(BaseModel):
    detail: str


def create_app(
    state: ServingState,
    registry: CollectorRegistry,
    metrics: ServingMetrics,
    caught_up: Callable[[], bool] = lambda: True,
    *,
    sink: EventSink | None = None,
    token: str | None = None,
    on_shutdown: Callable[[], None] | None = None,
    live: LiveView | None = None,
) -> FastAPI:
    """``on_shutdown`` runs when the server stops gracefully (the replica's final save):
    uvicorn re-raises SIGTERM after its shutdown, so code after ``uvicorn.run`` never runs.
    ``live``: what the ``/live`` page shows (default: this replica's own view, no worker lag).
    """
    view = live or LiveView(state, metrics)
    if sink is not None and not token:
        raise ValueError("the event gateway changes state: it needs a token")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if on_shutdown is not None:
            await run_in_threadpool(on_shutdown)

    app = FastAPI(
        title="streambed retrieval API",
        version="0.1.0",
        description="Recommendations from embeddings that learn from the event stream.",
        lifespan=lifespan,
    )

    app.add_middleware(Timed, metrics=metrics)

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return Health(status="ok", caught_up=caught_up(), items=len(state.index), users=state.users)

    @app.get("/stats", response_model=Stats)
    def stats(
        since: float = Query(0.0, ge=0, description="only freshness samples after this unix time"),
    ) -> Stats:
        live, deleted = state.index.graph_nodes
        return Stats(
            items=len(state.index),
            users=state.users,
            freshness_seconds=Freshness(**state.freshness_percentiles(since)),
            index_fresh_items=state.index.pending,
            index_graph_nodes=live,
            index_deleted_nodes=deleted,
        )

    @app.get("/live", include_in_schema=False)
    def live_page() -> Response:
        missing = [name for name, path in ASSETS.items() if not path.is_file()]
        if missing:
            return _error(503, f"the live page's files are missing ({', '.join(missing)}): "
                               "run scripts/setup.sh, or npm ci --prefix web")  # fmt: skip
        return FileResponse(STATIC / "live.html", media_type="text/html")

    @app.get("/live/static/{name}", include_in_schema=False)
    def live_static(name: str) -> Response:
        path = ASSETS.get(name)
        if path is None or not path.is_file():
            return _error(404, f"no such file: {name}")
        return FileResponse(path)

    @app.get("/live/data", response_model=LiveData)
    def live_data() -> LiveData:  # sync: a few ms of numpy, kept off the event loop
        """What the live page polls every second: counters (the page takes their rates),
        freshness percentiles of the last 30 s, consumer lag, index size."""
        return LiveData(**view.data())

    @app.get("/live/projection", response_model=LivePoints)
    def live_projection(n: int = Query(400, ge=1, le=2000)) -> LivePoints:
        """The ``n`` most updated items as ``[id, x, y, updates]`` on fixed PCA axes."""
        return LivePoints(**view.points(n))

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/recommendations/{user_id}", response_model=Recommendations)
    async def recommendations(
        user_id: str = Path(pattern=ID_PATTERN),
        k: int = Query(10, ge=1, le=1000),
        exclude: list[str] = EXCLUDE,
        exclude_seen: bool = Query(
            False, description="leave out the items this user recently interacted with"
        ),
    ) -> Recommendations:
        skip = set(exclude) | (state.seen_by(user_id) if exclude_seen else frozenset())
        strategy, items = state.recommend(user_id, k, skip)
        return Recommendations(
            user_id=user_id,
            strategy=strategy,
            items=[ScoredItem(item_id=i, score=s) for i, s in items],
        )

    @app.get(
        "/items/{item_id}/similar",
        response_model=SimilarItems,
        responses={404: {"description": "The item has no vector yet"}},
    )
    def similar(
        item_id: str = Path(pattern=ID_PATTERN),
        k: int = Query(10, ge=1, le=1000),
        exclude: list[str] = EXCLUDE,
    ) -> SimilarItems:
        items = state.similar(item_id, k, set(exclude))
        if items is None:
            raise HTTPException(404, detail=f"item {item_id!r} has no vector yet")
        return SimilarItems(
            item_id=item_id, items=[ScoredItem(item_id=i, score=s) for i, s in items]
        )

    @app.post(
        "/events",
        status_code=202,
        response_model=Accepted,
        openapi_extra={"requestBody": {"required": True,
                                       "content": {"application/json": {"schema": BATCH_SCHEMA}}}},
        responses={
            400: {"model": BatchError, "description": "Invalid events; nothing was produced"},
            401: {"model": Error, "description": "Missing or wrong bearer token"},
            413: {"model": Error, "description": "Body over the size limit"},
            503: {"model": Error, "description": "Gateway off, or the broker did not answer"},
        },
    )  # fmt: skip
    async def events(request: Request) -> Response:
        """Validate a batch of interaction events and produce it to the ``interactions``
        topic (all or nothing). Needs ``Authorization: Bearer <token>``."""
        if sink is None or token is None:
            return _error(503, "the event gateway is off on this replica (no token configured)")
        sent = request.headers.get("authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            metrics.events_rejected.labels(reason="unauthorized").inc()
            return _error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        body = await _read_capped(request, MAX_BODY_BYTES)
        if body is None:
            metrics.events_rejected.labels(reason="too_large").inc()
            return _error(413, f"body over the limit of {MAX_BODY_BYTES} bytes")
        try:
            batch = check_batch(decode_json(body, limit=MAX_BODY_BYTES))
        except InvalidEvent as err:  # the body itself: not JSON, nested too deep, too large
            status = 413 if err.reason == "too_large" else 400
            label = "too_large" if status == 413 else "bad_body"
            metrics.events_rejected.labels(reason=label).inc()
            return JSONResponse({"detail": str(err), "reason": err.reason, "rejected": []},
                                status_code=status)  # fmt: skip
        except BatchRejected as err:
            for r in err.rejected:
                metrics.events_rejected.labels(reason=r["reason"]).inc()
            if not err.rejected:  # the body's shape, not an event
                metrics.events_rejected.labels(reason="bad_body").inc()
            return JSONResponse({"detail": str(err), "rejected": err.rejected}, status_code=400)
        try:
            await run_in_threadpool(sink.send, batch)
        except GatewayUnavailable as err:
            return _error(503, str(err))
        metrics.events_accepted.inc(len(batch))
        return JSONResponse({"accepted": len(batch)}, status_code=202)

    return app


class Timed:
    """Request latency by route template, as a plain ASGI middleware (with Starlette's
    ``BaseHTTPMiddleware`` a /healthz took 1.31 ms at p50 in bench/http, with this 0.40)."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.request_seconds.labels(endpoint=endpoint).observe(
                time.perf_counter() - started
            )


async def _read_capped(request: Request, limit: int) -> bytes | None:
    """The body, or ``None`` as soon as it is known to exceed ``limit`` (never buffered
    whole: a declared length over the limit is refused before reading)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)
