"""Which converter turns which estimator class into a kernel, and the options converters get.

A leaf module: it imports no converter. Converter modules import it to register themselves and
`models.convert` reads it, so adding a converter cannot create an import cycle. (The model
store, which keeps versions of model files, is `models.store`; this table is not it.)

Lookup is by exact class, then along the MRO, so subclasses such as LogisticRegressionCV reuse
their base's converter. A second converter for a class is refused unless asked for with
`replace=True`: otherwise whichever module happened to be imported last would silently decide
how that class is scored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from batchscore.errors import ModelError
from batchscore.kernels.base import Kernel
from batchscore.kernels.trees.kernel import check_strategy


@dataclass(frozen=True)
class ConvertOptions:
    """What the caller (a spec, `bs.score`) asks of every converter, passed down explicitly.

    Explicit, not ambient, so that everything a converter depends on is in its signature: a
    converter called on its own (a test, a notebook, the pipeline converter compiling its final
    step) behaves exactly as it does inside a job.
    """

    strategy: str | None = None
    """The spec's tree `strategy:` (kernels.trees.STRATEGIES); None lets each converter choose."""

    def __post_init__(self) -> None:
        check_strategy(self.strategy)


DEFAULT_OPTIONS = ConvertOptions()


class Converter(Protocol):
    def __call__(
        self, obj: Any, *, model_name: str, n_features_hint: int | None, options: ConvertOptions
    ) -> Kernel: ...


C = TypeVar("C", bound=Converter)

_CONVERTERS: dict[type, Converter] = {}


def register(*types: type, replace: bool = False) -> Callable[[C], C]:
    """Decorator: `@register(Ridge, Lasso)` makes the function their converter.

    A class that already has another converter is refused (ModelError naming the class and
    both converters) unless `replace=True`; nothing is registered when any class is refused.
    """

    def wrap(fn: C) -> C:
        for t in types:
            existing = _CONVERTERS.get(t)
            if existing is not None and existing is not fn and not replace:
                raise ModelError(
                    f"{_name(t)} already has the converter {_name(existing)}; registering "
                    f"{_name(fn)} for it too would silently replace it. Pass replace=True to "
                    "register() to replace it on purpose, or register a subclass instead."
                )
        for t in types:
            _CONVERTERS[t] = fn
        return fn

    return wrap


def converter_for(cls: type) -> tuple[Converter | None, type | None]:
    """The converter of `cls` or of its nearest registered base class, and that class."""
    for klass in cls.__mro__:
        converter = _CONVERTERS.get(klass)
        if converter is not None:
            return converter, klass
    return None, None


def supported_types() -> list[str]:
    """Class names with a native converter, for messages and docs."""
    return sorted({t.__name__ for t in _CONVERTERS})


def _name(thing: Any) -> str:
    qualname = getattr(thing, "__qualname__", None) or type(thing).__qualname__
    return f"{getattr(thing, '__module__', '?')}.{qualname}"
