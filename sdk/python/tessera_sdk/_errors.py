"""The errors a guest sees and returns, as Python exceptions."""


class TesseraError(Exception):
    """An error with a message for a person: what was wrong, how to fix it."""

    #: The WIT `error` case this maps to.
    case = "internal"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidInput(TesseraError):
    """The request (or an argument) was malformed."""

    case = "invalid-input"


class Denied(TesseraError):
    """The manifest does not grant what was asked (a model, an expert)."""

    case = "denied"


class LimitExceeded(TesseraError):
    """A budget ran out: model calls, tokens, deadline, sizes."""

    case = "limit-exceeded"


class ModelError(TesseraError):
    """The model failed."""

    case = "model"


class Internal(TesseraError):
    """Anything else."""

    case = "internal"


_BY_CASE = {cls.case: cls for cls in (InvalidInput, Denied, LimitExceeded, ModelError, Internal)}
_WIT_NAMES = {
    "invalid-input": "Error_InvalidInput",
    "denied": "Error_Denied",
    "limit-exceeded": "Error_LimitExceeded",
    "model": "Error_Model",
    "internal": "Error_Internal",
}


def from_wit(err) -> TesseraError:
    """The exception for a WIT `error` value (`Error_Denied("...")`, ...)."""
    for case, wit_name in _WIT_NAMES.items():
        if type(err).__name__ == wit_name:
            return _BY_CASE[case](err.value)
    return Internal(str(err))


def to_wit(exc: BaseException):
    """The WIT `error` value for an exception raised by a handler."""
    from wit_world.imports import types

    if isinstance(exc, TesseraError):
        return getattr(types, _WIT_NAMES[exc.case])(exc.message)
    if isinstance(exc, MemoryError):
        return types.Error_Internal(
            "MemoryError: the component ran out of memory (its limit is limits.memory-mib in tessera.toml)"
        )
    text = str(exc)
    return types.Error_Internal(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
