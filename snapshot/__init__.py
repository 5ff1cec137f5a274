"""Snapshot store: incremental zstd layers in an OCI image layout (the format is ``FORMAT.md``).

Modules, from the top:

- ``snapshot_store``: :class:`SnapshotStore`, snapshots committed and read back in the store format
- ``image``: the config, manifest and annotations of one snapshot (pure functions; :class:`BaseImage`)
- ``capture``: :class:`LayerWriter`, a walk, a plan or a tar stream made into one stored layer
- ``walk``: the upper-directory walk that plans a layer; ``squash``: the union walk of a squash
- ``tarfeed``: GNU tar archiving members as they are named; ``sink``: zstd and sha256 into a blob
- ``base``: base images stored once (from ``docker save``), shared by the snapshots on them, linked from the base cache
- ``listing``: snapshot and live listings, diffs; ``archive``: the ``docker save`` stream of a snapshot
- ``oci_archive``: a snapshot as an OCI archive; ``transfer``: a snapshot from a registry, checked before it is admitted
- ``store``: the OCI image layout (atomic, verified blobs, ``index.json``); ``index``: the file index
- ``maintenance``: verify, gc and the store lock; ``cache_gc``: collecting the base cache
- ``safety``: refusing unsafe layers
- ``oci``: the names of the format (media types, whiteouts, annotation keys); ``faults``: fault points
- ``errors``: :class:`StoreError` and its subclasses

Nothing here imports ``spinup.runtime`` or ``spinup.server``.
"""
