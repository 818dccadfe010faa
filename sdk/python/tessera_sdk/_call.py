"""Calling the host: its `Err(error)` results become `TesseraError`s."""

from ._errors import from_wit


def call_host(function, *args):
    from componentize_py_types import Err

    try:
        return function(*args)
    except Err as e:
        raise from_wit(e.value) from None
