"""Training-time defenses against model inversion, one small pluggable piece each.

``build_defense({"name": "midre", "a_h": 0.4})`` returns a :class:`Defense` that the one trainer
(:mod:`midre.train`) calls at fixed points; see :mod:`midre.defenses.base` for the hooks.
A list of specs, or a name joined with ``+`` (``"midre+nls"``), composes several defenses.
"""

from midre.defenses import erasing as _erasing  # noqa: F401  (registers nodef, midre, fixed/entire-erasing)
from midre.defenses.base import Defense, TrainContext, build_defense, defense_names, register_defense

__all__ = ["Defense", "TrainContext", "build_defense", "defense_names", "register_defense"]
