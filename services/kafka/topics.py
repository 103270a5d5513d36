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
