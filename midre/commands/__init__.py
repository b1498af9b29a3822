"""Sub-commands of the ``midre`` CLI, one module per group (see ``midre/cli.py``)."""
