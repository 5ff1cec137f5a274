"""Egress for allowlist machines: rules, decisions, the proxy, and the daemon that listens in machines."""

from .client import EgressClient, EgressUnavailable
from .rules import PRESETS, Rule, expand, normalize, parse_rule

__all__ = ["PRESETS", "EgressClient", "EgressUnavailable", "Rule", "expand", "normalize", "parse_rule"]
