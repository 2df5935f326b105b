"""Client for bunq-sessiond: bunq session tokens and request signatures from the daemon's Unix socket.

The protocol is newline-delimited JSON-RPC 2.0 (see the bunq-sessiond README). A `Client` keeps one connection,
made on first use and made again once after the daemon closed it (an idle timeout, a restart). It is safe to share
between threads: one request at a time goes over its connection. Standard library only.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import threading
import time
from datetime import datetime
from typing import Any, Dict, Iterator, Optional

__all__ = ["Client", "CachingClient", "ProxyConnection", "SessiondError", "SessiondUnreachable", "DEFAULT_SOCKET",
           "DEFAULT_PROXY_SOCKET"]
__version__ = "0.1.0"

DEFAULT_SOCKET = "/run/bunq-sessiond/socket"
DEFAULT_PROXY_SOCKET = "/run/bunq-sessiond/proxy.sock"


class SessiondError(Exception):
    """An error answer from the daemon: `code` is the JSON-RPC code (1001 unknown context, 1002 permission
    denied, 1003 session unavailable, 1004 needs attention, 1005 upstream failure, 1006 invalid OAuth state,
    -32xxx protocol errors), `data` its details (for 1003: `state`, `retry_at`)."""

    def __init__(self, code: int, message: str, data: Optional[Dict[str, Any]] = None):
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message
        self.data = data or {}


class SessiondUnreachable(SessiondError):
    """The daemon's socket could not be reached (not running, wrong path, no permission)."""

    def __init__(self, path: str, cause: BaseException):
        super().__init__(-1, f"bunq-sessiond is unreachable at {path}: {cause}")
        self.path = path


