"""Seeds of the per-epoch random streams of a training run.

The draws of epoch ``e`` in a run seeded ``s`` come from streams seeded ``s * STREAM + e``
(:func:`epoch_seed`), so a resumed run re-creates an epoch's draws from ``(s, e)`` alone, without
saving generator states. Each ``STREAM`` is a prime above any epoch count: within one stream no two
``(seed, epoch)`` pairs share a seed, and the streams of one epoch start from unrelated seeds.

A run over several devices (``TrainConfig.devices``) gives each rank process its own stream of the
per-rank draws (augmentation, erasing, dropout): :func:`rank_seed` mixes the rank and the number of
ranks into the epoch's seed. One process (rank 0 of 1) keeps the epoch's seed itself.
"""

from __future__ import annotations

import hashlib

__all__ = ["AUGMENT_STREAM", "ENTIRE_ERASING_STREAM", "GLOBAL_STREAM", "SHUFFLE_STREAM", "TRAPDOOR_STREAM",
           "epoch_seed", "rank_seed"]

#: torch's global generator (dropout & co) while the trainer runs an epoch.
GLOBAL_STREAM = 1_000_037
#: the trainer's shuffling of the epoch's images.
SHUFFLE_STREAM = 1_000_003
#: the trainer's on-device generator: augmentation and the defenses' per-batch draws (erasing).
AUGMENT_STREAM = 1_000_033
#: Entire Erasing's choice of the images it drops in an epoch (a generator of its own, so the choice
#: does not depend on the batch order).
ENTIRE_ERASING_STREAM = 100_003
#: Trap-MID's initial triggers (drawn once, before the first epoch, on the CPU).
TRAPDOOR_STREAM = 1_000_039


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """The seed of ``stream`` in ``epoch`` of a run seeded ``seed``."""
    return seed * stream + epoch


def rank_seed(seed: int, rank: int, world_size: int) -> int:
    """The seed of rank ``rank`` of ``world_size`` for a stream that one process seeds with ``seed``.

    ``world_size == 1``: ``seed`` itself, so a one-process run draws what it always drew. Otherwise
    63 bits of a hash of ``(seed, rank, world_size)``: every rank draws a stream of its own, unrelated
    to the other ranks' and to the one-process stream, and a run over another number of devices draws
    other streams again.

    Example:
        >>> rank_seed(1234, 0, 1)
        1234
        >>> rank_seed(1234, 0, 2) != rank_seed(1234, 1, 2)
        True
    """
    if world_size == 1:
        return seed
    digest = hashlib.blake2b(f"midre-rank:{seed}:{rank}:{world_size}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1
