"""The normalized form of a search query, shared by search (its query cache keys on it) and analytics (popular
queries group by it): case and runs of white space do not change what a query asks for — the encoders' tokenizers
are uncased, full-text search ignores both — so "Dog jumping" and "dog  jumping " are one query."""

from __future__ import annotations


def normalized_query(text: str) -> str:
    return " ".join(text.split()).casefold()
