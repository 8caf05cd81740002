"""What the four settings dataclasses share (``DecaySettings``, its ``groups`` and ``others``, a group override):
read from plain data (a LightningCLI YAML block, ``hparams``) and written back.

Each class validates itself in ``__post_init__``, once; :meth:`SettingsRecord.coerce` only dispatches on the
form it is given and names unknown keys with their config path, and :meth:`SettingsRecord.to_dict` writes plain
data that ``coerce`` reads back (``to_dict`` then ``coerce`` gives an equal record).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

__all__ = ["SettingsRecord"]

Record = TypeVar("Record", bound="SettingsRecord")


@dataclass(frozen=True)
class SettingsRecord:
    """Base of a frozen settings dataclass: :meth:`coerce` and :meth:`to_dict` (a dataclass without fields, so that
    the settings stay pure dataclasses: jsonargparse nests only those).

    ``config_key``: the record's path in a config, named in errors (``decay``, ``decay.groups``, ...);
    ``compact``: :meth:`to_dict` leaves out settings at an unset value (None, an empty tuple, False)."""

    config_key = ""
    compact = False

    @classmethod
    def coerce(cls: type[Record], value: Any) -> Record:
        """``value`` as this record: the record itself, a mapping of its fields (an unknown key is a ValueError
        naming it and the valid ones), None (the defaults) or what :meth:`_from_other` accepts."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            valid = [f.name for f in fields(cls)]  # type: ignore[arg-type]
            unknown = [str(key) for key in value if key not in valid]
            if unknown:
                keys = ", ".join(f"{cls.config_key}.{key}" for key in unknown)
                raise ValueError(f"{keys}: unknown key{'s' if len(unknown) > 1 else ''}; valid keys: "
                                 f"{', '.join(valid)}")
            return cls(**value)
        return cls._from_other(value)

    @classmethod
    def _from_other(cls: type[Record], value: Any) -> Record:
        raise TypeError(f"{cls.config_key} must be {cls.__name__}, a mapping or None, got {type(value).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """The record as plain data: tuples as lists, mappings as dicts, nested records as their ``to_dict``."""
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if self.compact and value in (None, (), False):
                continue
            out[f.name] = _plain(value)
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, SettingsRecord):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return dict(value)
    return value
