"""Matching parameter names between a base model and a tuned model or adapter.

The same weight is often named with different wrapper prefixes: a BertModel saves
``encoder.layer.0...`` while a fine-tuned BertForSequenceClassification saves ``bert.encoder.layer.0...``,
and PEFT adds ``base_model.model.``. A tuned name matches the base name that equals it after dropping
up to three leading components from either side (the shortest drop wins; ambiguous drops are ignored).
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_DROPPED_PREFIX = 3


def _suffixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[i:]) for i in range(min(MAX_DROPPED_PREFIX, len(parts) - 1) + 1)]


class KeyMatcher:
    """Maps tuned/adapter parameter names to base parameter names."""

    def __init__(self, base_keys: Iterable[str]):
        self._exact = set(base_keys)
        self._by_suffix: dict[str, str | None] = {}
        for drop in range(MAX_DROPPED_PREFIX + 1):
            for key in self._exact:
                suffixes = _suffixes(key)
                if drop >= len(suffixes):
                    continue
                suffix = suffixes[drop]
                if suffix in self._by_suffix and self._by_suffix[suffix] != key:
                    if drop > 0:
                        self._by_suffix[suffix] = None  # ambiguous: two base keys share it
                    continue
                self._by_suffix.setdefault(suffix, key)

    def base_key(self, tuned_key: str) -> str | None:
        """The base parameter name for ``tuned_key``, or None if there is none."""
        if tuned_key in self._exact:
            return tuned_key
        for suffix in _suffixes(tuned_key):
            found = self._by_suffix.get(suffix)
            if found is not None:
                return found
        return None
