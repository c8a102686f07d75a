"""The base layer of PROTOCOL.md as a stock Django Channels backend speaks it.

Real redis-server, real daphne, real WebSocket clients (`websockets`). These tests pin
down what the SDK must cope with when it talks to such a backend, and what our server
must imitate: exact typing frames, the group echo of messages, refusals without a close
code, and a backend restart.
"""

import asyncio
import json
import sqlite3
import time
from datetime import datetime, timedelta, timezone

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import HTTP, JWT_SECRET, LOOPBACK_ORIGIN


def ws_url(daphne, chat_id, token):
    return f"ws://{daphne.base}/ws/chat/{chat_id}/?token={token}"


def open_ws(daphne, chat_id, token, origin=LOOPBACK_ORIGIN):
    return connect(ws_url(daphne, chat_id, token), origin=origin, proxy=None, open_timeout=5)


async def recv_json(ws, timeout=5.0):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def assert_silent(ws, seconds=0.3):
    try:
        frame = await asyncio.wait_for(ws.recv(), seconds)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"expected no frame, got {frame!r}")


async def refused_status(daphne, chat_id, token, origin=LOOPBACK_ORIGIN):
    """The HTTP status of a refused handshake; fails if the socket was accepted."""
    try:
        async with open_ws(daphne, chat_id, token, origin):
            pass
    except InvalidStatus as e:
        return e.response.status_code
    raise AssertionError(f"handshake to {chat_id} was accepted")


def token(daphne, user_id):
    return daphne.dev_token(user_id)["token"]


def test_typing_from_alice_reaches_bob_as_exact_base_layer_frames(daphne):
    async def scenario():
        async with open_ws(daphne, "general", token(daphne, "alice")) as alice, \
                open_ws(daphne, "general", token(daphne, "bob")) as bob:
            await alice.send(json.dumps({"type": "typing_start"}))
            start = {"type": "typing_start", "user_id": "alice", "username": "Alice"}
            assert await recv_json(bob) == start
            # A group send reaches the sender too: the SDK must filter its own typing.
            assert await recv_json(alice) == start

            await alice.send(json.dumps({"type": "typing_stop"}))
            stop = {"type": "typing_stop", "user_id": "alice"}
            assert await recv_json(bob) == stop
            assert await recv_json(alice) == stop

    asyncio.run(scenario())


def test_new_message_reaches_bob_and_echoes_to_alice_with_server_stamped_sender(daphne):
    async def scenario():
        async with open_ws(daphne, "general", token(daphne, "alice")) as alice, \
                open_ws(daphne, "general", token(daphne, "bob")) as bob:
            before = datetime.now(timezone.utc)
            await alice.send(json.dumps({"type": "new_message", "message": {
                "content": "hello bob",
                "client_id": "c-1",
                "reply_to": "m-0",
                # Server-owned fields a client tries to spoof:
                "id": "spoofed",
                "sender": {"id": "bob", "username": "Bob"},
                "created_at": "2000-01-01T00:00:00Z",
                "chat_id": "random",
            }}))
            to_bob = await recv_json(bob)
            echo = await recv_json(alice)
            assert to_bob == echo, "every member gets the same event"
            assert to_bob["type"] == "new_message"
            msg = to_bob["message"]
            assert msg["sender"] == {"id": "alice", "username": "Alice"}
            assert msg["content"] == "hello bob"
            assert msg["chat_id"] == "general"
            assert msg["client_id"] == "c-1" and msg["reply_to"] == "m-0"
            assert isinstance(msg["id"], str) and msg["id"] not in ("", "spoofed")
            created = datetime.fromisoformat(msg["created_at"].replace("Z", "+00:00"))
            assert msg["created_at"].endswith("Z")
            assert before - timedelta(seconds=1) <= created <= datetime.now(timezone.utc)
            assert "seq" not in msg, "the base layer has no seq"
            return msg["id"]

    msg_id = asyncio.run(scenario())
    with sqlite3.connect(daphne.env["HABLAR_DJANGO_DB"]) as db:
        rows = db.execute(
            "SELECT id, content, chat_id FROM chat_message WHERE content = 'hello bob'"
        ).fetchall()
    # Django stores UUIDs as 32 hex digits in sqlite.
    assert rows == [(msg_id.replace("-", ""), "hello bob", "general")], "stored once"


def test_unknown_types_and_bad_frames_are_ignored_without_error_or_close(daphne):
    async def scenario():
        async with open_ws(daphne, "random", token(daphne, "bob")) as bob:
            for frame in (
                json.dumps({"type": "ping", "id": "p1"}),
                json.dumps({"type": "mark_read", "up_to": "x"}),
                "not json",
                json.dumps(["type", "typing_start"]),
                json.dumps({"type": "new_message", "message": {"content": "   "}}),
                json.dumps({"type": "new_message", "message": "text"}),
            ):
                await bob.send(frame)
            # No pong, no error: the base layer has neither.
            await assert_silent(bob)
            await bob.send(json.dumps({"type": "typing_stop"}))
            assert await recv_json(bob) == {"type": "typing_stop", "user_id": "bob"}

    asyncio.run(scenario())


