"""The browser dashboard served by ``spinup serve`` at ``/``: every agent at a glance, one agent's
timeline, commands, processes, ports, snapshots and files, and the buttons to steer it.

- ``web``: :class:`Dashboard`, its routes and the checks every request passes
- ``sessions``: the token traded for a session cookie; the same-origin check of buttons
- ``pages``: the pages, fragments, live stream and buttons
- ``actions``: each button as the runtime call the MCP tool makes, acting as the dashboard
- ``live``: one feed for every tab (shared usage sampler, events, process output)
- ``views``: what the pages show of the runtime's records
"""

from .web import Dashboard

__all__ = ["Dashboard"]
