"""Files in a machine, through the Docker archive API (nothing needed inside the image).

Move and delete have no archive-API form; they run the read-only toolbox (a static busybox
mounted into every machine), so they too work in images without shell tools.

Modules, by job:

- ``operations``: :class:`Files`, the operations (stat, read, write, mkdir, list, move, delete)
- ``paths``: path rules (:func:`normalize_path`) and lookups (stat, symlinks, missing ancestors)
- ``access``: whom operations act as (:class:`FileAccess`) and the non-root agent's access check
- ``as_agent``: a non-root agent's reads and writes done from the host as its user (:class:`AgentFiles`)
- ``in_machine``: the same on a remote daemon, each one toolbox command inside the machine as its user
- ``archive``: tar members and streams for ``put_archive``, reads out of ``get_archive``
- ``toolbox``: busybox applets through exec, and what their failures mean
- ``encodings``: text/base64 content and octal modes
- ``results``: :class:`FileInfo` and :class:`FileContent`
"""

from .access import AccessMemo, FileAccess
from .as_agent import AgentFiles, as_agent_supported
from .in_machine import InMachineFiles
from .operations import Files
from .paths import normalize_path
from .results import Encoding, FileContent, FileInfo, FileType

__all__ = [
    "AccessMemo",
    "AgentFiles",
    "Encoding",
    "FileAccess",
    "FileContent",
    "FileInfo",
    "FileType",
    "Files",
    "InMachineFiles",
    "as_agent_supported",
    "normalize_path",
]
