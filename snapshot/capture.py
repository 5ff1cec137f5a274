"""Layer capture: a walk, a plan or a ready tar stream made into one stored layer.

:class:`LayerWriter` ties the parts together: the walk names members (``walk.py``, or the
squash's union walk), GNU tar archives them as they come (``tarfeed.py``), and the sink
compresses and hashes tar's output into the store (``sink.py``). A :class:`LayerRequest` says
what one capture reads and whom it tells how far it got.
"""

from __future__ import annotations

import tarfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .faults import FaultHook, no_faults
from .index import Index
from .oci import OPAQUE_MARKER, whiteout_name
from .sink import ByteSink, LayerResult, LayerSink
from .store import Store
from .tarfeed import TarFeed
from .walk import LayerPlan, Member, Planner, scan_and_plan

SinkWrapper = Callable[[ByteSink], ByteSink]


@dataclass(frozen=True)
class LayerRequest:
    """One capture of an upper directory: what is read, and who hears how far it got.

    ``planner`` replaces the walk (:func:`scan_and_plan` of ``upper`` over ``previous``): it gets
    the member sink and returns the index and the plan. Members it reads from directories other
    than ``upper`` name them in ``Member.source``; those directories are ``sources``.
    """

    upper: Path
    previous: Index | None  # the index of the last capture of the same upper directory (None: everything)
    always: bool = False  # write a layer (an empty one) even when nothing changed
    on_bytes: Callable[[int], None] | None = None  # uncompressed bytes archived so far
    on_walked: Callable[[Index, LayerPlan], None] | None = None  # on its own thread once the walk is done
    on_read: Callable[[], None] | None = None  # as soon as nothing more is read from the directories
    wrap_sink: SinkWrapper | None = None  # wraps the sink tar's output goes to (to observe or fail it)
    planner: Planner | None = None
    sources: Sequence[Path] = ()


@dataclass(frozen=True)
class Capture:
    """One walk of an upper directory and the layer written from it."""

    index: Index
    plan: LayerPlan
    layer: LayerResult | None  # None when nothing changed (and no layer was asked for regardless)


def _marker(name: str, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = 0
    info.mode = 0o644
    info.mtime = mtime
    return info.tobuf(format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape")


class LayerWriter:
    """Writes layers into a store, with one zstd level and thread count, and one fault hook."""

    def __init__(self, store: Store, level: int = 3, threads: int = -1, fault: FaultHook = no_faults) -> None:
        self.store = store
        self.level = level
        self.threads = threads
        self.fault = fault

    def sink(self) -> LayerSink:
        """A new layer blob to write the uncompressed tar into."""
        return LayerSink(self.store, self.level, self.threads, self.fault)

    def capture(self, request: LayerRequest) -> Capture:
        """Walk ``request.upper`` and stream what changed since ``request.previous`` into a new layer (blocking).

        GNU tar starts with the first changed member and archives while the walk goes on; its output
        is compressed and hashed into the store on another thread. Nothing changed: no layer, unless
        ``always`` (then an empty one). ``on_walked`` runs on its own thread once the walk is done,
        while tar finishes; ``on_read`` as soon as nothing more is read from the directories.
        """
        sink: LayerSink | None = None
        feed: TarFeed | None = None
        wrap_sink, on_read, on_walked = request.wrap_sink, request.on_read, request.on_walked

        def start() -> TarFeed:
            nonlocal sink, feed
            sink = self.sink()
            feed = TarFeed(request.upper, wrap_sink(sink) if wrap_sink else sink, request.on_bytes, request.sources)
            return feed

        def on_member(member: Member) -> None:
            (feed or start()).add(member)

        try:
            if request.planner is None:
                index, layer_plan = scan_and_plan(request.upper, request.previous, on_member)
            else:
                index, layer_plan = request.planner(on_member)
            if feed is None and request.always:
                start()
            if feed is None or sink is None:
                if on_read is not None:
                    on_read()
                return Capture(index, layer_plan, None)
            feed.end_names()
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="capture-walked") as beside:
                walked = beside.submit(on_walked, index, layer_plan) if on_walked is not None else None
                feed.finish()
                if on_read is not None:
                    on_read()  # not held up by on_walked: a paused machine may run again
                if walked is not None:
                    walked.result()
            return Capture(index, layer_plan, sink.commit())
        except BaseException:
            if feed is not None:
                feed.close()  # tar stopped and the pump joined before the blob goes
            if sink is not None:
                sink.abort()
            raise
        finally:
            if feed is not None:
                feed.close()

    def write(self, upper: Path, layer: LayerPlan, on_bytes: Callable[[int], None] | None = None) -> LayerResult:
        """Write a planned layer from an upper directory into the store (blocking; run it in a thread)."""
        sink = self.sink()
        try:
            with TarFeed(upper, sink, on_bytes) as feed:
                for member in layer.members:
                    feed.add(member)
                feed.end_names()
                feed.finish()
            return sink.commit()
        except BaseException:
            sink.abort()
            raise

    def write_from(self, layer: LayerPlan, content: Callable[[ByteSink], None]) -> LayerResult:
        """Write a layer: the plan's whiteout and opaque entries, then the tar ``content`` writes to the sink.

        ``content`` must write a complete tar (ending with its end-of-archive blocks).
        """
        sink = self.sink()
        try:
            now = int(time.time())
            head = bytearray()
            for path in layer.whiteouts:
                head += _marker(whiteout_name(path), now)
            for path in layer.opaque:
                head += _marker(f"{path}/{OPAQUE_MARKER}", now)
            if head:
                sink.write(bytes(head))
            content(sink)
            return sink.commit()
        except BaseException:
            sink.abort()
            raise
