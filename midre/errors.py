"""The one error type of the library's configuration classes.

Every config class (``TrainConfig``, ``DatasetSpec``, the defenses, ``AttackBudget``, the attack
options, the study configs) raises :class:`ConfigError` with the dotted path of the field at fault,
so a CLI or a service can point at it without reading the message.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value the library refuses.

    Attributes:
        field: dotted path of the field in the config that was given (``lr``, ``data.image_size``,
            ``defense.a_h``, ``attack_options.gmi.lr``, ``attacks[1]``).
        message: what is wrong with it, without the field.

    Example:
        >>> str(ConfigError("lr", "must be > 0, got 0"))
        'lr: must be > 0, got 0'
        >>> ConfigError("a_h", "must be in (0.1, 1]").within("defense").field
        'defense.a_h'
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message

    def within(self, prefix: str) -> ConfigError:
        """The same error seen from an enclosing config, whose field ``prefix`` holds this one."""
        if not self.field:
            return ConfigError(prefix, self.message)
        joiner = "" if self.field.startswith("[") else "."
        return ConfigError(f"{prefix}{joiner}{self.field}", self.message)


class TransientError(RuntimeError):
    """A failure that says nothing about the run itself (a lost training rank, an unreachable object
    store): running the same unit again may succeed. The service retries a unit that raises one (up to
    its attempt limit) instead of failing the job; the library only raises it."""
