"""The few places where secateurs depends on how transformers names things, kept in one module.

transformers renames arguments between minor releases (5.24 renamed ``past_key_values`` to
``cache``, keeping the old name as a deprecated alias). Code here finds the KV cache by its type, not
its name, and asks a model's own signature which name it takes, so that neither an old nor a new
release breaks a pruned model, and no deprecated name is used where the new one exists.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any

from torch import nn

# Minor releases of transformers the test suite has passed on (scripts/check-latest.sh checks the
# newest; requirements.lock pins the one CI uses). Keep in step with pyproject.toml and the CHANGELOG.
TESTED_TRANSFORMERS = ("5.23", "5.24")
CACHE_KEYWORDS = ("cache", "past_key_values")  # newest first

log = logging.getLogger(__name__)


def _minor(version: str) -> tuple[int, int]:
    parts = [int("".join(c for c in p if c.isdigit()) or 0) for p in version.split(".")[:2]]
    return parts[0], parts[1] if len(parts) > 1 else 0


def version_warning(version: str) -> str | None:
    """A one-line warning if ``version`` lies outside the tested minor releases, else None."""
    low, high = _minor(TESTED_TRANSFORMERS[0]), _minor(TESTED_TRANSFORMERS[-1])
    if low <= _minor(version) <= high:
        return None
    return (f"transformers {version} is outside the range secateurs was tested with "
            f"({TESTED_TRANSFORMERS[0]}.x to {TESTED_TRANSFORMERS[-1]}.x); results may differ")


@functools.cache
def warn_if_untested() -> None:
    """Log the tested-range warning once per process (a warning, never an error)."""
    import transformers

    note = version_warning(transformers.__version__)
    if note:
        log.warning("warning: %s", note)


def find_cache(args: tuple, kwargs: dict[str, Any]) -> Any | None:
    """The KV cache among a module call's arguments, whatever the argument is called."""
    from transformers.cache_utils import Cache

    for value in (*kwargs.values(), *args):
        if isinstance(value, Cache):
            return value
    return None


def cache_keyword(model: nn.Module) -> str:
    """The name under which ``model.forward`` takes its KV cache in this transformers release."""
    parameters = inspect.signature(model.forward).parameters
    for name in CACHE_KEYWORDS:
        if name in parameters:
            return name
    raise TypeError(f"{type(model).__name__}.forward takes no KV cache argument ({', '.join(CACHE_KEYWORDS)})")


def output_cache(output: Any) -> Any:
    """The KV cache a forward pass returned, under its new or its old name."""
    for name in CACHE_KEYWORDS:
        cache = getattr(output, name, None)
        if cache is not None:
            return cache
    return None
