"""Allowlist rules: which destinations an agent's egress proxy lets through.

A rule is ``[scheme://]host[:port]``:

- ``host`` is a name (``pypi.org``), a wildcard over subdomains (``*.github.com``, which does not
  match ``github.com`` itself), ``*`` (every public host), an IPv4 or bracketed IPv6 address
  (``127.0.0.1``, ``[::1]``) or an address block (``192.168.1.0/24``);
- ``port`` is one TCP port; without one a rule covers the web's ports, 80 and 443;
- ``scheme`` is ``http`` (plain requests through the proxy) or ``https`` (``CONNECT`` tunnels);
  without one a rule covers both.

A name never lets a connection reach a loopback, private, link-local, metadata or other special
address, whatever it resolves to: only a rule that names the address (or its block) does. A preset
(``pypi``, ``npm``, ``debian``, ``github``, ...) stands for the rules listed in :data:`PRESETS`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

from ..errors import InvalidInput

Scheme = Literal["http", "https"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

WEB_PORTS = (80, 443)
MIN_PREFIX = {4: 8, 6: 32}  # an address block wider than this is refused (use '*' for the public internet)

PRESETS: dict[str, tuple[str, ...]] = {
    "pypi": ("https://pypi.org", "https://files.pythonhosted.org"),
    "npm": ("https://registry.npmjs.org",),
    "debian": ("deb.debian.org", "security.debian.org"),
    "github": (
        "https://github.com",
        "https://*.github.com",
        "https://*.githubusercontent.com",
    ),
    "anthropic": ("https://api.anthropic.com",),
    "openai": ("https://api.openai.com",),
}

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_NAME_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})+$")
_RULE_RE = re.compile(
    r"^(?:(?P<scheme>[a-z]+)://)?(?P<host>\[[^\]]*\](?:/\d+)?|[^:/\[\]]+(?:/\d+)?)(?::(?P<port>[^:/]*))?/?$"
)
_NAMES_FOR_LOOPBACK = ("localhost", "ip6-localhost", "ip6-loopback")


@dataclass(frozen=True)
class Rule:
    """One parsed rule; ``text`` is its canonical spelling (as shown in status and events)."""

    text: str
    host: str  # a lowercase name, '*.suffix', '*', or '' for an address rule
    network: IPNetwork | None  # the address or block an address rule names
    port: int | None  # None: 80 and 443
    scheme: Scheme | None  # None: both

    @property
    def names_address(self) -> bool:
        """Whether the rule names an address (so it may reach a special one)."""
        return self.network is not None

    def matches_name(self, host: str, port: int, scheme: Scheme) -> bool:
        """Whether the rule covers ``host`` (a lowercase name) on ``port`` over ``scheme``."""
        if self.network is not None or not self._covers(port, scheme):
            return False
        if self.host == "*":
            return True
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return host == self.host

    def matches_address(self, address: IPAddress, port: int, scheme: Scheme) -> bool:
        """Whether the rule names ``address`` (directly or by its block) for ``port`` over ``scheme``."""
        return self.network is not None and self._covers(port, scheme) and address in self.network

    def _covers(self, port: int, scheme: Scheme) -> bool:
        if self.scheme is not None and self.scheme != scheme:
            return False
        return port == self.port if self.port is not None else port in WEB_PORTS


_HOST_PATTERN_RE = re.compile(r"(\*\.)?[a-z0-9.-]+|\[[0-9a-f:.]+\]")


def is_host_pattern(host: str) -> bool:
    """Whether ``host`` (lowercase) is a name, a '*.' wildcard or a bracketed address: what intercept and
    edge-header bindings name (any port)."""
    return _HOST_PATTERN_RE.fullmatch(host) is not None


def parse_rule(text: str) -> Rule:
    """Parse one rule (not a preset); raises :class:`InvalidInput` saying what is wrong and how to write it."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("An allowlist rule cannot be empty: write a host like 'pypi.org' or a preset like 'pypi'.")
    raw = text.strip().lower()
    match = _RULE_RE.match(raw)
    if match is None:
        raise _bad(text, "it is not [scheme://]host[:port]")
    scheme_text, host_text, port_text = match.group("scheme"), match.group("host"), match.group("port")
    scheme: Scheme | None = None
    if scheme_text is not None:
        if scheme_text not in ("http", "https"):
            raise _bad(text, f"the scheme '{scheme_text}' is not http or https")
        scheme = "http" if scheme_text == "http" else "https"
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise _bad(text, f"the port '{port_text}' is not a number from 1 to 65535")
        port = int(port_text)
    network = _address(host_text, text)
    host = ""
    if network is None:
        host = _host_name(host_text, text)
    rule = Rule(text="", host=host, network=network, port=port, scheme=scheme)
    return Rule(text=canonical(rule), host=host, network=network, port=port, scheme=scheme)


