"""Stratified, seeded train/test split per identity."""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np


def split_counts(n: int, test_fraction: float) -> tuple[int, int]:
    """How many of an identity's ``n`` images go to train and to test.

    ``n_test = round_half_up(n * test_fraction)``, then raised to 1 when ``n >= 2`` and
    ``test_fraction > 0`` (every identity is tested) and lowered to ``n - 1`` (every identity keeps
    at least one training image). ``test_fraction == 0`` or ``n < 2`` gives no test image.

    Examples:
        >>> split_counts(10, 0.2), split_counts(2, 0.1), split_counts(3, 0.9), split_counts(5, 0.5)
        ((8, 2), (1, 1), (1, 2), (2, 3))
    """
    if n < 2 or test_fraction <= 0:
        return n, 0
    n_test = math.floor(n * test_fraction + 0.5 + 1e-9)
    n_test = min(max(n_test, 1), n - 1)
    return n - n_test, n_test


def stratified_split(
    groups: Sequence[Sequence[int]], names: Sequence[str], test_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split each identity's items into train and test, reproducibly.

    Each identity gets its own generator, seeded by ``(seed, crc32(name))``, so an identity's split
    depends only on the seed, its name and its own images: adding or removing other identities (or
    changing ``num_private``) leaves it unchanged.

    Args:
        groups: Per identity, the item indices (in their canonical order).
        names: Identity names, parallel to ``groups``.
        test_fraction: See `split_counts`.
        seed: Non-negative split seed.

    Returns:
        ``(train, test)`` item indices, grouped by identity and in canonical order within one.
    """
    train: list[int] = []
    test: list[int] = []
    for items, name in zip(groups, names, strict=True):
        _, n_test = split_counts(len(items), test_fraction)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
        chosen = set(rng.permutation(len(items))[:n_test].tolist())
        for pos, item in enumerate(items):
            (test if pos in chosen else train).append(item)
    return train, test
