"""Payments for the card example: JSON lines, keyed by ``card``, in event-time order with a
little disorder, some cards in bursts, a few payments without a usable amount.

    python -m examples.cards.generate --count 20000 --seed 1 > payments.jsonl
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Iterator
from typing import Any


def payments(
    count: int, *, seed: int = 1, start_ts: int | None = None, cards: int = 500
) -> Iterator[dict[str, Any]]:
    """``count`` payments from ``cards`` cards, starting at ``start_ts`` (default now)."""
    rng = random.Random(seed)
    ts = int(time.time() * 1000) if start_ts is None else start_ts
    for n in range(count):
        ts += rng.randint(0, 400)
        card = f"card-{rng.randint(0, cards - 1):04d}"
        burst = rng.random() < 0.05
        for k in range(3 if burst else 1):
            payment: dict[str, Any] = {
                "id": f"p{n}-{k}",
                "card": card,
                "ts": max(0, ts + k * rng.randint(1_000, 20_000) - rng.randint(0, 2_000)),
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
