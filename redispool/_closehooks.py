"""Callbacks a pool runs at the start of ``close()``, while it still works: a
helper that buffers writes flushes there, whatever order exit hooks run in."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable

__all__ = ["CloseHooks"]

log = logging.getLogger("redispool")


class CloseHooks:
    """Hooks run once, in order; a bound method is held weakly (it does not keep
    its object alive); an exception is logged, not raised. Lock-free: one tuple
    swapped at a time (a hook registered during ``run`` runs at the next close)."""

    __slots__ = ("_refs",)

    def __init__(self) -> None:
        self._refs: tuple[Callable[[], Callable[[], object] | None], ...] = ()

    def add(self, hook: Callable[[], object]) -> None:
        if not callable(hook):
            raise TypeError(f"hook must be callable, got {hook!r}")
        if hasattr(hook, "__self__") and hasattr(hook, "__func__"):
            ref: Callable[[], Callable[[], object] | None] = weakref.WeakMethod(hook)
        else:
            ref = lambda: hook  # noqa: E731 - a plain function is held strongly
        self._refs = (*(r for r in self._refs if r() is not None), ref)

    def run(self, owner: str) -> None:
        refs, self._refs = self._refs, ()
        for ref in refs:
            hook = ref()
            try:
                if hook is not None:
                    hook()
            except Exception:
                log.exception("%s: a close hook failed", owner)
