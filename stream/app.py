"""The faust-streaming worker: a thin agent around :class:`stream.core.WorkerCore`.

The agent reads ``interactions`` as raw bytes (``noack_take``: acks are ours to
give), lets the core re-cut them into content-defined micro-batches and train,
and writes what comes back: dead letters to ``interactions.dlq``, changed user
and item vectors to their compacted topics, and tombstones for evicted rows.

Every ``checkpoint_seconds`` it settles: flushes the producer (the vectors of
every processed batch are then in Kafka), commits one RocksDB write batch with
the changed rows and the offsets they reflect, and only then acks those records
to faust, which commits them to Kafka. Kafka's committed offset therefore never
passes the durable state; records between the two are skipped by offset on
restart, so after a crash each record is applied exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import faust
import numpy as np
from prometheus_client import Gauge

from paramserver.stores import RowStore
from stream import faults
from stream.batching import BATCH_MS, BATCH_SIZE
from stream.checkpoint import commit_checkpoint
from stream.core import BatchOutput, RawRecord, WorkerCore
from stream.metrics import WorkerMetrics
from stream.outbox import Outbox
from stream.publisher import BatchSender
from stream.topics import Topics
from stream.training import ITEMS, USERS, TrainConfig

log = logging.getLogger("streambed.worker")


@dataclass(frozen=True)
class WorkerConfig:
    bootstrap: str = "127.0.0.1:9092"
    app_id: str = "streambed-worker"
    topics: Topics = field(default_factory=Topics)
    batch_size: int = BATCH_SIZE
    batch_ms: int = BATCH_MS
    # how long past a quiet batch's window the idle cut waits; it only has to cover clock
    # skew between this host and the broker (the cut also asks the broker that every record
    # appended before now has been read). 200 ms made a lone event searchable 0.30 s after
    # produce (p50), 50 ms 0.145 s (bench.e2e --lone 20, same session)
    idle_grace_ms: int = 50
    # vectors of consecutive micro-batches are published together, the last version of each
    # row only, after at most this long (and at the end of every fetch and before any
    # checkpoint): under a backlog that sends each popular row once, not once a batch
    publish_ms: int = 100
    checkpoint_seconds: float = 1.0
    # how long a fetch may wait at the broker for data (faust fixes aiokafka's at 1500 ms:
    # see prompt_fetches)
    fetch_max_wait_ms: int = 100
    # how long the group waits for a member that died without leaving (kill -9) before
    # handing its partitions to a restarted worker; faust's default is 60 s
    session_timeout_s: float = 10.0
    train: TrainConfig = field(default_factory=TrainConfig)
    # faust's own directory (default "<app id>-data" in the working directory)
    datadir: str | None = None

    def faust_settings(self) -> dict[str, Any]:
        extra = {"datadir": self.datadir} if self.datadir else {}
        return {
            **extra,
            "broker": f"kafka://{self.bootstrap}",
            "key_serializer": "raw",
            "value_serializer": "raw",
            "store": "memory://",
            "web_enabled": False,
            "consumer_auto_offset_reset": "earliest",
            "broker_commit_interval": 1.0,
            "producer_acks": -1,
            "producer_linger_ms": 5,
            # a publication goes out as one batch per partition (stream.publisher); the
            # broker takes up to its max.message.bytes (1 MiB by default) per batch
            "producer_max_batch_size": 512 * 1024,
            "topic_partitions": self.topics.partitions,
            "topic_replication_factor": 1,
            # records stay un-acked until a checkpoint covers them, so faust must not wait
            # for them to be acked before a rebalance or a shutdown (it would wait forever)
            "stream_wait_empty": False,
            "broker_session_timeout": self.session_timeout_s,
            "broker_heartbeat_interval": max(self.session_timeout_s / 4, 0.5),
        }


class WorkerHalted(RuntimeError):
    """The worker stopped without checkpointing: some output it made could not be made
    durable. Its last checkpoint is intact; a restart replays from there."""


class Settler:
    """Checkpoints (when a store is given) and then acks the records the checkpoint covers.

    The invariant it keeps: a checkpoint's offsets never pass a record whose effect (its
    rows, its vectors, its dead letter) is not durable. So every send's delivery is checked
    before a checkpoint, a checkpoint that fails to commit keeps its changes for the next
    try, and after an output that cannot be made durable the worker *halts*: no checkpoint
    is written again by this process, the shutdown one included.
    """

    MAX_FAILURES = 3  # consecutive failed checkpoints before the worker halts

    def __init__(
        self,
        core: WorkerCore,
        store: RowStore | None,
        topic: str,
        metrics: WorkerMetrics,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.core, self.store, self.topic, self.metrics = core, store, topic, metrics
        self.interval = interval if store is not None else 0.0
        self.clock = clock
        self.unacked: list[faust.EventT] = []
        # ``items`` records applied since the last checkpoint, with their stream: acked
        # once a checkpoint holds their content rows (redone after a crash: idempotent)
        self.content: list[tuple[faust.StreamT, faust.EventT]] = []
        self.sent: list[Any] = []  # delivery futures of the sends since the last checkpoint
        self.halted: str | None = None  # why this process may no longer checkpoint
        self.on_halt: Callable[[], None] | None = None  # stops the process (set by the app)
        self.failures = 0
        self._last = clock()

    def due(self) -> bool:
        return self.clock() - self._last >= self.interval

    def halt(self, why: str) -> WorkerHalted:
        """Refuse every later checkpoint; the error to raise (it stops the worker)."""
        if self.halted is None:
            self.halted = why
            self.metrics.halted.set(1)
            log.error("worker halted, no further checkpoint: %s", why)
            if self.on_halt is not None:
                self.on_halt()
        return WorkerHalted(why)

    def undelivered(self) -> str | None:
        """Why the sends since the last checkpoint are not all durable (None: they are)."""
        for future in self.sent:
            if not future.done():
                return "a send was still in flight after the producer's flush"
            if future.cancelled() or future.exception() is not None:
                exc = future.exception() if not future.cancelled() else "cancelled"
                return f"a send failed: {type(exc).__name__}: {exc}"
        return None

    async def checkpoint(self, app: faust.App) -> dict[int, int] | None:
        """Make the state durable (when there is a store); the offsets it reflects, or None
        when no checkpoint was made (it failed; its changes wait for the next one)."""
        if self.halted is not None:
            raise WorkerHalted(self.halted)
        offsets = self.core.checkpoint_offsets()
        if self.store is not None:
            started = time.perf_counter()
            await app.producer.flush()  # the vectors these offsets produced are in Kafka first
            problem = self.undelivered()
            if problem is not None:
                raise self.halt(problem)
            try:
                faults.checkpoint_pause()
                writes = commit_checkpoint(self.core, self.store, self.topic)
            except Exception as exc:  # noqa: BLE001 - kept for the next try, then halted
                self.failures += 1
                self.metrics.checkpoint_failures.inc()
                log.error("checkpoint failed (%d in a row): %s: %s", self.failures,
                          type(exc).__name__, exc)  # fmt: skip
                if self.failures >= self.MAX_FAILURES:
                    raise self.halt(f"{self.failures} checkpoints in a row failed") from exc
                self._last = self.clock()
                return None
            self.failures = 0
            self.metrics.checkpoint_seconds.observe(time.perf_counter() - started)
            self.metrics.checkpoint_writes.inc(len(writes))
        self.sent = []
        self._last = self.clock()
        return offsets

    def pending(self) -> bool:
        """Whether records wait for a checkpoint to be acked."""
        return bool(self.unacked or self.content)

    async def settle(self, stream: faust.StreamT, app: faust.App) -> None:
        """Checkpoint, then ack to faust the records the checkpoint covers."""
        # taken before the checkpoint: every one of them is applied (the lock is held)
        content, self.content = self.content, []
        offsets = await self.checkpoint(app)
        if offsets is None:
            self.content = content + self.content
            return
        for source, event in content:
            await source.ack(event)
        keep = []
        for event in self.unacked:
            message = event.message
            if message.offset < offsets.get(message.partition, 0):
                await stream.ack(event)
            else:
                keep.append(event)
        self.unacked = keep


class PartitionLag:
    """The worker's consumer lag per partition: the high watermark its consumer last saw
    minus the next offset to process. Reads the consumer's cached watermarks (no broker
    call), so it is cheap enough to run after every batch."""

    def __init__(self, gauge: Gauge, highwater: Callable[[Any], int | None]) -> None:
        self.gauge, self.highwater = gauge, highwater
        self.next: dict[Any, int] = {}  # TP -> next offset to process

    def processed(self, events: list[faust.EventT]) -> None:
        for e in events:
            tp, offset = e.message.tp, e.message.offset + 1
            if offset > self.next.get(tp, -1):
                self.next[tp] = offset
        self.refresh()

    def caught_up(self, ends: Mapping[Any, int] | None = None) -> bool:
        """Whether every partition read so far is read to its end: ``ends`` (fresh from the
        broker), else the high watermarks last seen. An unknown end is not caught up."""
        for tp, offset in self.next.items():
            high = self.highwater(tp) if ends is None else ends.get(tp)
            if high is None or offset < high:
                return False
        return True

    def refresh(self) -> None:
        for tp, offset in self.next.items():
            high = self.highwater(tp)
            if high is not None:
                labels = {"topic": tp.topic, "partition": str(tp.partition)}
                self.gauge.labels(**labels).set(max(0, high - offset))


class LogEnds:
    """The end offsets of partitions, asked of the broker at the moment of asking, by a
    kafka-python client of its own on one thread. Not through faust's consumer: its thread
    takes such a call only between long polls (faust sets ``fetch_max_wait_ms=1500``), so
    each answer took ~1.2 s, and every idle micro-batch waited that long (the demo's live
    rounds: vectors searchable 1.52 s after produce, against 0.31 s without the question).
    """

    def __init__(self, bootstrap: str, timeout_s: float = 2.0) -> None:
        self.bootstrap, self.timeout_s = bootstrap, timeout_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="log-ends")
        self._consumer: Any = None

    def _ask(self, tps: list[Any]) -> dict[Any, int]:
        from kafka import KafkaConsumer, TopicPartition

        if self._consumer is None:
            self._consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                request_timeout_ms=int(self.timeout_s * 1000), client_id="streambed-log-ends",
                bootstrap_timeout_ms=int(self.timeout_s * 1000),  # kafka-python's is 30 s
            )  # fmt: skip
        ask = {TopicPartition(tp.topic, tp.partition): tp for tp in tps}
        ends = self._consumer.end_offsets(list(ask), timeout_ms=int(self.timeout_s * 1000))
        return {ask[tp]: offset for tp, offset in ends.items()}

    async def __call__(self, tps: list[Any]) -> dict[Any, int] | None:
        """Each partition's end offset, or None when the broker does not answer in time."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._pool, self._ask, list(tps)), self.timeout_s
            )
        except Exception:  # noqa: BLE001 - no answer (an outage): the ends are unknown
            return None

    def close(self) -> None:
        """Close the client and end the thread (after any question still being asked)."""
        self._pool.submit(self._close)
        self._pool.shutdown(wait=True)

    def _close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


