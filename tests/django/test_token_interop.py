"""Token interop: tokens minted by djangorestframework-simplejwt (this Django project,
shared HS256 key) are accepted by OUR server, `target/debug/hablar-server`.

The binary is built by `cargo build -p hablar-server`; these tests skip (with that
message) only while it does not exist. Override the path with HABLAR_SERVER_BIN.
"""

import asyncio
import json
import os
import queue
import re
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import HTTP, JWT_SECRET, LOOPBACK_ORIGIN, REPO, mint_token, stop

SERVER_BIN = Path(os.environ.get("HABLAR_SERVER_BIN", REPO / "target/debug/hablar-server"))
LISTENING = re.compile(r"^hablar-server listening on http://([0-9.]+):(\d+)$")
# Frames of the extension layer a base-layer client never sees from Django.
EXTENSION_TYPES = {"ready", "presence_join", "presence_leave", "read", "pong", "error"}


@pytest.fixture(scope="module")
def hablar_server(tmp_path_factory):
    if not SERVER_BIN.exists():
        pytest.skip(f"{SERVER_BIN} not built yet: run `cargo build -p hablar-server` first")
    log = tmp_path_factory.mktemp("hablar") / "hablar-server.stderr"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HABLAR_")}
    env.pop("REDIS_URL", None)
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [str(SERVER_BIN), "--dev", "--bind", "127.0.0.1:0", "--jwt-secret", JWT_SECRET],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
        )
    lines = queue.Queue()

    def drain():  # Keep reading so the pipe never fills and blocks the server.
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=drain, daemon=True).start()
    try:
        while True:
            try:
                line = lines.get(timeout=30)
            except queue.Empty:
                pytest.fail(f"hablar-server printed no listening line: {log.read_text()}")
            if m := LISTENING.match(line):
                yield f"{m.group(1)}:{m.group(2)}"
                break
    finally:
        stop(proc)


def hablar_dev_token(base, user_id):
    req = urllib.request.Request(
        f"http://{base}/api/dev/token", data=json.dumps({"user_id": user_id}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with HTTP.open(req, timeout=10) as resp:
        return json.load(resp)["token"]


def open_ws(base, chat_id, token, origin=None):
    return connect(f"ws://{base}/ws/chat/{chat_id}/?token={token}",
                   origin=origin, proxy=None, open_timeout=5)


async def recv_json(ws, timeout=5.0):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_base(ws, timeout=5.0):
    """The next base-layer frame, skipping extension frames (presence etc.)."""
    while True:
        frame = await recv_json(ws, timeout)
        if frame.get("type") not in EXTENSION_TYPES:
            return frame


def test_simplejwt_token_is_accepted_by_hablar_server_which_sends_ready(
        hablar_server, django_env):
    token = mint_token(django_env, "alice")

    async def scenario():
        # Without Origin (a non-browser client) and with a loopback page's Origin.
        for origin in (None, LOOPBACK_ORIGIN):
            async with open_ws(hablar_server, "general", token, origin) as ws:
                ready = await recv_json(ws)
                assert ready["type"] == "ready", ready
                assert ready["user_id"] == "alice"
                assert ready["chat_id"] == "general"

    asyncio.run(scenario())


def test_django_dev_endpoint_tokens_drive_base_layer_chat_on_hablar_server(
        hablar_server, daphne):
    """The tokens the SDK browser test gets from Django work on our server, and our
    server's base-layer frames are the ones Django sends for the same actions."""
    alice, bob = daphne.dev_token("alice")["token"], daphne.dev_token("bob")["token"]

    async def scenario():
        async with open_ws(hablar_server, "random", alice, LOOPBACK_ORIGIN) as a, \
                open_ws(hablar_server, "random", bob, LOOPBACK_ORIGIN) as b:
            assert (await recv_json(a))["type"] == "ready"
            assert (await recv_json(b))["type"] == "ready"
            await a.send(json.dumps({"type": "typing_start"}))
            assert await recv_base(b) == {
                "type": "typing_start", "user_id": "alice", "username": "Alice"}
            await a.send(json.dumps({"type": "typing_stop"}))
            assert await recv_base(b) == {"type": "typing_stop", "user_id": "alice"}
            await a.send(json.dumps({"type": "new_message", "message": {
                "content": "hi from a simplejwt token", "client_id": "c-1",
                "sender": {"id": "bob", "username": "Bob"}}}))
            got = await recv_base(b)
            assert got["type"] == "new_message"
            assert got["message"]["sender"] == {"id": "alice", "username": "Alice"}
            assert got["message"]["client_id"] == "c-1"

    asyncio.run(scenario())


def test_simplejwt_token_signed_with_another_key_is_refused_with_4401(
        hablar_server, django_env):
    token = mint_token({**django_env, "HABLAR_JWT_SECRET": "not-the-shared-key"}, "alice")

    async def scenario():
        try:
            async with open_ws(hablar_server, "general", token) as ws:
                while True:
                    frame = await recv_json(ws)
                    assert frame.get("type") != "ready", "a foreign key must not pass"
        except ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 4401
        except InvalidStatus as e:
            pytest.fail(f"expected close 4401 after the upgrade, got HTTP {e.response.status_code}")

    asyncio.run(scenario())


def test_hablar_server_dev_tokens_are_accepted_by_simplejwt_in_django(hablar_server, daphne):
    """The other direction: our dev endpoint's tokens carry the claims simplejwt insists
    on (`token_type`, `exp`, `jti`, `user_id`), so Django accepts them as well."""
    token = hablar_dev_token(hablar_server, "bob")

    async def scenario():
        async with open_ws(daphne.base, "random", token, LOOPBACK_ORIGIN) as ws:
            await ws.send(json.dumps({"type": "typing_start"}))
            assert await recv_json(ws) == {
                "type": "typing_start", "user_id": "bob", "username": "Bob"}

    asyncio.run(scenario())


def test_new_message_from_hablar_server_has_every_field_django_sends(hablar_server, daphne):
    """A frontend written for the Django backend reads the same fields from our server;
    our server adds only the extension field `seq`."""
    alice = mint_token(daphne.env, "alice")
    sent = {"type": "new_message",
            "message": {"content": "same shape", "client_id": "c-9", "reply_to": "m-1"}}

    async def echo(base):
        async with open_ws(base, "general", alice, LOOPBACK_ORIGIN) as ws:
            await ws.send(json.dumps(sent))
            return await recv_base(ws)

    django_frame = asyncio.run(echo(daphne.base))
    hablar_frame = asyncio.run(echo(hablar_server))
    assert set(hablar_frame) == set(django_frame) == {"type", "message"}
    d, h = django_frame["message"], hablar_frame["message"]
    assert set(h) - set(d) == {"seq"} and set(d) <= set(h)
    for key in ("chat_id", "content", "sender", "client_id", "reply_to"):
        assert h[key] == d[key], key
    for msg in (d, h):
        assert isinstance(msg["id"], str) and msg["created_at"].endswith("Z")
