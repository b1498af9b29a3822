"""Training-time defenses against model inversion, one small pluggable piece each.

``build_defense({"name": "midre", "a_h": 0.4})`` returns a :class:`Defense` that the one trainer
(:mod:`midre.train`) calls at fixed points; see :mod:`midre.defenses.base` for the hooks.
A list of specs, or a name joined with ``+`` (``"midre+nls"``), composes several defenses.
"""

from midre.defenses import augment as _augment  # noqa: F401  (registers cutmix, random-crop, gaussian-blur)
from midre.defenses import bido as _bido  # noqa: F401  (registers bido)
from midre.defenses import erasing as _erasing  # noqa: F401  (registers nodef, midre, fixed/entire-erasing)
from midre.defenses import label_smoothing as _label_smoothing  # noqa: F401  (registers nls)
from midre.defenses import lowrank as _lowrank  # noqa: F401  (registers loft)
from midre.defenses import mid as _mid  # noqa: F401  (registers mid)
from midre.defenses import skip as _skip  # noqa: F401  (registers mi-rad)
from midre.defenses import transfer as _transfer  # noqa: F401  (registers tl-dmi)
from midre.defenses import trapdoor as _trapdoor  # noqa: F401  (registers trap-mid)
from midre.defenses.base import (
    Defense,
    TrainContext,
    Transform,
    adaptive_refusal,
    build_defense,
    defense_label,
    defense_names,
    defense_path_params,
    register_defense,
)

__all__ = ["Defense", "TrainContext", "Transform", "adaptive_refusal", "build_defense", "defense_label",
           "defense_names", "defense_path_params", "register_defense"]
