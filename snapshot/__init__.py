"""Snapshot store: incremental zstd layers in an OCI image layout (see DESIGN.md)."""
