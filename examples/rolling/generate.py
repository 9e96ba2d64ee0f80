"""Payments for the rolling example: JSON lines, keyed by ``card``, in event-time order with
up to a second and a half of disorder (within the window's grace), one in a hundred a few
seconds behind (late), one in two hundred without a usable amount.

    python -m examples.rolling.generate --count 20000 --seed 1 > payments.jsonl
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Iterator
from typing import Any


def payments(
    count: int, *, seed: int = 1, start_ts: int | None = None, cards: int = 300
) -> Iterator[dict[str, Any]]:
    """``count`` payments from ``cards`` cards (a few busy ones), from ``start_ts`` (now)."""
    rng = random.Random(seed)
    ts = int(time.time() * 1000) if start_ts is None else start_ts
    for n in range(count):
        ts += rng.randint(0, 200)
        busy = rng.random() < 0.3
        card = f"card-{rng.randint(0, 4 if busy else cards - 1):04d}"
        behind = rng.randint(3_000, 10_000) if rng.random() < 0.01 else rng.randint(0, 1_500)
        payment: dict[str, Any] = {
            "id": f"p{n}",
            "card": card,
            "ts": max(0, ts - behind),
            "amount": round(rng.uniform(1, 300), 2),
        }
        if rng.random() < 0.005:
            payment["amount"] = "n/a"
        yield payment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    import orjson

    out = sys.stdout.buffer
    for payment in payments(args.count, seed=args.seed):
        out.write(orjson.dumps(payment) + b"\n")


if __name__ == "__main__":
    main()
