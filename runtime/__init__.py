"""Agents and their lifecycle, the Docker backend, exec, files and the state database."""

from .config import Settings
from .errors import SpinupError
from .exec import ExecResult
from .files import FileContent, FileInfo
from .models import Agent, AgentState, Policy
from .runtime import AgentStatus, Runtime

__all__ = [
    "Agent",
    "AgentState",
    "AgentStatus",
    "ExecResult",
    "FileContent",
    "FileInfo",
    "Policy",
    "Runtime",
    "Settings",
    "SpinupError",
]