class _Connection:
    """One socket and its read buffer: whole lines in, whole lines out."""

    def __init__(self, path: str, timeout: Optional[float]):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as error:
            self.sock.close()
            raise SessiondUnreachable(path, error) from error
        self.buffer = b""

    def send(self, message: Dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def read(self) -> Dict[str, Any]:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("the daemon closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Client:
    """A connection to bunq-sessiond. `socket_path` defaults to `$BUNQ_SESSIOND_SOCKET`, else
    `/run/bunq-sessiond/socket`; `timeout` (seconds) bounds each call (None: wait as long as it takes)."""

    def __init__(self, socket_path: Optional[str] = None, timeout: Optional[float] = 30.0):
        self.socket_path = socket_path or os.environ.get("BUNQ_SESSIOND_SOCKET") or DEFAULT_SOCKET
        self.timeout = timeout
        self._connection: Optional[_Connection] = None
        self._lock = threading.Lock()
        self._next_id = 0

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def call(self, method: str, params: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Any method of the protocol: its `result`, or `SessiondError`."""
        with self._lock:
            for attempt in (0, 1):
                if self._connection is None:
                    self._connection = _Connection(self.socket_path, self.timeout)
                self._next_id += 1
                request = {"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params or {}}
                try:
                    self._connection.send(request)
                    reply = self._connection.read()
                except ConnectionError as error:
                    # Closed by the daemon (its idle timeout, a restart): once more on a new connection. Every
                    # method tolerates that: reads and signatures repeat, renewals and reports coalesce.
                    self._connection.close()
                    self._connection = None
                    if attempt == 1:
                        raise SessiondUnreachable(self.socket_path, error) from error
                    continue
                except OSError as error:
                    self._connection.close()
                    self._connection = None
                    raise SessiondUnreachable(self.socket_path, error) from error
                return self._result(reply)
        raise AssertionError("unreachable")

    @staticmethod
    def _result(reply: Dict[str, Any]) -> Dict[str, Any]:
        if "error" in reply:
            error = reply["error"] or {}
            raise SessiondError(int(error.get("code", -32603)), str(error.get("message", "error")), error.get("data"))
        return reply.get("result") or {}

    # The calls applications make.

    def session(self, context: str) -> Dict[str, Any]:
        """The `session.get` result: token, user_id, expires_at, renew_at, generation, server_public_key."""
        return self.call("session.get", {"context": context})

    def token(self, context: str) -> str:
        """The context's current session token: valid beyond the daemon's safety margin, never expired."""
        return self.session(context)["token"]

    def sign(self, context: str, body: bytes) -> str:
        """The base64 RSA-SHA256 signature of exactly `body` with the context's installation key (bunq's
        `X-Bunq-Client-Signature`)."""
        if isinstance(body, str):
            body = body.encode()
        encoded = base64.b64encode(bytes(body)).decode()
        return self.call("request.sign", {"context": context, "body_base64": encoded})["signature"]

    def report_invalid(self, context: str, generation: int) -> Dict[str, Any]:
        """bunq refused generation `generation`'s token (401/403): returns `{generation, expires_at}` of the new
        session once it is live."""
        return self.call("session.report_invalid", {"context": context, "generation": generation})

    def renew(self, context: str) -> Dict[str, Any]:
        """Renews now (or returns the current session when the last renewal was recent)."""
        return self.call("session.renew", {"context": context})

    def subscribe(self, context: Optional[str] = None) -> Iterator[Dict[str, Any]]:
        """Notifications as they come, on a connection of their own: dicts with `method` (`session.rotated`,
        `context.state`) and `params`. Without `context`, every context this caller may use."""
        connection = _Connection(self.socket_path, None)
        try:
            connection.send({"jsonrpc": "2.0", "id": 1, "method": "session.subscribe",
                             "params": {"context": context} if context else {}})
            self._result(connection.read())
            while True:
                message = connection.read()
                if "method" in message:
                    yield {"method": message["method"], "params": message.get("params") or {}}
        finally:
            connection.close()


def _timestamp(text: Optional[str]) -> Optional[float]:
    """Seconds since the epoch of the protocol's RFC 3339 UTC timestamps (`2026-12-01T20:14:22.234Z`)."""
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class CachingClient(Client):
    """A `Client` that serves `session()` and `token()` from memory: zero round trips for the common case.

    The first call for a context asks the daemon and subscribes once (one extra connection, read by a daemon
    thread). A cached session is served until its `renew_at` (past it, while the renewal runs, for a second at a
    time), and never later than `margin` seconds before its `expires_at` (both measured from when it was
    fetched, on the monotonic clock: a wall clock that steps cannot stretch them). A rotation, a state change, or a lost subscription drops the cached entry, and the next call
    asks the daemon again. `hits` and `misses` count what was served from memory and what was asked for."""

    def __init__(self, socket_path: Optional[str] = None, timeout: Optional[float] = 30.0, margin: float = 60.0):
        super().__init__(socket_path, timeout)
        self.margin = margin
        self.hits = 0
        self.misses = 0
        self._cache: Dict[str, Any] = {}  # context -> (session dict, monotonic deadline)
        self._cache_lock = threading.Lock()
        self._watcher: Optional[threading.Thread] = None
        self._watch_connection: Optional[_Connection] = None
        # The contexts the live subscription covers (empty until it is confirmed, and again once it is lost).
        self._watched: frozenset = frozenset()
        self._confirmed = threading.Event()

    def session(self, context: str) -> Dict[str, Any]:
        now = time.monotonic()
        with self._cache_lock:
            cached = self._cache.get(context)
            if cached is not None and now < cached[1]:
                self.hits += 1
                return dict(cached[0])
            self.misses += 1
        self._watch()
        # Cached only when the subscription covering it was live before the answer was asked for: a rotation
        # after that is heard of.
        watched = context in self._watched
        result = self.call("session.get", {"context": context})
        deadline = self._deadline(result, now)
        if watched and deadline is not None:
            with self._cache_lock:
                if context in self._watched:
                    self._cache[context] = (dict(result), deadline)
        return result

    def _deadline(self, result: Dict[str, Any], fetched: float) -> Optional[float]:
        """Until when (monotonic) `result` may be served: its renew_at, at most its expiry minus the margin. Past
        renew_at (the renewal is under way and its rotation will be heard of) a second at a time, so callers do
        not all ask the daemon until the new session is there."""
        expires_at = _timestamp(result.get("expires_at"))
        if expires_at is None:
            return None
        wall = time.time()
        until = expires_at - self.margin
        renew_at = _timestamp(result.get("renew_at"))
        if renew_at is not None:
            until = min(until, renew_at if renew_at > wall else wall + 1.0)
        remaining = until - wall
        return fetched + remaining if remaining > 0 else None

    def _watch(self) -> None:
        """Starts the subscription once (again after it was lost)."""
        with self._cache_lock:
            if self._watcher is not None and self._watcher.is_alive():
                return
            self._confirmed.clear()
            self._watcher = threading.Thread(target=self._follow, name="bunq-sessiond-cache", daemon=True)
            self._watcher.start()
        self._confirmed.wait(self.timeout if self.timeout is not None else 30.0)

    def _follow(self) -> None:
        try:
            connection = _Connection(self.socket_path, None)
        except SessiondError:
            return
        self._watch_connection = connection
        try:
            connection.send({"jsonrpc": "2.0", "id": 1, "method": "session.subscribe", "params": {}})
            subscribed = self._result(connection.read()).get("subscribed") or []
            with self._cache_lock:
                self._watched = frozenset(subscribed)
            self._confirmed.set()
            while True:
                message = connection.read()
                context = (message.get("params") or {}).get("context")
                if "method" in message and context is not None:
                    with self._cache_lock:
                        self._cache.pop(context, None)
        except (OSError, ValueError, SessiondError):
            pass
        finally:
            # Without notifications nothing cached can be trusted to be current.
            with self._cache_lock:
                self._watched = frozenset()
                self._cache.clear()
            self._confirmed.set()
            connection.close()

    def close(self) -> None:
        if self._watch_connection is not None:
            self._watch_connection.close()
        super().close()


class ProxyConnection(http.client.HTTPConnection):
    """`http.client` over the daemon's bunq API proxy, for one context: send bunq's path (`/v1/...`) and body;
    the daemon adds bunq's headers, the session token and the signature, keeps within bunq's rate limits,
    verifies bunq's answer and returns it unchanged (plus `X-Bunq-Sessiond-Context` and
    `X-Bunq-Sessiond-Generation`). Keep-alive: one connection carries many requests, one at a time.

    The proxy's own errors come in bunq's error shape with `X-Bunq-Sessiond-Error` (and `Retry-After` on 503)."""

    def __init__(self, context: str, socket_path: Optional[str] = None, timeout: Optional[float] = 60.0):
        super().__init__("localhost", timeout=timeout)
        self.context = context
        self.socket_path = socket_path or os.environ.get("BUNQ_SESSIOND_PROXY_SOCKET", DEFAULT_PROXY_SOCKET)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError as error:
            sock.close()
            raise SessiondUnreachable(self.socket_path, error) from error
        self.sock = sock

    def request(self, method: str, url: str, body: Any = None, headers: Optional[Dict[str, str]] = None, **kwargs: Any) -> None:
        fields = dict(headers or {})
        fields.setdefault("X-Bunq-Context", self.context)
        super().request(method, url, body=body, headers=fields, **kwargs)
