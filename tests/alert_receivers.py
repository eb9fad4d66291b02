"""Real endpoints for alert deliveries: an HTTP server taking webhooks (Apprise's ``json://`` and a
Mattermost-shaped ``mmost://`` hook), which can also refuse or hang on chosen paths, and a real
SMTP server (aiosmtpd) for ``mailto://``; and the hub TOML's ``[alerts]`` table that points at them."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType
from typing import Any

from aiosmtpd.controller import Controller

from tests.procs import free_port

REFUSE_PATH = "/refuse"  # answers 500
HANG_PATH = "/hang"  # answers nothing for a minute
# nodes a1 and a2 in one group, for the rules and the strip that count free GPUs by group
A100_ROOM_TOML = '[names.a1]\ngroup = "A100 room"\n[names.a2]\ngroup = "A100 room"\n'
# a gpus_free rule for bob (an [alerts.users] name): two A100s free at once in the A100 room
TWO_A100_FREE_RULE: Mapping[str, Any] = MappingProxyType(
    {
        "name": "2 A100 free",
        "when": "gpus_free",
        "model": "A100",
        "min_free": 2,
        "group": "A100 room",
        "users": ["bob"],
    }
)


@dataclass
class Received:
    path: str
    body: dict[str, Any]


@dataclass
class WebhookReceiver:
    port: int
    received: list[Received] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)  # path -> requests, refused ones too
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r.body for r in self.received if r.path == path]

    def url(self, path: str) -> str:
        """Apprise's ``json://`` URL posting to ``path`` here."""
        return f"json://127.0.0.1:{self.port}{path}"


@contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(free_port())
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            path = self.path.split("?")[0]
            with receiver.lock:
                receiver.attempts[path] = receiver.attempts.get(path, 0) + 1
            if path.startswith(HANG_PATH):
                release.wait(60)
                return
            if path.startswith(REFUSE_PATH):
                self.send_response(500)
                self.end_headers()
                return
            with receiver.lock:
                receiver.received.append(Received(path, json.loads(raw or b"{}")))
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", receiver.port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        release.set()
        server.shutdown()
        server.server_close()


@dataclass
class MailReceiver:
    port: int
    mails: list[Message] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append(message_from_bytes(envelope.content))
        return "250 OK"

    def url(self, to: str) -> str:
        return f"mailto://127.0.0.1:{self.port}?from=hub@lab.example&to={to}&mode=insecure"

    def subjects(self, to: str | None = None) -> list[str]:
        return [str(m["subject"]) for m in list(self.mails) if to is None or to in str(m["to"])]


@contextmanager
def mail_receiver() -> Iterator[MailReceiver]:
    receiver = MailReceiver(free_port())
    controller = Controller(receiver, hostname="127.0.0.1", port=receiver.port)
    controller.start()
    try:
        yield receiver
    finally:
        controller.stop()


def alerts_toml(
    channels: Mapping[str, str],
    rules: Sequence[Mapping[str, Any]],
    group_wait_s: float,
    users: Mapping[str, str] | None = None,
) -> str:
    """The hub TOML's ``[alerts]`` table: ``channels`` (name -> Apprise URL), ``rules`` (each with
    its keys as the README spells them) and the ``users``' own URLs. Values are written as JSON,
    which TOML reads the same for strings, numbers and lists."""
    lines = ["[alerts]", f"group_wait_s = {group_wait_s}"]
    if users:
        lines.append(
            "users = { " + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in users.items()) + " }"
        )
    for name, url in channels.items():
        lines += ["[[alerts.channels]]", f"name = {json.dumps(name)}", f"url = {json.dumps(url)}"]
    for rule in rules:
        lines += ["[[alerts.rules]]", *(f"{key} = {json.dumps(value)}" for key, value in rule.items())]
    return "\n".join(lines) + "\n"


def settle(seconds: float) -> None:
    """Waits to show that nothing more arrives (a test of absence needs the time to pass)."""
    time.sleep(seconds)
