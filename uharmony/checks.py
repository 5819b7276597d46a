"""Arguments checked up front, with the name of what was wrong (MONAI's ``look_up_option`` underneath)."""

from __future__ import annotations

from collections.abc import Collection


def one_of(name: str, value, options: Collection):
    """``value`` if it is one of ``options`` (a mapping's keys), else a ValueError that names ``name`` and
    suggests the nearest option."""
    if value in options:  # the common case needs no MONAI import (a profile query's process stays light)
        return value
    from monai.utils import look_up_option

    try:
        look_up_option(value, options)
        return value
    except ValueError as exc:
        message = " ".join(str(exc).split())
        raise ValueError(f"{name}: {message}") from None
