"""Allowlist rules and egress decisions (pure logic: a resolver given by the test, no traffic)."""

from __future__ import annotations

import ipaddress

import pytest

from spinup.runtime import InvalidInput, Policy
from spinup.runtime.egress.decide import Decision, decide, parse_pins, pinned_resolver
from spinup.runtime.egress.rules import PRESETS, IPAddress, expand, normalize, parse_rule


def resolver(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[IPAddress]:
        asked.append(host)
        if host not in table:
            raise OSError(f"[Errno -2] Name or service not known: {host}")
        return [ipaddress.ip_address(a) for a in table[host]]

    resolve.asked = asked  # type: ignore[attr-defined]
    return resolve


async def check(allow: list[str], host: str, port: int = 443, scheme: str = "https", **table: list[str]) -> Decision:
    dns = {name.replace("_", "."): addresses for name, addresses in table.items()}
    return await decide(expand(allow), host, port, scheme, resolver(dns))  # type: ignore[arg-type]


def test_rules_parse_to_a_canonical_spelling() -> None:
    assert parse_rule("PyPI.org").text == "pypi.org"
    assert parse_rule("https://api.example.com:8443").text == "https://api.example.com:8443"
    assert parse_rule("[::1]:80").text == "[::1]:80"
    assert parse_rule("127.0.0.1/32").text == "127.0.0.1"
    assert parse_rule("192.168.0.0/16").text == "192.168.0.0/16"
    assert normalize(["pypi", "PYPI.org", "pypi.org", "Pypi"]) == ("pypi", "pypi.org")


@pytest.mark.parametrize(
    ("rule", "says"),
    [
        ("pypl", "Unknown allowlist preset 'pypl'"),
        ("localhost:8080", "must name the address itself"),
        ("ftp://example.org", "scheme 'ftp'"),
        ("example.org:0", "port '0'"),
        ("10.0.0.0/4", "not an IP address"),
        ("0.0.0.0/1", "wider than /8"),
        ("exa mple.org", "is not a host name"),
        ("http://a.org/path", "not [scheme://]host[:port]"),
        ("", "cannot be empty"),
        ("a..b", "not a host name"),
    ],
)
def test_a_malformed_rule_is_refused_with_what_to_write(rule: str, says: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        Policy().updated(allow=[rule])
    assert says in str(caught.value)


def test_rules_imply_allowlist_and_need_it() -> None:
    assert Policy().updated(allow=["pypi"]).network == "allowlist"
    with pytest.raises(InvalidInput, match="need network 'allowlist'"):
        Policy().updated(network="host", allow=["pypi"])
    assert "allow=pypi" in Policy().updated(allow=["pypi"]).describe()


def test_presets_expand_to_valid_rules() -> None:
    for name, rules in PRESETS.items():
        assert [r.text for r in expand([name])] == [parse_rule(r).text for r in rules], name


async def test_a_name_rule_allows_its_public_address_only() -> None:
    allowed = await check(["pypi"], "pypi.org", pypi_org=["151.101.0.223"])
    assert allowed.allowed and allowed.address == "151.101.0.223" and allowed.rule == "https://pypi.org"
    private = await check(["pypi"], "pypi.org", pypi_org=["10.0.0.5"])
    assert private.outcome == "refused" and "resolves to 10.0.0.5, a private address" in private.reason
    other = await check(["pypi"], "evil.example", evil_example=["151.101.0.1"])
    assert other.outcome == "refused" and "no rule" in other.reason


async def test_names_outside_the_rules_are_never_resolved() -> None:
    resolve = resolver({"evil.example": ["1.2.3.4"]})
    decision = await decide(expand(["pypi"]), "evil.example", 443, "https", resolve)
    assert decision.outcome == "refused" and resolve.asked == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("169.254.169.254", "the cloud metadata address"),
        ("10.0.0.1", "a private address"),
        ("127.0.0.1", "a loopback address"),
        ("::ffff:10.0.0.1", "a private address"),
        ("[fe80::1]", "a link-local address"),
    ],
)
async def test_special_addresses_are_refused_without_a_rule_naming_them(host: str, kind: str) -> None:
    decision = await check(["*"], host, 80, "http")
    assert decision.outcome == "refused" and kind in decision.reason and decision.address is None


async def test_a_rule_naming_the_address_allows_it() -> None:
    assert (await check(["127.0.0.1:8080"], "127.0.0.1", 8080, "http")).allowed
    assert (await check(["10.0.0.0/8"], "10.1.2.3", 443)).allowed
    wrong_port = await check(["127.0.0.1:8080"], "127.0.0.1", 8081, "http")
    assert wrong_port.outcome == "refused" and "only for other ports" in wrong_port.reason


async def test_wildcards_ports_and_schemes() -> None:
    table = {"api_github_com": ["140.82.112.6"], "github_com": ["140.82.112.3"]}
    assert (await check(["*.github.com"], "api.github.com", **table)).allowed
    assert not (await check(["*.github.com"], "github.com", **table)).allowed
    assert not (await check(["*.github.com"], "api.github.com", 8080, **table)).allowed  # no port: 80 and 443
    assert not (await check(["https://*.github.com"], "api.github.com", 80, "http", **table)).allowed
    assert (await check(["api.github.com:8080"], "api.github.com", 8080, "http", **table)).allowed


async def test_a_name_that_does_not_resolve_fails_with_the_reason() -> None:
    decision = await check(["nowhere.example"], "nowhere.example")
    assert decision.outcome == "failed" and "cannot resolve nowhere.example" in decision.reason


async def test_pinned_names_resolve_without_the_host_resolver() -> None:
    pins = parse_pins("pypi.internal=127.0.0.1, pypi.internal=::1")
    resolve = pinned_resolver(pins, resolver({}))
    assert [str(a) for a in await resolve("PyPI.internal.", 443)] == ["127.0.0.1", "::1"]
    with pytest.raises(ValueError, match="name=address"):
        parse_pins("pypi.internal")
