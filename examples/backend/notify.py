#!/usr/bin/env python3
"""Tells a user something through Web-IM's server API (docs/API.md, "Server API"); stdlib only.

    IM_URL=http://127.0.0.1:8080 IM_API_KEY=<one of server_api.keys> ./notify.py USER_ID TEXT [CLIENT_ID]
"""
import json, os, sys, urllib.error, urllib.request

BASE = os.environ.get("IM_URL", "http://127.0.0.1:8080") + "/api/v1/server"
HEADERS = {"X-Api-Key": os.environ["IM_API_KEY"], "Content-Type": "application/json"}

def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(BASE + path, data, HEADERS, method=method)) as res:
            raw = res.read()
            return json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:  # every error is {"error": {"code", "message"}}
        sys.exit(f"{method} {path}: {e.code} {json.load(e)['error']}")

user, text = int(sys.argv[1]), sys.argv[2]
# A client id (your own event's id) makes a retry safe: it is stored once, and a repeat gets the first message.
draft = {"to": {"user": user}, "kind": "text", "body": {"text": text}, "client_id": (sys.argv[3:] or [None])[0]}
message = call("POST", "/messages", draft)["message"]
online = call("GET", f"/presence?users={user}")["presence"][0]["online"]
print(f"message {message['id']} stored; user {user} is {'online' if online else 'offline'}")
