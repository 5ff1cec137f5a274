"""The Spinup runtime: agents and their machines, exec, files, packages, snapshots, credentials
and what each agent uses.

:class:`Runtime` is the one surface; everything else exported here is a value it takes or returns.
"""

from .actors import Actor, acting_as, current_actor
from .config import DEFAULT_IMAGE, MCP_GRANTS, Settings
from .control import CONTROL_URL, TOKEN_ENV, ControlListener
from .credentials import SecretInfo, decode_key
from .doctor import Check, diagnose
from .errors import ForeignSnapshot, InvalidInput, OutsideBinding, SpinupError
from .exec import ExecResult
from .exec_history import ExecLog, ExecRecord
from .files import FileContent, FileInfo
from .harnesses import HARNESSES, Harness
from .models import (
    Agent,
    AgentState,
    Event,
    PackageEntry,
    PackageManager,
    Policy,
    SecretBinding,
    Snapshot,
    parse_size,
    readable_size,
    validate_agent_name,
)
from .packages import InstallResult
from .policy import check_granted, check_registry_granted
from .ports import PortForward
from .processes import ProcessInfo, ProcessOutput
from .rebuild import Reinstalled
from .runtime import AgentStatus, RebuildResult, RestoreResult, Runtime, SnapshotDiff
from .secrets import SecretListing, redact_stored
from .snapshot_transfer import Pushed
from .snapshots import CaptureResult, GcResult, MigrateResult, ProgressFn, VerifyReport
from .terminal import Terminal, TerminalEnd
from .token_files import check_token, read_token_file, stored_token_file
from .usage import AgentOverview, ResourceUse

__all__ = [
    "CONTROL_URL",
    "DEFAULT_IMAGE",
    "HARNESSES",
    "MCP_GRANTS",
    "TOKEN_ENV",
    "Actor",
    "Agent",
    "AgentOverview",
    "AgentState",
    "AgentStatus",
    "CaptureResult",
    "Check",
    "ControlListener",
    "Event",
    "ExecLog",
    "ExecRecord",
    "ExecResult",
    "FileContent",
    "FileInfo",
    "ForeignSnapshot",
    "GcResult",
    "Harness",
    "InstallResult",
    "InvalidInput",
    "MigrateResult",
    "OutsideBinding",
    "PackageEntry",
    "PackageManager",
    "Policy",
    "PortForward",
    "ProcessInfo",
    "ProcessOutput",
    "ProgressFn",
    "Pushed",
    "RebuildResult",
    "Reinstalled",
    "ResourceUse",
    "RestoreResult",
    "Runtime",
    "SecretBinding",
    "SecretInfo",
    "SecretListing",
    "Settings",
    "Snapshot",
    "SnapshotDiff",
    "SpinupError",
    "Terminal",
    "TerminalEnd",
    "VerifyReport",
    "acting_as",
    "check_granted",
    "check_registry_granted",
    "check_token",
    "current_actor",
    "decode_key",
    "diagnose",
    "parse_size",
    "read_token_file",
    "readable_size",
    "redact_stored",
    "stored_token_file",
    "validate_agent_name",
]
