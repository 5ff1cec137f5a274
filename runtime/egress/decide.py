"""One egress decision: may this agent reach ``host:port`` over ``scheme``, and at which address.

Names are resolved on the host. The proxy then connects to the address that was checked, never
resolving again, so a name cannot change its answer between the check and the connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from .rules import IPAddress, Rule, Scheme

RESOLVE_TIMEOUT = 5.0  # seconds for the host's resolver to answer

Outcome = Literal["allowed", "refused", "failed"]
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


@dataclass(frozen=True)
class Decision:
    """What the proxy does with one request, and why."""

    outcome: Outcome
    host: str
    port: int
    scheme: Scheme
    reason: str  # a sentence fragment: why it was refused or failed, or what allowed it
    address: str | None = None  # where an allowed connection goes
    rule: str | None = None  # the rule that allowed it

    @property
    def allowed(self) -> bool:
        """Whether the connection may be made."""
        return self.outcome == "allowed"


def special_kind(address: IPAddress) -> str | None:
    """What makes ``address`` off limits to names ('a loopback address', ...), or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return special_kind(address.ipv4_mapped)
    if address == ipaddress.IPv4Address("169.254.169.254") or address == ipaddress.IPv6Address("fd00:ec2::254"):
        return "the cloud metadata address"
    for kind, flag in (
        ("a loopback address", address.is_loopback),
        ("a link-local address", address.is_link_local),
        ("an unspecified address", address.is_unspecified),
        ("a multicast address", address.is_multicast),
        ("a private address", address.is_private),
    ):
        if flag:
            return kind
    return None if address.is_global else "a reserved (non-public) address"


def literal_address(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is one (IPv6 with or without brackets), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def resolve_on_host(host: str, port: int) -> list[IPAddress]:
    """The addresses the host's resolver gives for ``host`` (TCP), in its order of preference."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(RESOLVE_TIMEOUT):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def pinned_resolver(pins: dict[str, list[IPAddress]], fallback: Resolver = resolve_on_host) -> Resolver:
    """A resolver answering the pinned names itself (like curl's --resolve) and asking ``fallback`` otherwise."""

    async def resolve(host: str, port: int) -> list[IPAddress]:
        pinned = pins.get(host.lower().rstrip("."))
        return list(pinned) if pinned is not None else await fallback(host, port)

    return resolve


def parse_pins(text: str) -> dict[str, list[IPAddress]]:
    """``SPINUP_EGRESS_RESOLVE``: ``name=address[,name=address...]`` (a name may repeat for several addresses)."""
    pins: dict[str, list[IPAddress]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        address = literal_address(value.strip()) if sep else None
        if address is None or not name.strip():
            raise ValueError(
                f"SPINUP_EGRESS_RESOLVE entry {item!r} is not name=address (e.g. 'pypi.internal=10.1.2.3')"
            )
        pins.setdefault(name.strip().lower().rstrip("."), []).append(address)
    return pins


async def decide(rules: list[Rule], host: str, port: int, scheme: Scheme, resolve: Resolver) -> Decision:
    """Check ``host:port`` over ``scheme`` against ``rules``; resolve a name and check every address it has."""
    host = host.strip().lower().rstrip(".")
    literal = literal_address(host)
    if literal is not None:
        return _decide_address(rules, host, literal, port, scheme, by_name=None)
    rule = next((r for r in rules if r.matches_name(host, port, scheme)), None)
    if rule is None:
        return Decision("refused", host, port, scheme, f"no rule of this agent's allowlist covers {host}:{port}")
    try:
        addresses = await resolve(host, port)
    except (OSError, TimeoutError, UnicodeError) as exc:
        why = "the host's resolver did not answer in time" if isinstance(exc, TimeoutError) else str(exc)
        return Decision("failed", host, port, scheme, f"cannot resolve {host}: {why}", rule=rule.text)
    if not addresses:
        return Decision("failed", host, port, scheme, f"cannot resolve {host}: no address", rule=rule.text)
    refusals: list[Decision] = []
    for address in addresses:
        decision = _decide_address(rules, host, address, port, scheme, by_name=rule)
        if decision.allowed:
            return decision
        refusals.append(decision)
    return refusals[0]


def _decide_address(
    rules: list[Rule], host: str, address: IPAddress, port: int, scheme: Scheme, by_name: Rule | None
) -> Decision:
    named = next((r for r in rules if r.matches_address(address, port, scheme)), None)
    if named is not None:
        return Decision("allowed", host, port, scheme, f"rule {named.text}", str(address), named.text)
    kind = special_kind(address)
    shown = f"[{address}]" if address.version == 6 else str(address)
    if kind is not None and any(r.network is not None and address in r.network for r in rules):
        return Decision(
            "refused",
            host,
            port,
            scheme,
            f"no rule of this agent's allowlist covers {shown}:{port} over {scheme} (its rules name {address} "
            f"only for other ports or schemes)",
        )
    if kind is not None:
        via = f"{host} resolves to {address}, " if by_name is not None else f"{address} is "
        return Decision(
            "refused",
            host,
            port,
            scheme,
            f"{via}{kind}, which only a rule naming the address allows (e.g. '{shown}:{port}')",
        )
    if by_name is None:
        wildcard = next((r for r in rules if r.host == "*" and r.matches_name(host, port, scheme)), None)
        if wildcard is None:
            return Decision("refused", host, port, scheme, f"no rule of this agent's allowlist covers {shown}:{port}")
        by_name = wildcard
    return Decision("allowed", host, port, scheme, f"rule {by_name.text}", str(address), by_name.text)
