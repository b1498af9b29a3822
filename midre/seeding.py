"""Seeds of the per-epoch random streams of a training run.

The draws of epoch ``e`` in a run seeded ``s`` come from streams seeded ``s * STREAM + e``
(:func:`epoch_seed`), so a resumed run re-creates an epoch's draws from ``(s, e)`` alone, without
saving generator states. Each ``STREAM`` is a prime above any epoch count: within one stream no two
``(seed, epoch)`` pairs share a seed, and the streams of one epoch start from unrelated seeds.
"""

from __future__ import annotations

__all__ = ["AUGMENT_STREAM", "ENTIRE_ERASING_STREAM", "GLOBAL_STREAM", "SHUFFLE_STREAM", "TRAPDOOR_STREAM",
           "epoch_seed"]

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
