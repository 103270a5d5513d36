"""Topic names and creation (kafka-python admin client)."""

from __future__ import annotations

import contextlib

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from stream.topics import Topics

COMPACTED = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "segment.ms": "600000"}


def topic_specs(topics: Topics) -> list[NewTopic]:
    p = topics.partitions
    return [
        NewTopic(topics.interactions, p, 1),
        NewTopic(topics.dlq, 1, 1),
        NewTopic(topics.items, p, 1, topic_configs=COMPACTED),
        NewTopic(topics.item_vectors, p, 1, topic_configs=COMPACTED),
        NewTopic(topics.user_vectors, p, 1, topic_configs=COMPACTED),
    ]


def ensure_topics(bootstrap: str, topics: Topics) -> list[str]:
    """Create the pipeline's topics that do not exist yet; returns the names created."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="streambed-admin")
    try:
        existing = set(admin.list_topics())
        missing = [t for t in topic_specs(topics) if t.name not in existing]
        if missing:
            # another process may win the race; the topics exist, which is all we need
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
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
