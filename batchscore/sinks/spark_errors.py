"""Errors that cross the Spark boundary.

A batchscore error raised inside the data source (on an executor, or in the driver's planning
callbacks) reaches the caller wrapped in Spark and Py4J exceptions whose text is pages long. The
data source marks its errors (`marked`) with `BATCHSCORE_ERROR[Class]: message`; the Spark entry
points find that marker again (`unwrapped`) and re-raise the original class with its one-line
message, so a user sees the same error whether it was raised in the driver or in a task.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from batchscore import errors as _errors
from batchscore.errors import BatchScoreError, SinkError, first_line

ERROR_MARKER = "BATCHSCORE_ERROR"

_MARKED = re.compile(ERROR_MARKER + r"\[(\w+)\]: (.*)")


def mark_error(err: BatchScoreError) -> BatchScoreError:
    """The same error class with `BATCHSCORE_ERROR[Class]: ` before its one-line message.

    Errors raised inside the data source reach the driver wrapped in Spark exceptions; the marker
    lets `unwrap_spark_error` find and rebuild them.
    """
    message = first_line(str(err))
    if message.startswith(ERROR_MARKER + "["):
        return err
    return type(err)(f"{ERROR_MARKER}[{type(err).__name__}]: {message}")


@contextmanager
def marked() -> Iterator[None]:
    """Re-raise batchscore errors with the BATCHSCORE_ERROR marker, so the driver finds them."""
    try:
        yield
    except BatchScoreError as exc:
        raise mark_error(exc) from None


def unwrap_spark_error(exc: BaseException) -> BatchScoreError | None:
    """Rebuild the batchscore error carried, marked, inside a Spark or Py4J exception.

    Returns None when the exception text carries no `BATCHSCORE_ERROR[...]` marker.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for text in _exception_texts(current):
            match = _MARKED.search(text)
            if match is not None:
                return _rebuild(match.group(1), match.group(2))
        current = current.__cause__ or current.__context__
    return None


@contextmanager
def unwrapped() -> Iterator[None]:
    """Around a Spark call: a marked batchscore error inside a Spark exception is re-raised as
    itself (see unwrap_spark_error); any other exception passes unchanged."""
    try:
        yield
    except Exception as exc:
        error = unwrap_spark_error(exc)
        if error is not None:
            raise error from None
        raise


def _exception_texts(exc: BaseException) -> list[str]:
    texts = [str(exc)]
    for attr in ("desc", "message", "_message"):
        value = getattr(exc, attr, None)
        if isinstance(value, str):
            texts.append(value)
    java = getattr(exc, "java_exception", None)
    if java is not None:
        try:
            texts.append(str(java.toString()))
        except Exception:
            pass
    return texts


def _rebuild(class_name: str, message: str) -> BatchScoreError:
    message = re.sub(r"\s+SQLSTATE: \w+\.?\s*$", "", message).strip()
    cls = getattr(_errors, class_name, None)
    if isinstance(cls, type) and issubclass(cls, BatchScoreError):
        return cls(message)
    return SinkError(message)
