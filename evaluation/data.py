"""Time-ordered streams for evaluation: item arrivals (with text) interleaved with interactions.

A stream comes from the generator or from a JSON-lines file in which each line is
either an interaction (the ``interactions`` wire format) or an item
(``{"item_id", "title", "tags", "ts"}``), so any public dataset with timestamps
and titles can be converted to it.

Examples
--------
>>> stream = generated_stream(users=10, items=30, clusters=3, events=50, seed=1)
>>> kinds = {type(r).__name__ for r in stream}
>>> sorted(kinds), sum(isinstance(r, Interaction) for r in stream)
(['Interaction', 'ItemArrival'], 50)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.datagen import GeneratorConfig, InteractionGenerator, ItemInfo
from stream.content import item_text
from stream.schemas import Interaction, InvalidEvent, validate_event


@dataclass(frozen=True)
class ItemArrival:
    item_id: str
    text: str
    ts: float


Record = Interaction | ItemArrival


def _arrival(info: ItemInfo) -> ItemArrival:
    return ItemArrival(info.item_id, item_text(info.title, info.tags), info.ts)


def generated_stream(
    *, users: int, items: int, clusters: int, events: int, seed: int, tag_affinity: float = 0.0
) -> list[Record]:
    gen = InteractionGenerator(
        GeneratorConfig(users=users, items=items, clusters=clusters, seed=seed,
                        tag_affinity=tag_affinity)
    )  # fmt: skip
    out: list[Record] = [_arrival(info) for info in gen.catalogue()]
    for rec in gen.replay(events):
        out.append(_arrival(rec) if isinstance(rec, ItemInfo) else rec)
    return out


def read_jsonl(path: Path) -> list[Record]:
    """Read a stream file (in replay order); a bad line raises with its number, none is skipped."""
    out: list[Record] = []
    with path.open() as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                if isinstance(raw, dict) and "title" in raw:
                    tags = raw.get("tags") or []
                    out.append(ItemArrival(str(raw["item_id"]), item_text(raw["title"], tags),
                                           float(raw.get("ts", 0.0))))  # fmt: skip
                else:
                    out.append(validate_event(raw))
            except (ValueError, KeyError, TypeError, InvalidEvent) as err:
                raise ValueError(f"{path}:{n}: {err}") from None
    return out  # in file order: a stream file is the replay order


def write_jsonl(records: Iterable[Record], path: Path) -> None:
    with path.open("w") as fh:
        for r in records:
            if isinstance(r, ItemArrival):
                fh.write(json.dumps({"item_id": r.item_id, "title": r.text, "ts": r.ts}) + "\n")
            else:
                fh.write(r.to_json().decode() + "\n")


def split(records: Sequence[Record], history_share: float) -> tuple[list[Record], list[Record]]:
    """The first ``history_share`` of the interactions (and items that arrived with them)."""
    if not 0.0 < history_share < 1.0:
        raise ValueError(f"history_share must be within (0, 1), got {history_share}")
    n_events = sum(isinstance(r, Interaction) for r in records)
    cut_after = int(n_events * history_share)
    seen = 0
    for at, r in enumerate(records):
        if isinstance(r, Interaction):
            seen += 1
            if seen > cut_after:
                return list(records[:at]), list(records[at:])
    return list(records), []
