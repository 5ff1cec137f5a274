"""What MCP clients may put in a policy: SPINUP_MCP_GRANTS parsing and the check agent_create runs."""

from __future__ import annotations

import pytest

from spinup.runtime import Policy, Settings
from spinup.runtime.config import parse_grants
from spinup.runtime.errors import InvalidInput, NotGranted
from spinup.runtime.policy import check_granted


@pytest.mark.parametrize(
    ("text", "grants"),
    [
        ("root", {"root"}),
        ("host-network, ROOT", {"host-network", "root"}),
        ("all", {"host-network", "root", "registry", "allowlist"}),
        ("allowlist", {"allowlist"}),
        ("none", set()),
        ("", set()),
        (" , ", set()),
    ],
)
def test_grants_parse(text: str, grants: set[str]) -> None:
    assert parse_grants(text) == grants


@pytest.mark.parametrize("text", ["host", "root,sudo", "all,root", "none,root"])
def test_unknown_grants_are_refused_with_the_words_that_work(text: str) -> None:
    words = "comma-separated list of host-network, root, registry, allowlist, or 'all', or 'none'"
    with pytest.raises(InvalidInput, match=words):
        parse_grants(text)


def test_settings_read_the_environment_and_grant_nothing_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPINUP_MCP_GRANTS", raising=False)
    assert Settings().mcp_grants == set()
    monkeypatch.setenv("SPINUP_MCP_GRANTS", "host-network")
    assert Settings().mcp_grants == {"host-network"}
    monkeypatch.setenv("SPINUP_MCP_GRANTS", "hostnetwork")
    with pytest.raises(InvalidInput, match="hostnetwork"):
        Settings()


def test_a_policy_within_the_grants_passes() -> None:
    check_granted(Policy(), frozenset())
    check_granted(Policy(user="root", memory="1g"), frozenset({"root"}))
    check_granted(Policy(network="host", user="root"), frozenset({"root", "host-network"}))


def test_a_policy_beyond_the_grants_is_refused_with_both_ways_out() -> None:
    with pytest.raises(NotGranted) as refused:
        check_granted(Policy(network="host", user="root"), frozenset())
    message = str(refused.value)
    assert "--network host or --user root" in message
    assert "spinup agent create NAME --network host --user root" in message
    assert "SPINUP_MCP_GRANTS=host-network,root" in message
    with pytest.raises(NotGranted, match="SPINUP_MCP_GRANTS=host-network,root") as only_network:
        check_granted(Policy(network="host"), frozenset({"root"}))
    assert "--user root" not in str(only_network.value)
