"""Log lines, kept in the invocation's trace (64 KiB at most).

    log.info("asking the model", prompt_tokens=12)
"""

import enum


class Level(enum.Enum):
    TRACE = "TRACE"
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARN = "WARN"
    ERROR = "ERROR"


def log(level: Level, message: str, **fields) -> None:
    """One line at `level`, with `fields` as string pairs."""
    from wit_world.imports import log as wit_log

    pairs = [(str(k), str(v)) for k, v in fields.items()]
    wit_log.log(wit_log.Level[level.name], message, pairs)


def trace(message: str, **fields) -> None:
    log(Level.TRACE, message, **fields)


def debug(message: str, **fields) -> None:
    log(Level.DEBUG, message, **fields)


def info(message: str, **fields) -> None:
    log(Level.INFO, message, **fields)


def warn(message: str, **fields) -> None:
    log(Level.WARN, message, **fields)


def error(message: str, **fields) -> None:
    log(Level.ERROR, message, **fields)
