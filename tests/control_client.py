"""An MCP client over streamable HTTP in the Python standard library alone, run inside a machine
(``python3 - CALLS`` with this file on stdin) against its control endpoint.

``CALLS`` is a JSON list of ``[method or tool name, arguments]``; ``tools/list`` lists. Prints the
JSON-RPC answers as one JSON list. Waits up to ``$CONTROL_WAIT`` (20) s for the endpoint to listen.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

URL = os.environ.get("SPINUP_CONTROL_URL", "http://127.0.0.1:7390/mcp")
TOKEN = os.environ.get("SPINUP_CONTROL_TOKEN", "")
session = None


def post(body):
    global session
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "Authorization": "Bearer " + TOKEN,
    }
    if session:
        headers["mcp-session-id"] = session
    request = urllib.request.Request(URL, json.dumps(body).encode(), headers)
    deadline = time.monotonic() + float(os.environ.get("CONTROL_WAIT", "20"))
    while True:
        try:
            response = urllib.request.urlopen(request, timeout=120)
            break
        except urllib.error.HTTPError as exc:
            return {"http_status": exc.code}
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                return {"unreachable": True}
            time.sleep(0.2)
    with response:
        session = response.headers.get("mcp-session-id") or session
        text = response.read().decode()
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            for line in text.splitlines():
                if line.startswith("data:") and '"id"' in line:
                    return json.loads(line[5:])
            return None
        return json.loads(text) if text else None


hello = post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "inside", "version": "1"}}})
answers = [hello]
if hello and "result" in hello:
    post({"jsonrpc": "2.0", "method": "notifications/initialized"})
    for number, (name, arguments) in enumerate(json.loads(sys.argv[1])):
        if name == "tools/list":
            answers.append(post({"jsonrpc": "2.0", "id": 10 + number, "method": "tools/list"}))
        else:
            call = {"name": name, "arguments": arguments}
            answers.append(post({"jsonrpc": "2.0", "id": 10 + number, "method": "tools/call", "params": call}))
print(json.dumps(answers))