def test_bad_tokens_are_refused_before_the_upgrade(daphne):
    now = int(time.time())
    claims = {"token_type": "access", "user_id": "alice", "jti": "j", "iat": now}
    bad = {
        "missing": "",
        "garbage": "not-a-jwt",
        "wrong key": jwt.encode({**claims, "exp": now + 60}, "other-secret", "HS256"),
        "expired": jwt.encode({**claims, "exp": now - 1}, JWT_SECRET, "HS256"),
        "refresh type": jwt.encode(
            {**claims, "token_type": "refresh", "exp": now + 60}, JWT_SECRET, "HS256"),
        "alg none": jwt.encode({**claims, "exp": now + 60}, None, "none"),
        "HS512": jwt.encode({**claims, "exp": now + 60}, JWT_SECRET, "HS512"),
        "unknown user": jwt.encode(
            {**claims, "user_id": "nobody", "exp": now + 60}, JWT_SECRET, "HS256"),
    }

    async def scenario():
        for name, bad_token in bad.items():
            status = await refused_status(daphne, "general", bad_token)
            # A base-layer peer refuses without a close code: a browser sees 1006.
            assert status == 403, name
        # The same claims, properly signed, are accepted: the refusals above are real.
        good = jwt.encode({**claims, "exp": now + 60}, JWT_SECRET, "HS256")
        async with open_ws(daphne, "general", good) as ws:
            await ws.send(json.dumps({"type": "typing_stop"}))
            assert await recv_json(ws) == {"type": "typing_stop", "user_id": "alice"}

    asyncio.run(scenario())


def test_non_members_and_unknown_chats_are_refused(daphne):
    async def scenario():
        assert await refused_status(daphne, "general", token(daphne, "mallory")) == 403
        assert await refused_status(daphne, "random", token(daphne, "carol")) == 403
        assert await refused_status(daphne, "no-such-chat", token(daphne, "alice")) == 403
        async with open_ws(daphne, "random", token(daphne, "bob")):
            pass

    asyncio.run(scenario())


def test_loopback_origins_on_any_port_are_allowed_and_foreign_ones_refused(daphne):
    alice = token(daphne, "alice")

    async def scenario():
        for origin in ("http://localhost:5173", "http://127.0.0.1:41234"):
            async with open_ws(daphne, "general", alice, origin=origin):
                pass
        assert await refused_status(daphne, "general", alice, "http://evil.example") == 403
        # Stock AllowedHostsOriginValidator also refuses a handshake without Origin
        # (our server allows it by default; browsers always send one).
        assert await refused_status(daphne, "general", alice, origin=None) == 403

    asyncio.run(scenario())


def test_dev_token_endpoint_answers_cors_for_loopback_pages(daphne):
    import urllib.request

    body = daphne.dev_token("alice")
    assert body["user_id"] == "alice" and body["username"] == "Alice"
    assert jwt.decode(body["token"], JWT_SECRET, ["HS256"])["user_id"] == "alice"

    def preflight(origin):
        req = urllib.request.Request(
            f"http://{daphne.base}/api/dev/token", method="OPTIONS",
            headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "content-type"})
        with HTTP.open(req, timeout=5) as resp:
            return resp.headers.get("Access-Control-Allow-Origin")

    assert preflight("http://localhost:8123") == "http://localhost:8123"
    assert preflight("http://127.0.0.1:9999") == "http://127.0.0.1:9999"
    assert preflight("http://evil.example") is None


def test_clients_reconnect_after_daphne_is_killed_and_restarted(daphne):
    alice_token, bob_token = token(daphne, "alice"), token(daphne, "bob")

    async def reconnect(chat_id, tok, deadline=15.0):
        delay, end = 0.05, time.monotonic() + deadline
        while True:
            try:
                return await open_ws(daphne, chat_id, tok)
            except (OSError, InvalidStatus, asyncio.TimeoutError):
                if time.monotonic() > end:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    async def scenario():
        alice = await open_ws(daphne, "general", alice_token)
        bob = await open_ws(daphne, "general", bob_token)
        daphne.kill()
        for ws in (alice, bob):
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
        # Down: a connect attempt fails like a network failure.
        with pytest.raises(OSError):
            await open_ws(daphne, "general", alice_token)

        daphne.start()
        alice = await reconnect("general", alice_token)
        bob = await reconnect("general", bob_token)
        try:
            await alice.send(json.dumps(
                {"type": "new_message", "message": {"content": "back", "client_id": "c-2"}}))
            got = await recv_json(bob)
            assert got["message"]["content"] == "back"
            assert got["message"]["sender"]["id"] == "alice"
            assert (await recv_json(alice))["message"]["client_id"] == "c-2"
        finally:
            await alice.close()
            await bob.close()

    asyncio.run(scenario())
