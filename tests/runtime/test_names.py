"""Agent names: what is accepted and what is refused (pure logic)."""

from __future__ import annotations

import pytest

from spinup.runtime.errors import InvalidInput
from spinup.runtime.models import validate_agent_name


@pytest.mark.parametrize("name", ["a", "my-agent", "agent-1", "x" * 63, "0abc"])
def test_valid_agent_names_are_accepted(name: str) -> None:
    assert validate_agent_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "My-Agent", "-a", "a-", "a_b", "a.b", "x" * 64, "a b", "ä"])
def test_invalid_agent_names_are_rejected_with_the_rule(name: str) -> None:
    with pytest.raises(InvalidInput, match="lowercase letters, digits"):
        validate_agent_name(name)
