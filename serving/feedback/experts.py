"""Experts as identities: each has a name and a token; the store keeps only the token's hash. The feedback
service accepts an expert's token as well as its own, and records that expert as the author of what the
token submits."""

import secrets

from serving import settings
from serving.feedback.store import FeedbackStore, is_plain_name, token_hash


def add(store: FeedbackStore, name: str, role: str = "expert") -> str:
    """Record a new expert with a role (an operator may also roll back, requeue and reject); returns the token,
    which is shown this once and never stored."""
    if not name or len(name) > settings.MAX_TEXT or not is_plain_name(name) or name != name.strip():
        raise ValueError(
            f"expert name {name[:40]!r}: give a plain name of at most {settings.MAX_TEXT} characters "
            "(no / or \\, no control characters, no surrounding spaces)"
        )
    token = secrets.token_urlsafe(32)
    store.add_expert(name, token_hash(token), role)
    return token


def remove(store: FeedbackStore, name: str) -> None:
    if not store.remove_expert(name):
        raise ValueError(f"no expert named {name!r} (abn experts list shows them)")
