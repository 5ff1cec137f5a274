"""Fault injection: named points in a snapshot's writes where a test can make the process fail.

A :data:`FaultHook` is called with the name of each point as the write passes it; the default,
:func:`no_faults`, does nothing. The store and the layer sink take one as a constructor argument
(the runtime builds one that kills the process at a chosen point, for its crash-safety tests).
The points are below, in the order a snapshot passes them.
"""

from __future__ import annotations

from collections.abc import Callable

FaultHook = Callable[[str], None]

LAYER_HALF_WRITTEN = "layer-half-written"  # the layer blob is partly written (past 1 MiB of tar)
BEFORE_MANIFEST = "before-manifest"  # the layer is stored; nothing else of the snapshot is
BEFORE_INDEX = "before-index"  # every blob is stored; index.json does not list the manifest yet
BEFORE_HEAD = "before-head"  # index.json lists the snapshot; the state database does not know it
POINTS = (LAYER_HALF_WRITTEN, BEFORE_MANIFEST, BEFORE_INDEX, BEFORE_HEAD)


def no_faults(point: str) -> None:
    """The default hook: every point passes."""