def canonical(rule: Rule) -> str:
    """The rule's spelling: scheme and port only when given, IPv6 in brackets, a single address without /32."""
    if rule.network is None:
        host = rule.host
    elif rule.network.num_addresses == 1:
        address = rule.network.network_address
        host = f"[{address}]" if address.version == 6 else str(address)
    else:
        host = f"[{rule.network}]" if rule.network.version == 6 else str(rule.network)
    text = f"{rule.scheme}://{host}" if rule.scheme else host
    return f"{text}:{rule.port}" if rule.port is not None else text


def expand(entries: tuple[str, ...] | list[str]) -> list[Rule]:
    """The rules an allowlist stands for: presets expanded, each rule parsed (errors name the bad entry)."""
    rules: list[Rule] = []
    for entry in entries:
        name = entry.strip().lower() if isinstance(entry, str) else entry
        if isinstance(name, str) and name in PRESETS:
            rules += [parse_rule(text) for text in PRESETS[name]]
        else:
            rules.append(parse_rule(entry))
    return rules


def normalize(entries: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """An allowlist as stored: presets by name, rules in canonical spelling, duplicates dropped, order kept."""
    seen: dict[str, None] = {}
    for entry in entries:
        if not isinstance(entry, str):
            raise InvalidInput(f"An allowlist rule is a string like 'pypi.org', got {entry!r}.")
        name = entry.strip().lower()
        seen[name if name in PRESETS else parse_rule(entry).text] = None
    return tuple(seen)


def _address(host_text: str, text: str) -> IPNetwork | None:
    """The address or block ``host_text`` names, or None when it is a name."""
    bare = host_text[1:].replace("]", "", 1) if host_text.startswith("[") else host_text
    looks_numeric = host_text.startswith("[") or re.fullmatch(r"[\d./]+", bare) is not None
    if not looks_numeric:
        return None
    try:
        network = ipaddress.ip_network(bare, strict=True)
    except ValueError as exc:
        raise _bad(text, f"'{bare}' is not an IP address or address block ({exc})") from exc
    if network.prefixlen < MIN_PREFIX[network.version]:
        raise _bad(
            text,
            f"the block {network} is wider than /{MIN_PREFIX[network.version]}; write '*' for every public "
            f"host, or a narrower block",
        )
    return network


def _host_name(host_text: str, text: str) -> str:
    if "/" in host_text:
        raise _bad(text, "only an IP address can have a /prefix")
    if host_text == "*":
        return host_text
    if host_text in _NAMES_FOR_LOOPBACK or host_text.endswith(".localhost"):
        raise _bad(
            text,
            "it names the loopback interface; a rule for a loopback or private address must name the address "
            "itself, e.g. '127.0.0.1:8080'",
        )
    name = host_text[2:] if host_text.startswith("*.") else host_text
    if "." not in name and re.fullmatch(_LABEL, name):
        presets = ", ".join(sorted(PRESETS))
        raise InvalidInput(
            f"Unknown allowlist preset '{host_text}': the presets are {presets}; a host name has a dot "
            f"(e.g. 'api.example.com')."
        )
    if not _NAME_RE.fullmatch(name) or len(name) > 253:
        raise _bad(text, f"'{host_text}' is not a host name, '*.' wildcard or IP address")
    return host_text


def _bad(text: str, why: str) -> InvalidInput:
    return InvalidInput(
        f"Invalid allowlist rule {text!r}: {why}. Write [scheme://]host[:port], e.g. 'pypi.org', "
        f"'*.github.com', 'https://api.example.com:8443', '127.0.0.1:8080', or a preset ({', '.join(sorted(PRESETS))})."
    )
