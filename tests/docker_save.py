"""A ``docker save`` archive made in memory (the 20.10 format), for tests of storing base images."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from typing import Any


def layer_tar(files: dict[str, bytes]) -> bytes:
    """An uncompressed layer tar holding ``files`` (relative path -> content) and their directories."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        dirs: set[str] = set()
        for path, content in files.items():
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                name = "/".join(parts[:i])
                if name not in dirs:
                    dirs.add(name)
                    info = tarfile.TarInfo(name)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(content), 0o644
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def docker_save(layers: list[bytes], runtime_config: dict[str, Any] | None = None) -> tuple[str, bytes, bytes]:
    """A ``docker save`` archive of an image made of ``layers``: (image id, the archive, the config JSON)."""
    diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2026-01-01T00:00:00Z",
            "config": runtime_config or {"Env": ["LANG=C.UTF-8"], "Cmd": ["/bin/sh"], "Labels": {"base": "1"}},
            "container_config": {"Cmd": ["not", "a", "snapshot's"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": "2026-01-01T00:00:00Z", "created_by": f"layer {i}"} for i in range(len(layers))],
        }
    ).encode()
    image_id = "sha256:" + hashlib.sha256(config).hexdigest()
    buffer = io.BytesIO()
    names = [f"{hashlib.sha256(diff.encode()).hexdigest()}/layer.tar" for diff in diff_ids]
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, layer in sorted(zip(names, layers, strict=True)):
            _add(tar, name.split("/")[0] + "/VERSION", b"1.0")
            _add(tar, name, layer)
        _add(tar, image_id.removeprefix("sha256:") + ".json", config)
        manifest = [{"Config": image_id.removeprefix("sha256:") + ".json", "RepoTags": ["t:1"], "Layers": names}]
        _add(tar, "manifest.json", json.dumps(manifest).encode())
    return image_id, buffer.getvalue(), config
