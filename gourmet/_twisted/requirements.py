"""
What Gourmet relies on of Twisted's private names, and the check at
start-up that the installed Twisted still has each of them.

A rename in a new Twisted must not silently switch a defence off: each
module of :mod:`gourmet._twisted` lists the names it relies on as
:class:`Requirement` values, and :func:`missing` finds those that are gone.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Iterable, List, Optional

from attrs import frozen


@frozen
class Requirement:
    """
    One name Gourmet relies on: ``owner.name`` in ``module``.

    :ivar owner: a dotted path to the object within the module (a class, a
        module-level object), or empty for the module itself.
    :ivar name: the attribute it must have.
    :ivar make: for an attribute set in ``__init__``, how to make an
        instance of the owner to look for it on.
    """

    module: str
    owner: str
    name: str
    make: Optional[Callable[[Any], object]] = None

    def __str__(self) -> str:
        return ".".join(part for part in (self.module, self.owner, self.name) if part)

    def present(self) -> bool:
        """
        Whether the installed Twisted has it.
        """
        try:
            target: object = importlib.import_module(self.module)
            for part in filter(None, self.owner.split(".")):
                target = getattr(target, part)
            if self.make is not None:
                target = self.make(target)
        except (ImportError, AttributeError, TypeError):
            return False
        return hasattr(target, self.name)


def instance(cls: Any) -> object:
    """
    A ``make`` for a :class:`Requirement` whose class takes no arguments.
    """
    return cls()


def missing(requirements: Iterable[Requirement]) -> List[Requirement]:
    """
    The requirements the installed Twisted does not meet.
    """
    return [each for each in requirements if not each.present()]
