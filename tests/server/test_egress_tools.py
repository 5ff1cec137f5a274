"""Allowlists over MCP: what a model may ask for under the operator's grants, and the denials it sees."""

from __future__ import annotations

from mcp import Client

from conftest import call, fails, held_open, unique_name
from spinup.runtime import Settings
from spinup.runtime.egress import EgressClient
from spinup.server.app import build_server


async def test_allowlist_rules_need_the_grant_and_denials_come_back_with_exec(
    client: Client, settings: Settings
) -> None:
    name = unique_name("mcpeg")
    refused = await fails(client, "agent_create", name=name, allow=["pypi"])
    assert "--allow RULE" in refused and "allowlist" in refused.split("SPINUP_MCP_GRANTS=")[1]
    sealed = await call(client, "agent_create", name=name, network="allowlist")  # no rules: nothing goes out
    assert sealed["policy"]["network"] == "allowlist" and sealed["policy"]["allow"] == []
    assert "--allow RULE" in await fails(client, "agent_allow", agent=name, add=["pypi"])

    granted = Settings(home=settings.home, label_extra=settings.label_extra, mcp_grants=frozenset({"allowlist"}))
    try:
        async with held_open(Client(build_server(granted))) as operator_allowed:
            added = await call(operator_allowed, "agent_allow", agent=name, add=["pypi", "10.0.0.0/8:9"])
            assert added == {"agent": name, "network": "allowlist", "allow": ["pypi", "10.0.0.0/8:9"]}
            status = await call(operator_allowed, "agent_status", agent=name)
            assert "allow=pypi,10.0.0.0/8:9" in status["policy"]
            code = (
                "import urllib.request\ntry: urllib.request.urlopen('http://169.254.169.254/', timeout=10)\n"
                "except Exception as e: print(e)"
            )
            out = await call(operator_allowed, "exec", agent=name, command=["python3", "-c", code])
            assert "403" in out["stdout"]
            (denial,) = out["network_denied"]
            assert denial["host"] == "169.254.169.254" and denial["port"] == 80 and denial["count"] == 1
            assert "the cloud metadata address" in denial["reason"]
        # Narrowing needs no grant.
        narrowed = await call(client, "agent_allow", agent=name, remove=["10.0.0.0/8:9"])
        assert narrowed["allow"] == ["pypi"]
        assert "Invalid allowlist rule" in await fails(client, "agent_allow", agent=name, remove=[], add=["bad rule"])
        shown = await call(client, "agent_allow", agent=name)
        assert shown["allow"] == ["pypi"]
    finally:
        await call(client, "agent_remove", agent=name)
        await EgressClient(settings).stop()