@dataclass
class Live:
    """What the idle timer needs from the agent: its stream, and when it was last busy with
    records (the end of its work on them, not their delivery: a worker slower than the
    grace period would otherwise always look idle, and the timer would cut its backlog
    into small batches)."""

    delivered: float
    stream: faust.StreamT | None = None


def build_app(
    config: WorkerConfig,
    core: WorkerCore,
    metrics: WorkerMetrics,
    store: RowStore | None = None,
    encode: Callable[[list[str]], np.ndarray] | None = None,
    initial: BatchOutput | None = None,
    settler: Settler | None = None,
) -> faust.App:
    """The worker app. ``encode``: embed the ``items`` topic's content (None: ignore it).
    ``initial``: vectors to publish once at start (a fresh bootstrap's). ``settler``: the
    checkpointer (made here by default; pass one to learn afterwards whether it halted)."""
    prompt_fetches(config.fetch_max_wait_ms)
    app = faust.App(config.app_id, **config.faust_settings())
    topics = config.topics
    interactions = app.topic(topics.interactions, key_type=bytes, value_type=bytes)
    if settler is None:
        settler = Settler(core, store, topics.interactions, metrics, config.checkpoint_seconds)
    # a crashed agent leaves faust running without it: stop the whole worker (SIGTERM: a
    # graceful stop, whose shutdown checkpoint the halt refuses)
    settler.on_halt = lambda: os.kill(os.getpid(), signal.SIGTERM)
    send_fault = faults.SendFault()
    lock = asyncio.Lock()  # the agent and the idle timer take turns with the core
    live = Live(delivered=time.monotonic())
    lag = PartitionLag(metrics.consumer_lag, lambda tp: app.consumer.highwater(tp))

    def producer() -> Any:
        """The aiokafka producer faust starts (not in faust's ProducerT protocol); Topic.send's
        channel machinery cost ~0.4 ms a record."""
        return app.producer._ensure_producer()  # type: ignore[attr-defined]

    batches = BatchSender(producer, send_fault.check)

    async def publish(out: BatchOutput) -> None:
        """Dead letters, changed vectors and tombstones of one step, to their topics."""
        for letter in out.dead_letters:  # unkeyed and few: faust's send spreads them
            await send(topics.dlq, one_letter(letter.payload))
        for topic, vectors, evicted in (
            (topics.item_vectors, out.items, out.evicted_items),
            (topics.user_vectors, out.users, out.evicted_users),
        ):
            records: list[tuple[bytes, bytes | None]] = [
                (r.key.encode(), r.encode()) for r in vectors
            ]
            # a tombstone: compaction forgets the id, replicas drop it
            records += [(key.encode(), None) for key in evicted]
            await send(topic, batches.send(topic, records))
        record_published(metrics, out)

    async def one_letter(payload: bytes) -> list[Any]:
        send_fault.check()
        return [await app.producer.send(topics.dlq, None, payload, None, None, None)]

    async def send(topic: str, sending: Awaitable[list[Any]]) -> None:
        """Hand records to the producer; their delivery futures go to the settler."""
        try:
            settler.sent.extend(await sending)
        except Exception as exc:
            raise settler.halt(f"could not send to {topic}: {type(exc).__name__}: {exc}") from exc

    outbox = Outbox()

    async def run(batches: list[list[RawRecord]], stream: faust.StreamT | None = None) -> None:
        """Train on ``batches``; their output is all sent when this returns. With ``stream``,
        checkpoint between them when one is due (a fetch of batch records may hold many)."""
        since = time.monotonic()
        for batch in batches:
            started = time.perf_counter()
            out = process_safely(core, batch, settler)
            outbox.add(out, len(batch))
            record_metrics(metrics, core, out, len(batch), time.perf_counter() - started)
            if time.monotonic() - since >= config.publish_ms / 1000:
                await send_outbox()
                since = time.monotonic()
            if stream is not None and settler.due():
                await send_outbox()
                await settler.settle(stream, app)
            await asyncio.sleep(0)  # the producer's sender and the consumer share this loop
        await send_outbox()

    async def send_outbox() -> None:
        if not outbox:  # then nothing was merged either (a replaced row keeps its key there)
            return
        if outbox.merged:
            metrics.vectors_coalesced.inc(outbox.merged)
        await publish(outbox.take(core.item_records))

    @app.agent(interactions)
    async def train(stream: faust.StreamT) -> None:  # pragma: no cover - exercised via Kafka
        live.stream = stream
        # noack_take is faust-streaming's (0.11+), missing from its StreamT protocol
        take = stream.noack_take  # type: ignore[attr-defined]
        with halting(settler, "the interactions agent"):
            async for events in take(config.batch_size, within=config.batch_ms / 1000):
                records = [
                    RawRecord(
                        value=e.value,
                        timestamp_ms=int(e.message.timestamp * 1000),
                        partition=e.message.partition,
                        offset=e.message.offset,
                    )
                    for e in events
                ]
                async with lock:
                    live.delivered = time.monotonic()
                    batches, replayed = core.accept(records)
                    if replayed:
                        metrics.replayed.inc(replayed)
                    settler.unacked.extend(events)
                    await run(batches, stream)
                    lag.processed(events)
                    if settler.due():
                        await settler.settle(stream, app)
                    live.delivered = time.monotonic()  # idle is counted from here

    if initial is not None:

        @app.task
        async def publish_initial() -> None:  # pragma: no cover - exercised via Kafka
            await publish(initial)
            log.info("published %d + %d bootstrap vectors", len(initial.items), len(initial.users))

    if encode is not None:
        items_topic = app.topic(topics.items, key_type=bytes, value_type=bytes)

        @app.agent(items_topic)
        async def content(stream: faust.StreamT) -> None:  # pragma: no cover - via Kafka
            # content rows are checkpointed with the tables, so an items record is acked
            # only once a checkpoint holds its row (faust's take_events would ack it at once,
            # and a crash before the checkpoint would lose the row for good); one redone
            # after a crash rewrites the same row
            take = stream.noack_take  # type: ignore[attr-defined]  # not in StreamT
            with halting(settler, "the items agent"):
                async for events in take(64, within=0.05):
                    records = [
                        RawRecord(value=e.value, key=e.key, partition=e.message.partition,
                                  timestamp_ms=int(e.message.timestamp * 1000),
                                  offset=e.message.offset)
                        for e in events
                    ]  # fmt: skip
                    async with lock:
                        started = time.perf_counter()
                        out = core.add_items(records, encode)
                        await publish(out)
                        settler.content.extend((stream, e) for e in events)
                        metrics.content_items.inc(out.accepted)
                        metrics.content_seconds.observe(time.perf_counter() - started)
                        for letter in out.dead_letters:
                            metrics.dead_letters.labels(reason=letter.reason).inc()
                        if out.failed_steps:
                            metrics.failed_steps.inc(out.failed_steps)

    log_ends = LogEnds(config.bootstrap)

    async def at_end() -> bool:
        """Whether the consumer has read every partition to the end of its log, asked of the
        broker now. The partial batch may close only then: a consumer starved (a broker
        outage, a fetch held back on a busy machine) or going by a watermark it saw some
        time ago would cut it where the records happened to stop, and a replay would cut
        it elsewhere. With append-time stamps, a record appended after this answer lies
        past the batch's window, which ended ``idle_grace_ms`` ago."""
        if not lag.caught_up():  # by the cached watermarks: no need to ask
            return False
        ends = await log_ends(list(lag.next))
        return ends is not None and lag.caught_up(ends)

    @app.timer(interval=max(config.idle_grace_ms / 4000, 0.02))
    async def idle() -> None:  # pragma: no cover - exercised via Kafka
        stream = live.stream
        if stream is None:
            return
        if settler.halted is not None:
            return
        async with lock:
            with halting(settler, "the idle timer"):
                quiet = time.monotonic() - live.delivered >= config.idle_grace_ms / 1000
                if quiet:  # no records delivered: the watermarks may still have moved
                    lag.refresh()
                now_ms = int(time.time() * 1000)
                if quiet and core.batcher.due(now_ms, config.idle_grace_ms) and await at_end():
                    await run(core.batcher.flush_idle(now_ms, config.idle_grace_ms))
                if settler.pending() and (quiet or settler.due()):
                    await settler.settle(stream, app)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # mode's signal stubs are narrow
    async def close_log_ends(sender: faust.App, *_: Any, **__: Any) -> None:  # pragma: no cover
        await asyncio.get_running_loop().run_in_executor(None, log_ends.close)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # mode's signal stubs are narrow
    async def final_checkpoint(sender: faust.App, *_: Any, **__: Any) -> None:  # pragma: no cover
        # a clean stop keeps its work: without this, up to checkpoint_seconds of it (or all
        # since the stream last went quiet) would be redone on restart. The partial batch
        # still pending is left to the restart, so batches stay what they would have been.
        if store is None:
            return
        if settler.halted is not None:
            log.error("no final checkpoint: %s; the last one stands", settler.halted)
            return
        async with lock:
            try:
                offsets = await settler.checkpoint(sender)
            except WorkerHalted:
                return  # logged by halt; the last checkpoint stands
        log.info("final checkpoint at %s", offsets)

    return app


