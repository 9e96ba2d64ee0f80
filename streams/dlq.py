"""Dead letters: the headers that say why a message was rejected and where it came from."""

from __future__ import annotations

HEADER_STAGE = "error.stage"
HEADER_MESSAGE = "error.message"
HEADER_TOPIC = "source.topic"
HEADER_PARTITION = "source.partition"
HEADER_OFFSET = "source.offset"
HEADER_TS = "error.ts"
HEADER_REPLAYS = "dlq.replays"


def dead_letter_headers(
    stage: str, message: str, topic: str, partition: int, offset: int, now_ms: int
) -> list[tuple[str, bytes]]:
    """Headers of a dead letter; the value and key stay the original bytes."""
    return [
        (HEADER_STAGE, stage.encode()),
        (HEADER_MESSAGE, message.encode("utf-8", "replace")),
        (HEADER_TOPIC, topic.encode()),
        (HEADER_PARTITION, str(partition).encode()),
        (HEADER_OFFSET, str(offset).encode()),
        (HEADER_TS, str(now_ms).encode()),
    ]


def header_map(headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...]) -> dict[str, str]:
    """Headers as a dict of strings (last one wins), for people and for replay."""
    return {k: v.decode("utf-8", "replace") for k, v in headers}
