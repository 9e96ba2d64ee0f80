"""A digest of the reference pipeline's results through the test driver: its outputs, dead
letters (keys and values) and late records on a fixed generated input (hopping 10 s / 5 s
windows, grace 2 s; 3 % duplicates, 2 % late, 3 % invalid), to compare two versions of the
engine byte for byte.

    python bench/reference_digest.py                      # this checkout
    git worktree add /tmp/old <rev>
    PYTHONPATH=/tmp/old python bench/reference_digest.py  # another one, same interpreter
"""

import hashlib

import streams
from streams.apps.reference import build
from streams.config import Settings
from streams.generator import generate_messages
from streams.testing import TestDriver

settings = Settings.from_env(
    {
        "STREAMS_WINDOW_SIZE_MS": "10000",
        "STREAMS_WINDOW_STEP_MS": "5000",
        "STREAMS_GRACE_MS": "2000",
        "STREAMS_LATE_TOPIC": "events.late",
    }
)
app = build(settings)
driver = TestDriver(app, partitions=3, settings=settings)
msgs = list(
    generate_messages(60_000, users=500, seed=7, dup_ratio=0.03, late_ratio=0.02, bad_ratio=0.03)
)
for lo in range(0, len(msgs), 2000):
    chunk = msgs[lo : lo + 2000]
    driver.send_many(
        settings.input_topic,
        [m.value for m in chunk],
        keys=[m.key for m in chunk],
        timestamp=1_700_000_000_000,
    )
driver.advance(10**9)
h = hashlib.sha256()
counts = {}
for topic in (settings.output_topic, settings.dlq_topic, settings.late_topic):
    try:
        recs = driver.records(topic)
    except Exception as exc:
        print(topic, "unreadable", exc)
        continue
    counts[topic] = len(recs)
    for r in recs:
        h.update(repr((topic, r.key, r.value)).encode())
print(streams.__file__, counts, h.hexdigest())
