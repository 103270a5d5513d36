"""Topic names and creation (kafka-python admin client).

The pipeline's topics are the system's, never the broker's defaults: a worker and a
replica call :func:`prepare_topics` at start, which creates what is missing with the
configured partitions and compaction and refuses, with one clear message, topics that
exist with other settings (a broker's auto-created topic has its default partition
count and no compaction: a replica rebuilt from it after retention would miss items).
"""

from __future__ import annotations

import contextlib
import logging
import time

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from stream.topics import Topics

COMPACTED = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "segment.ms": "600000"}
# interactions are stamped by the broker when it appends them, not by their producer: the
# worker cuts micro-batches by these stamps and closes an idle batch once its window has
# passed (stream.batching); with producer stamps a record that reached the broker late
# (a producer stalled on a busy machine) fell into another batch than a replay would put
# it in. The event time is the event's own ``ts``, untouched.
APPEND_TIME = {"message.timestamp.type": "LogAppendTime"}

log = logging.getLogger("streambed.topics")


def topic_specs(topics: Topics) -> list[NewTopic]:
    p = topics.partitions
    return [
        NewTopic(topics.interactions, p, 1, topic_configs=APPEND_TIME),
        NewTopic(topics.dlq, 1, 1),
        NewTopic(topics.items, p, 1, topic_configs=COMPACTED),
        NewTopic(topics.item_vectors, p, 1, topic_configs=COMPACTED),
        NewTopic(topics.user_vectors, p, 1, topic_configs=COMPACTED),
    ]


def scale_out_specs(topics: Topics) -> list[NewTopic]:
    """The scale-out worker's own topics, co-partitioned with ``interactions`` and ``items``
    (a stage's changelog partition p holds the rows of its input partition p)."""
    p = topics.partitions
    return [
        NewTopic(topics.gradients, p, 1),
        NewTopic(topics.user_rows, p, 1, topic_configs=COMPACTED),
        NewTopic(topics.item_rows, p, 1, topic_configs=COMPACTED),
    ]


def ensure_topics(bootstrap: str, topics: Topics, scale_out: bool = False) -> list[str]:
    """Create the pipeline's topics that do not exist yet; returns the names created."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="streambed-admin")
    specs = topic_specs(topics) + (scale_out_specs(topics) if scale_out else [])
    try:
        existing = set(admin.list_topics())
        missing = [t for t in specs if t.name not in existing]
        if missing:
            # another process may win the race; the topics exist, which is all we need
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
        return [t.name for t in missing]
    finally:
        admin.close()


class TopicMismatch(RuntimeError):
    """A pipeline topic exists with settings the pipeline cannot run on."""


def topic_problems(admin: KafkaAdminClient, topics: Topics) -> list[str]:
    """Why the existing topics do not match their specs (empty: they do)."""
    specs = topic_specs(topics)
    described = {t["name"]: t for t in admin.describe_topics([s.name for s in specs])}
    compacted = [s.name for s in specs if s.topic_configs.get("cleanup.policy") == "compact"]
    configs = _configs(admin, compacted)
    problems = []
    for spec in specs:
        found = described.get(spec.name)
        if found is None or found.get("error_code"):
            problems.append(f"{spec.name} does not exist")
            continue
        have = len(found.get("partitions") or [])
        if spec.name != topics.dlq and have != spec.num_partitions:
            problems.append(
                f"{spec.name} has {have} partitions, the pipeline is configured for "
                f"{spec.num_partitions} (--partitions)"
            )
        if spec.name in compacted:
            policy = configs.get(spec.name, {}).get("cleanup.policy", {}).get("value") or "delete"
            if "compact" not in policy:
                problems.append(
                    f"{spec.name} has cleanup.policy={policy}, it must be compacted (a replica "
                    "rebuilt from it after retention would miss every unchanged key)"
                )
    return problems


def _configs(admin: KafkaAdminClient, names: list[str]) -> dict[str, dict]:  # type: ignore[type-arg]
    """Each topic's described configs (name -> {key: {"value": ...}})."""
    if not names:
        return {}
    found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    return found.get("topic", {})  # type: ignore[no-any-return]


def prepare_topics(
    bootstrap: str, topics: Topics, timeout: float = 60.0, scale_out: bool = False
) -> list[str]:
    """Create the missing topics and check them all; the names created. Raises
    :class:`TopicMismatch` for a topic with the wrong settings, and ``KafkaError`` when no
    broker answers within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="streambed-admin")
            break
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)
    try:
        existing = set(admin.list_topics())
        specs = topic_specs(topics) + (scale_out_specs(topics) if scale_out else [])
        missing = [t for t in specs if t.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
        for _ in range(50):  # a created topic's metadata takes a moment to reach every broker
            problems = topic_problems(admin, topics)
            if not any(p.endswith("does not exist") for p in problems):
                break
            time.sleep(0.1)
        if problems:
            raise TopicMismatch(
                "; ".join(problems) + ". Delete or fix these topics, or start with the "
                "settings they have."
            )
        stamp = _configs(admin, [topics.interactions]).get(topics.interactions, {})
        kind = (stamp.get("message.timestamp.type") or {}).get("value") or "CreateTime"
        if kind != APPEND_TIME["message.timestamp.type"]:
            log.warning(
                "%s has message.timestamp.type=%s: exactly once holds, but a record that "
                "reaches the broker late may fall into another micro-batch on a replay "
                "(set it to LogAppendTime for replays that repeat the updates exactly)",
                topics.interactions, kind,
            )  # fmt: skip
        return [t.name for t in missing]
    finally:
        admin.close()


def checkpoint_mismatch(bootstrap: str, topic: str, offsets: dict[int, int]) -> str | None:
    """Why a worker checkpoint cannot belong to this topic (None if it can).

    A checkpoint past a partition's end means the topic was recreated or this is another
    cluster: resuming would silently skip that many new records.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="streambed-check")
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            return None  # the topic does not exist yet: the worker creates it, nothing to skip
        missing = sorted(set(offsets) - partitions)
        if missing:
            return f"the checkpoint has partitions {missing} that {topic} does not"
        tps = [TopicPartition(topic, p) for p in sorted(offsets)]
        end = consumer.end_offsets(tps)
        ahead = {tp.partition: (offsets[tp.partition], end[tp]) for tp in tps
                 if offsets[tp.partition] > end[tp]}  # fmt: skip
        if ahead:
            detail = ", ".join(
                f"partition {p}: checkpoint {o} > end {e}" for p, (o, e) in ahead.items()
            )
            return f"the checkpoint is ahead of {topic} ({detail}); was the topic recreated?"
        return None
    finally:
        consumer.close()


def committed_lag(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    """Records on ``topic`` past ``group``'s committed offsets (from the broker)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                             enable_auto_commit=False)  # fmt: skip
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = consumer.end_offsets(tps)
        return sum(max(0, ends[tp] - (consumer.committed(tp) or 0)) for tp in tps)
    finally:
        consumer.close()
