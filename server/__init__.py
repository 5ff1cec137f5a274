"""The MCP surface of Spinup: tools, transports, auth, and the ``spinup`` CLI."""
