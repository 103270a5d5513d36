"""The retrieval HTTP API (FastAPI): recommendations, similar items, health, stats, metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, HTTPException, Path, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel

from services.api.metrics import ServingMetrics
from services.api.state import ServingState

ID_PATTERN = r"^[^\s/]{1,256}$"


class ScoredItem(BaseModel):
    item_id: str
    score: float


class Recommendations(BaseModel):
    user_id: str
    strategy: str  # "personal" (user vector + ANN) or "popular" (no vector yet)
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


def create_app(
    state: ServingState,
    registry: CollectorRegistry,
    metrics: ServingMetrics,
    caught_up: Callable[[], bool] = lambda: True,
) -> FastAPI:
    app = FastAPI(
        title="streambed retrieval API",
        version="0.1.0",
        description="Recommendations from embeddings that learn from the event stream.",
    )

    @app.middleware("http")
    async def timed(request: Request, call_next: Callable[[Request], Awaitable[Response]]):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        metrics.request_seconds.labels(endpoint=endpoint).observe(time.perf_counter() - started)
        return response

    @app.get("/healthz", response_model=Health)
    def healthz() -> Health:
        return Health(status="ok", caught_up=caught_up(), items=len(state.index), users=state.users)

    @app.get("/stats", response_model=Stats)
    def stats(
        since: float = Query(0.0, ge=0, description="only freshness samples after this unix time"),
    ) -> Stats:
        return Stats(
            items=len(state.index),
            users=state.users,
            freshness_seconds=Freshness(**state.freshness_percentiles(since)),
        )

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/recommendations/{user_id}", response_model=Recommendations)
    def recommendations(
        user_id: str = Path(pattern=ID_PATTERN),
        k: int = Query(10, ge=1, le=1000),
    ) -> Recommendations:
        strategy, items = state.recommend(user_id, k)
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
    ) -> SimilarItems:
        items = state.similar(item_id, k)
        if items is None:
            raise HTTPException(404, detail=f"item {item_id!r} has no vector yet")
        return SimilarItems(
            item_id=item_id, items=[ScoredItem(item_id=i, score=s) for i, s in items]
        )

    return app
