"""Orders for the example: JSON lines on stdout, reproducible by seed.

A few are repeated (producer retries), some unpaid, some late, some invalid.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import orjson


def orders(
    count: int, *, seed: int = 7, customers: int = 200, start_ts: int | None = None
) -> list[bytes]:
    """``count`` order messages as JSON bytes."""
    rng = random.Random(seed)
    now = int(time.time() * 1000) if start_ts is None else start_ts
    out: list[bytes] = []
    sent: list[bytes] = []
    for i in range(count):
        roll = rng.random()
        if sent and roll < 0.02:
            out.append(rng.choice(sent))  # a producer retry
            continue
        if roll < 0.03:
            out.append(b'{"order_id": "broken"')  # not JSON
            continue
        ts = now + i * 20 - rng.randint(0, 3_000)
        if roll < 0.04:
            ts -= 300_000  # far behind: late
        order = {
            "order_id": f"o{seed}-{i}",
            "customer_id": f"c{rng.randint(1, customers):04d}",
            "status": rng.choice(["paid", "paid", "paid", "created", "cancelled"]),
            "amount": round(rng.uniform(1, 500), 2),
            "sku": f"sku-{rng.randint(1, 50)}",
            "ts": ts,
        }
        if rng.random() < 0.3:
            order["discount"] = round(rng.uniform(0, 20), 2)
        value = orjson.dumps(order)
        sent.append(value)
        out.append(value)
    return out


def main() -> None:
    """Write orders to stdout, one per line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    for line in orders(args.count, seed=args.seed):
        sys.stdout.buffer.write(line + b"\n")


if __name__ == "__main__":
    main()
