"""One exception family, so callers (the CLI, schedulers, notebooks) can catch everything we raise.

Every message states the fact, the object and the fix in one line, because that line is what a
scheduler log shows. Each class carries an exit code, so the CLI maps failures to documented codes.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BatchScoreError(Exception):
    """Base of every error batchscore raises on purpose."""

    exit_code = 1


class SpecError(BatchScoreError):
    """The job spec is malformed, names something that does not exist, or contradicts itself."""

    exit_code = 2


class ModelError(BatchScoreError):
    """A model artifact cannot be loaded, is not pinned, is tampered with, or is unsupported."""

    exit_code = 2


class DataError(BatchScoreError):
    """Input data does not match what the spec or the models expect."""

    exit_code = 2


class SinkError(BatchScoreError):
    """The output table cannot be written as asked (schema change, not a Delta table, conflict)."""

    exit_code = 4


class CommitConflictError(SinkError):
    """Another writer committed to the same partitions first."""


class StepError(BatchScoreError):
    """A runtime step failed; the message names the step."""

    exit_code = 1


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """Return " Did you mean 'x'?" for the closest candidate, or "" when none is close."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" Did you mean '{matches[0]}'?" if matches else ""


def first_line(problem: BaseException | str) -> str:
    """The first non-empty line of an error or a text, stripped (delta-rs and compilers append
    backtraces); for an exception without text, its class name. Never raises."""
    text = str(problem)
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    if isinstance(problem, BaseException):
        return type(problem).__name__
    return text.strip()


def collapsed(problem: BaseException | Warning | str, limit: int = 300) -> str:
    """The whole text of an error on one line (whitespace collapsed), at most `limit`
    characters: for a model library's message, whose cause may be on any line; for an
    exception without text, its class name."""
    text = " ".join(str(problem).split())
    if not text and isinstance(problem, BaseException):
        return type(problem).__name__
    return text[:limit]