def prompt_fetches(wait_ms: int) -> None:
    """Make faust's consumers long-poll the broker for at most ``wait_ms``.

    faust-streaming builds its aiokafka consumer with ``fetch_max_wait_ms=1500``, a literal
    with no setting. aiokafka keeps one fetch in flight per broker, for the partitions with
    nothing buffered; a partition drained meanwhile waits for that fetch to come back, up
    to the full wait when the others are quiet. Paced at 2,000 ev/s over 4 partitions that
    put 40% of micro-batches 1-2.5 s behind: freshness p99 2.08 / 2.00 s at 1,500 ms
    against 0.62 / 0.91 s at 100 ms and 0.96 / 1.16 s at 300 ms (two runs each). Set on the
    consumer before faust starts it (aiokafka reads it in ``start``).
    """
    from faust.transport.drivers import aiokafka as driver

    thread = driver.AIOKafkaConsumerThread
    original = getattr(thread, "_streambed_original", thread._create_worker_consumer)

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = wait_ms
        return consumer

    thread._streambed_original = original  # type: ignore[attr-defined]
    thread._create_worker_consumer = create  # type: ignore[method-assign]


@contextlib.contextmanager
def halting(settler: Settler, what: str) -> Iterator[None]:
    """Any error escaping ``what`` halts the worker: faust would log an agent's crash and
    run on without it, while the idle timer went on checkpointing offsets past records
    the dead agent had taken but not applied."""
    try:
        yield
    except WorkerHalted:
        raise
    except Exception as exc:
        log.exception("%s failed", what)
        raise settler.halt(f"{what} failed: {type(exc).__name__}: {exc}") from exc


def process_safely(core: WorkerCore, records: list[RawRecord], settler: Settler) -> BatchOutput:
    """Run the core (which isolates bad records and failing steps itself). An error that
    escapes it is not one record's: the tables may hold half a step, so the worker halts
    rather than checkpoint them, and restarts from its last checkpoint."""
    with halting(settler, f"a micro-batch of {len(records)} records"):
        return core.process(records)


def record_published(metrics: WorkerMetrics, out: BatchOutput) -> None:
    """Count what one publication sent (after the outbox merged its batches)."""
    for kind, vectors, evicted in (("item", out.items, out.evicted_items),
                                   ("user", out.users, out.evicted_users)):  # fmt: skip
        metrics.published(kind, len(vectors), len(evicted))


def record_metrics(
    metrics: WorkerMetrics, core: WorkerCore, out: BatchOutput, n: int, seconds: float
) -> None:
    metrics.record(out, n, seconds)
    metrics.rows.labels(table=USERS).set(core.trainer.ps.size(USERS))
    metrics.rows.labels(table=ITEMS).set(core.trainer.ps.size(ITEMS))
