"""Fixtures: a real redis-server, a seeded sqlite DB and real daphne processes, each on
a free loopback port, stopped after the test. No mocks."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
JWT_SECRET = os.environ.get("HABLAR_JWT_SECRET", "hablar-dev-secret")
# The Origin a browser page served from another loopback port would send.
LOOPBACK_ORIGIN = "http://127.0.0.1:9"
# No proxy from the environment may sit between the tests and loopback servers.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, proc, timeout=20.0, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}: {read_log(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s: {read_log(log)}")


def read_log(log):
    return Path(log).read_text(errors="replace")[-4000:] if log and Path(log).exists() else ""


def stop(proc, sig=signal.SIGTERM):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("redis")
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    log = tmp_path / "redis.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path)],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, proc, log=log)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def django_env(tmp_path_factory):
    """Environment for manage.py/daphne with a fresh, migrated and seeded sqlite DB."""
    tmp_path = tmp_path_factory.mktemp("django")
    env = dict(os.environ)
    env["HABLAR_DJANGO_DB"] = str(tmp_path / "db.sqlite3")
    env["HABLAR_JWT_SECRET"] = JWT_SECRET
    env["DJANGO_SETTINGS_MODULE"] = "hablar_base.settings"
    for args in (["migrate", "--verbosity", "0"], ["seed"]):
        subprocess.run([sys.executable, "manage.py", *args], cwd=HERE, env=env, check=True,
                       stdout=subprocess.DEVNULL)
    return env


def mint_token(env, user_id, ttl_secs=None):
    """A token minted by simplejwt through the `mint_token` management command."""
    args = [sys.executable, "manage.py", "mint_token", user_id]
    if ttl_secs is not None:
        args += ["--ttl-secs", str(ttl_secs)]
    out = subprocess.run(args, cwd=HERE, env=env, check=True, capture_output=True, text=True)
    return out.stdout.strip()


class Daphne:
    """The Django app under daphne (via run-daphne.sh), restartable on the same port."""

    def __init__(self, env, redis_url, log_dir):
        self.env, self.redis_url, self.log_dir = env, redis_url, log_dir
        self.port = free_port()
        self.proc = None
        self.starts = 0

    @property
    def base(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        self.starts += 1
        self.log = self.log_dir / f"daphne-{self.starts}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(HERE / "run-daphne.sh"), str(self.port), self.redis_url],
                env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, self.proc, log=self.log)

    def kill(self):
        stop(self.proc, signal.SIGKILL)

    def dev_token(self, user_id):
        req = urllib.request.Request(
            f"http://{self.base}/api/dev/token",
            data=json.dumps({"user_id": user_id}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with HTTP.open(req, timeout=10) as resp:
            return json.load(resp)


@pytest.fixture(scope="module")
def daphne(django_env, redis_url, tmp_path_factory):
    """One daphne per test module (startup costs seconds on this 2-core machine); a test
    that kills it starts it again, so the next test finds it running."""
    d = Daphne(django_env, redis_url, tmp_path_factory.mktemp("daphne"))
    d.start()
    try:
        yield d
    finally:
        if d.proc is not None:
            stop(d.proc)
