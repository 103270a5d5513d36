"""MovieLens: conversion to the evaluation stream, and the pinned, checksummed fetch.

The fetch is tested against a registry served on 127.0.0.1 (no test leaves the machine);
the real files, which `scripts/setup.sh` fetches, are checked where present, and with
``CI=true`` their absence is a failure, not a skip.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from evaluation import movielens
from evaluation.data import ItemArrival, split
from evaluation.prequential import EvalConfig, prequential
from stream.schemas import Interaction
from tests.unit.test_evaluation import fake_encode

RATINGS = "userId,movieId,rating,timestamp\n"
MOVIES = "movieId,title,genres\n"


def write(d: Path, ratings: str, movies: str) -> Path:
    (d / "ratings.csv").write_text(RATINGS + ratings)
    (d / "movies.csv").write_text(MOVIES + movies)
    return d


def test_ratings_become_typed_events_in_time_order_with_arrivals_and_sessions(
    tmp_path: Path,
) -> None:
    d = write(
        tmp_path,
        "1,2,5.0,4000\n1,1,0.5,1000\n2,1,3.5,500\n1,3,4.0,1500\n",
        '1,"Heat, the film (1995)",Action|Crime\n2,Up (2009),Animation\n3,X (2001),Drama\n',
    )
    stream = movielens.convert(d)
    events = [r for r in stream if isinstance(r, Interaction)]
    assert [(e.user_id, e.item_id, e.type) for e in events] == [
        ("u2", "m1", "view"), ("u1", "m1", "skip"), ("u1", "m3", "like"), ("u1", "m2", "like"),
    ]  # fmt: skip
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    # a movie arrives (quoted title with a comma, genres as tags) right before its first rating
    first = stream[0]
    assert first == ItemArrival("m1", "Heat, the film (1995). tags: Action, Crime", 500.0)
    arrivals = [r.item_id for r in stream if isinstance(r, ItemArrival)]
    assert arrivals == ["m1", "m3", "m2"]
    assert all(
        stream.index(next(r for r in stream if isinstance(r, ItemArrival) and r.item_id == i))
        < stream.index(next(e for e in events if e.item_id == i))
        for i in arrivals
    )
    # gaps under 30 minutes keep a session; 2,500 s ends it
    assert [e.session_id for e in events if e.user_id == "u1"] == ["u1-1000", "u1-1000", "u1-4000"]


@pytest.mark.parametrize(
    ("ratings", "movies", "message"),
    [
        ("1,1,4.0,x\n", "1,A,Drama\n", "ratings.csv:2"),
        ("1,1,7.0,10\n", "1,A,Drama\n", "rating must be within"),
        ("1,9,4.0,10\n", "1,A,Drama\n", "movie 9 is not in movies.csv"),
        ("1,1,4.0\n", "1,A,Drama\n", "expected 4 fields"),
        ("1,1,4.0,10\n", "one,A,Drama\n", "movies.csv:2"),
    ],
)
def test_a_bad_line_is_an_error_naming_the_file_and_line(
    tmp_path: Path, ratings: str, movies: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        movielens.convert(write(tmp_path, ratings, movies))


def test_missing_files_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="streambed fetch-data movielens"):
        movielens.convert(tmp_path)


def sdist(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(movielens.MEMBER_DIR + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def registry() -> Iterator[tuple[str, dict[str, bytes]]]:
    """A PyPI-like JSON API on 127.0.0.1; the test puts the archive in ``served['blob']``."""
    served: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == f"/pypi/{movielens.PACKAGE}/json":
                url = f"../../files/{movielens.SDIST}"  # relative, as mirrors answer
                meta = {"releases": {movielens.VERSION: [
                    {"filename": "other.whl", "url": "x"},
                    {"filename": movielens.SDIST, "url": url},
                ]}}  # fmt: skip
                body = json.dumps(meta).encode()
            elif self.path == f"/files/{movielens.SDIST}" and "blob" in served:
                body = served["blob"]
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/pypi", served
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_checks_the_pinned_checksum_and_extracts_all_or_nothing(
    tmp_path: Path, registry: tuple[str, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    index, served = registry
    files = {"ratings.csv": b"r", "movies.csv": b"m", "README.txt": b"licence"}
    served["blob"] = sdist(files)
    dest = tmp_path / "ml"
    # the real pin does not match this archive: refused, nothing written
    with pytest.raises(RuntimeError, match="SHA-256"):
        movielens.fetch(dest, index=index)
    assert not dest.exists()
    monkeypatch.setattr(movielens, "SDIST_SHA256", hashlib.sha256(served["blob"]).hexdigest())
    seen: list[tuple[int, int]] = []
    assert movielens.fetch(dest, index=index, progress=lambda d, t: seen.append((d, t))) == dest
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == files
    assert seen[-1] == (len(served["blob"]), len(served["blob"]))
    served.clear()  # a second fetch finds the files and does not download
    assert movielens.fetch(dest, index=index) == dest


def test_fetch_errors_are_clear(tmp_path: Path, registry: tuple[str, dict[str, bytes]]) -> None:
    index, served = registry
    with pytest.raises(RuntimeError, match="could not download .*404"):
        movielens.fetch(tmp_path / "a", index=index)  # no archive served
    served["blob"] = sdist({"ratings.csv": b"r"})
    with pytest.raises(RuntimeError, match="could not download"):
        movielens.fetch(tmp_path / "b", index="http://127.0.0.1:9/pypi")  # nothing listens


def real_data() -> Path:
    d = movielens.DEFAULT_DIR
    if not (d / "ratings.csv").is_file():
        reason = f"{d} missing: run `streambed fetch-data movielens` (scripts/setup.sh does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    return d


def test_the_real_dataset_converts_whole_and_evaluates() -> None:
    stream = movielens.convert(real_data())
    events = [r for r in stream if isinstance(r, Interaction)]
    items = [r for r in stream if isinstance(r, ItemArrival)]
    assert len(events) == 100_004  # every rating of ml-latest-small, none dropped
    assert len(items) == len({e.item_id for e in events}) == 9_066
    assert all(a.ts <= b.ts for a, b in zip(events, events[1:], strict=False))
    assert "Toy Story (1995). tags: Adventure, Animation" in {i.text[:44] for i in items}
    # a slice runs through the evaluator with items a user rated excluded from their lists
    history, rest = split(stream[:6000], 0.5)
    result = prequential(rest, [], fake_encode, EvalConfig(exclude_seen=True),
                         prior_seen=[r for r in history if isinstance(r, Interaction)])  # fmt: skip
    assert len(result.position) > 100
