"""Views and clicks for the ad example: ``(topic, event)`` pairs in event-time order with a
little disorder; most clicks follow a view of the same user within minutes, some none.

    python -m examples.ads.generate --count 20000 --seed 1
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Iterator
from typing import Any


def events(
    count: int, *, seed: int = 1, start_ts: int | None = None, users: int = 300
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``count`` views, each with a click of its user within minutes two times in three."""
    rng = random.Random(seed)
    ts = int(time.time() * 1000) if start_ts is None else start_ts
    for n in range(count):
        ts += rng.randint(0, 2_000)
        user = f"u{rng.randint(0, users - 1)}"
        view = {"id": f"v{n}", "user": user, "ts": ts, "ad": f"ad-{rng.randint(1, 20)}"}
        yield "ad-views", view
        if rng.random() < 0.67:
            delay = rng.choice([10_000, 60_000, 300_000, 900_000])
            yield "ad-clicks", {"id": f"c{n}", "user": user, "ts": ts + rng.randint(0, delay)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    import orjson

    out = sys.stdout.buffer
    for topic, event in events(args.count, seed=args.seed):
        out.write(orjson.dumps({"topic": topic, **event}) + b"\n")


if __name__ == "__main__":
    main()
