"""A stateless clean-up and fan-out: raw sign-ups in, clean sign-ups and one record per
interest out, no state, no windows.

    streams topics create examples/cleanup/app.py
    streams worker examples/cleanup/app.py

Two pipelines branch from one stream: each reads ``signups`` and writes its own topic.
A sign-up without a usable e-mail is dropped; a value that is not a JSON object goes to
``signups.dlq``, and so does one on which the clean-up raises (stage ``map``).
"""

from __future__ import annotations

from typing import Any

from streams import App

PRIVATE = ("password", "ip", "phone")


def clean(signup: dict[str, Any]) -> dict[str, Any]:
    """Trimmed, lower-case e-mail; no private fields; interests as a list of strings."""
    interests = signup.get("interests") or []
    return {
        **{k: v for k, v in signup.items() if k not in PRIVATE},
        "email": signup["email"].strip().lower(),
        "interests": [str(i).strip().lower() for i in interests],
    }


def per_interest(signup: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per interest of a clean sign-up."""
    return [{"user_id": signup["user_id"], "interest": i} for i in signup["interests"]]


app = App("cleanup-app")
signups = app.topic("signups")

cleaned = (
    app.stream(signups, key="user_id").filter(lambda s: "@" in str(s.get("email", ""))).map(clean)
)
cleaned.to("signups-clean")
cleaned.flat_map(per_interest).to("interests")
