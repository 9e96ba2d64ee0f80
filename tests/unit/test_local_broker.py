"""Pure parts of the local broker manager."""

from __future__ import annotations

import base64

from streams.broker.local import new_cluster_id


def test_cluster_ids_never_look_like_options() -> None:
    # Roughly one random id in 64 would start with "-" without the guard.
    ids = [new_cluster_id() for _ in range(5_000)]
    assert not any(i.startswith("-") for i in ids)
    assert all(len(i) == 22 for i in ids)
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
    assert len(set(ids)) == len(ids)
