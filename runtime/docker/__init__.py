"""The Docker backend (:class:`DockerBackend`) and the typed values it returns.

``backend`` talks to the daemon (every call under a deadline, errors translated), ``values``
parses Docker's JSON into what the rest of the runtime reads, ``execs`` holds a running
command's streams. Nothing outside this package touches aiodocker.
"""

from .backend import (
    AGENT_LABEL,
    API_VERSION,
    MANAGED_LABEL,
    PAUSED_WAIT,
    DockerBackend,
)
from .execs import ExecSession, Execution, Output
from .values import Change, DaemonVersion, ExecState, ImageInfo, MachineInfo, MachineStats, PathStat

__all__ = [
    "AGENT_LABEL",
    "API_VERSION",
    "MANAGED_LABEL",
    "PAUSED_WAIT",
    "Change",
    "DaemonVersion",
    "DockerBackend",
    "ExecSession",
    "ExecState",
    "Execution",
    "ImageInfo",
    "MachineInfo",
    "MachineStats",
    "Output",
    "PathStat",
]
