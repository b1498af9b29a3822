"""MIDRE: Model Inversion Defense via Random Erasing, and the tools to measure it.

Paper: *Random Erasing vs. Model Inversion: A Promising Defense or a False Hope?* (TMLR 2025).
See ``docs/library-api.md`` for the module map.
"""

__version__ = "0.1.0"
