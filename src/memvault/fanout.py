"""Live fan-out across processes: PostgreSQL LISTEN/NOTIFY or Redis pub/sub.

A follower of a live message (``GET /api/messages/{id}/stream``) on one server
must learn quickly that a chunk was committed by another. The database stays the
source of truth; a relay carries only *which messages changed*, and the
follower's process wakes its followers (``LocalHub.wake``), who re-read the
database. Polling stays as the safety net: rare (``MEMVAULT_LIVE_POLL_MS``)
while the relay is connected, fast (``live.FAST_POLL_S``) while it is not.

Sending: the hub calls ``announce(message_id)`` after each committed chunk or
end, on the writer's hot path, which only adds the id to a set. A sender thread
sends whatever is pending as one message, so one NOTIFY / PUBLISH serves a whole
group commit (and every commit made while the previous one was on the wire). A
process that dies between a commit and its announcement leaves it to polling.

Payload: ``"<origin> <id>,<id>,…"``, at most ``MAX_PAYLOAD`` bytes
(PostgreSQL refuses 8000); more ids are split over up to ``MAX_PARTS`` messages,
beyond that one ``"<origin> *"`` wakes every follower. ``origin`` is random per
vault: a process ignores its own messages (its followers were woken in-process).

Receiving: a thread holding one dedicated connection (LISTEN, or SUBSCRIBE),
started when the first follower subscribes. When the connection drops it
reconnects with back-off (``RETRY_MIN_S`` doubling to ``RETRY_MAX_S``), logging
once per outage. After every (re)connect it wakes every local follower:
announcements may have been missed while nobody listened.

Channels: on PostgreSQL, notifications stay within one database, so the channel
is fixed. On Redis, the channel is named after the database the vault uses
(host, port and name; or the SQLite file's path), so vaults on different
databases sharing one Redis do not wake each other; replicas must therefore
name their database alike.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import select
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import make_url

from .live import FAST_POLL_S, LocalHub

if TYPE_CHECKING:
    import psycopg
    import redis

    from .backends.base import Database
    from .settings import Settings

__all__ = ["Fanout", "PostgresFanout", "RedisFanout", "open_fanout", "close_fanout",
           "redis_url_for", "encode_payloads"]

log = structlog.get_logger(__name__)

#: Largest payload sent (PostgreSQL's NOTIFY limit is 8000 bytes).
MAX_PAYLOAD = 7900
#: More ids than fit in this many payloads are sent as one "wake everyone".
MAX_PARTS = 4
RETRY_MIN_S = 0.1
RETRY_MAX_S = 5.0
#: An idle listener checks its connection this often (a silent network drop).
KEEPALIVE_S = 10.0
#: How long ``close`` waits for each thread.
JOIN_S = 5.0
PG_CHANNEL = "memvault_live"
_NOTIFY = sa.text("SELECT pg_notify(:channel, :payload)")


def encode_payloads(origin: str, keys: Iterable[str]) -> list[str]:
    """``keys`` as few payloads of at most ``MAX_PAYLOAD`` bytes (see module doc)."""
    head = f"{origin} "
    parts: list[str] = []
    current: list[str] = []
    size = len(head)
    for key in sorted(keys):
        need = len(key.encode()) + (1 if current else 0)
        if current and size + need > MAX_PAYLOAD:
            parts.append(head + ",".join(current))
            current, size = [], len(head)
            need = len(key.encode())
        if len(head) + need > MAX_PAYLOAD or len(parts) >= MAX_PARTS:
            return [head + "*"]
        current.append(key)
        size += need
    if current:
        parts.append(head + ",".join(current))
    return parts


class Fanout:
    """The sending and receiving threads; subclasses speak to one medium."""

    medium = "abstract"

    def __init__(self, hub: LocalHub, poll_s: float) -> None:
        self.origin = secrets.token_hex(6)
        self._hub = hub
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._send_wake = threading.Event()
        self._stop = threading.Event()
        self._sender: threading.Thread | None = None
        self._listener: threading.Thread | None = None
        self._connected = False
        self._send_failing = False
        #: (Re)connections of the listener, for tests and logs.
        self.connections = 0

    # -- the hub's side (live.Relay) -------------------------------------------

    @property
    def healthy(self) -> bool:
        """True while the listener is connected (announcements reach us)."""
        return self._connected

    @property
    def poll_interval_s(self) -> float:
        return self._poll_s if self._connected else FAST_POLL_S

    def announce(self, key: str) -> None:
        with self._lock:
            self._pending.add(key)
            if self._sender is None and not self._stop.is_set():
                self._sender = threading.Thread(target=self._send_loop, daemon=True,
                                                name=f"memvault-fanout-send-{self.medium}")
                self._sender.start()
        self._send_wake.set()

    def listening(self) -> None:
        if self._listener is not None:
            return
        with self._lock:
            if self._listener is None and not self._stop.is_set():
                self._listener = threading.Thread(target=self._listen_loop, daemon=True,
                                                  name=f"memvault-fanout-listen-{self.medium}")
                self._listener.start()

    def close(self) -> None:
        """Send what is pending, stop both threads and close their connections."""
        with self._lock:
            self._stop.set()
            sender, listener = self._sender, self._listener
        self._send_wake.set()
        if sender is not None:
            sender.join(JOIN_S)
        if listener is not None:
            self._interrupt()
            listener.join(JOIN_S)
        self._release()

    # -- sending -------------------------------------------------------------

    def _send_loop(self) -> None:
        while True:
            self._send_wake.wait()
            with self._lock:
                self._send_wake.clear()
                keys, self._pending = self._pending, set()
            if keys:
                try:
                    self._send(encode_payloads(self.origin, keys))
                except Exception as exc:  # noqa: BLE001 - polling delivers instead
                    if not self._send_failing:
                        self._send_failing = True
                        log.warning("live fan-out: cannot announce; followers elsewhere "
                                    "fall back to polling", medium=self.medium,
                                    error=f"{type(exc).__name__}: {exc}")
                else:
                    if self._send_failing:
                        self._send_failing = False
                        log.info("live fan-out: announcing again", medium=self.medium)
            if self._stop.is_set():
                with self._lock:
                    if not self._pending:
                        return

    # -- receiving -----------------------------------------------------------

    def _listen_loop(self) -> None:
        delay = RETRY_MIN_S
        outage = False
        while not self._stop.is_set():
            try:
                self._connect()
                if self._stop.is_set():  # ``close`` came while we connected
                    break
                self._connected = True
                self.connections += 1
                delay = RETRY_MIN_S
                log.info("live fan-out: listening", medium=self.medium, again=outage)
                outage = False
                # Whatever was announced before we listened was missed: re-read all.
                self._hub.wake()
                while not self._stop.is_set():
                    for payload in self._receive(KEEPALIVE_S):
                        self._deliver(payload)
            except Exception as exc:  # noqa: BLE001 - reconnect; polling meanwhile
                if not self._stop.is_set() and not outage:
                    outage = True
                    log.warning("live fan-out: not listening; followers poll the database "
                                "until it is back", medium=self.medium,
                                error=f"{type(exc).__name__}: {exc}")
            finally:
                self._connected = False
                with contextlib.suppress(Exception):
                    self._disconnect()
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, RETRY_MAX_S)

    def _deliver(self, payload: str) -> None:
        origin, _, ids = payload.partition(" ")
        if origin == self.origin or not ids:
            return
        self._hub.wake(None if ids == "*" else ids.split(","))

    # -- the medium ------------------------------------------------------------

    def _send(self, payloads: list[str]) -> None:
        raise NotImplementedError

    def _connect(self) -> None:
        """Open the listening connection and subscribe; raise if impossible."""
        raise NotImplementedError

    def _receive(self, timeout: float) -> list[str]:
        """Payloads received within ``timeout`` (fewer: none, or ``close`` began);
        raises when the connection is lost."""
        raise NotImplementedError

    def _disconnect(self) -> None:
        raise NotImplementedError

    def _interrupt(self) -> None:
        """Make a blocked ``_receive`` return (``close`` was called)."""

    def _release(self) -> None:
        """Free what the threads shared, once both have stopped."""


class PostgresFanout(Fanout):
    """NOTIFY through the vault's pool; LISTEN on one dedicated connection."""

    medium = "postgresql"

    def __init__(self, hub: LocalHub, poll_s: float, db: Database, conninfo: str) -> None:
        super().__init__(hub, poll_s)
        self._db = db
        self._conninfo = conninfo
        self._conn: psycopg.Connection[Any] | None = None
        # Written to by ``close`` to wake the listener out of its select();
        # made by the listener, before its first wait.
        self._pipe: tuple[int, int] | None = None

    def _send(self, payloads: list[str]) -> None:
        # Autocommit (the read connection): each NOTIFY is delivered at once.
        with self._db.read() as conn:
            for payload in payloads:
                conn.execute(_NOTIFY, {"channel": PG_CHANNEL, "payload": payload})

    def _connect(self) -> None:
        import psycopg

        if self._pipe is None:
            self._pipe = os.pipe()
        conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5,
                               application_name="memvault-live")
        try:
            conn.execute(f"LISTEN {PG_CHANNEL}")
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _receive(self, timeout: float) -> list[str]:
        conn, pipe = self._conn, self._pipe
        assert conn is not None and pipe is not None
        ready, _, _ = select.select([conn.fileno(), pipe[0]], [], [], timeout)
        if pipe[0] in ready:
            return []
        if not ready:
            conn.execute("SELECT 1")  # a connection the network dropped shows itself
        # timeout=0: read what arrived (and what SELECT 1 may have brought), never wait.
        return [n.payload for n in conn.notifies(timeout=0)]

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _interrupt(self) -> None:
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                os.write(self._pipe[1], b"x")

    def _release(self) -> None:
        pipe, self._pipe = self._pipe, None
        for fd in pipe or ():
            with contextlib.suppress(OSError):
                os.close(fd)


class RedisFanout(Fanout):
    """PUBLISH through a client's pool; SUBSCRIBE on one dedicated connection."""

    medium = "redis"

    def __init__(self, hub: LocalHub, poll_s: float, url: str, channel: str) -> None:
        super().__init__(hub, poll_s)
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.channel = channel
        # No retries inside redis-py: a lost connection must reach our loop,
        # which reconnects, re-subscribes and wakes the followers.
        self._client: redis.Redis = redis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=5, retry=Retry(NoBackoff(), 0),
            health_check_interval=KEEPALIVE_S)
        self._pubsub: redis.client.PubSub | None = None

    def _send(self, payloads: list[str]) -> None:
        for payload in payloads:
            self._client.publish(self.channel, payload)

    def _connect(self) -> None:
        pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
        self._pubsub = pubsub
        pubsub.subscribe(self.channel)
        # The confirmation: only from here on are announcements delivered to us.
        message = pubsub.get_message(timeout=5)
        if message is None or message.get("type") != "subscribe":
            raise ConnectionError(f"no confirmation of SUBSCRIBE: {message!r}")

    def _receive(self, timeout: float) -> list[str]:
        pubsub = self._pubsub
        assert pubsub is not None
        # Short waits: ``close`` wakes us with a message of our own, but if that
        # cannot be sent we still notice the stop within a second.
        message = pubsub.get_message(timeout=min(timeout, 1.0))
        out: list[str] = []
        while message is not None:
            if message.get("type") == "message":
                data = message["data"]
                out.append(data.decode() if isinstance(data, bytes) else str(data))
            message = pubsub.get_message(timeout=0)
        return out

    def _disconnect(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            pubsub.close()

    def _interrupt(self) -> None:
        if self._connected:
            with contextlib.suppress(Exception):
                self._client.publish(self.channel, f"{self.origin} ")

    def _release(self) -> None:
        self._client.close()


def redis_url_for(settings: Settings) -> str | None:
    """The Redis to publish on: ``pubsub_url``, else a ``redis://`` ``cache_url``."""
    for url in (settings.pubsub_url, settings.cache_url):
        if url and url.startswith(("redis://", "rediss://", "unix://")):
            return url
    return None


def _database_identity(settings: Settings) -> str:
    if settings.backend == "postgresql":
        url = make_url(settings.database_url or "")
        host = url.host or str(url.query.get("host", ""))
        return f"postgresql://{host}:{url.port or 5432}/{url.database}"
    return f"sqlite://{settings.sqlite_path.resolve()}"


def open_fanout(settings: Settings, db: Database, hub: LocalHub) -> Fanout | None:
    """The relay ``settings`` call for, attached to ``hub``; ``None`` if none.

    ``MEMVAULT_LIVE_FANOUT=off``: none (poll only). Otherwise Redis pub/sub when
    a Redis is configured (``redis_url_for``), else LISTEN/NOTIFY on PostgreSQL,
    else none (SQLite without Redis: processes on one data dir poll).
    No thread starts and no connection opens until first needed.
    """
    if settings.live_fanout == "off":
        return None
    poll_s = settings.live_poll_ms / 1000
    fanout: Fanout
    redis_url = redis_url_for(settings)
    if redis_url is not None:
        identity = hashlib.sha256(_database_identity(settings).encode()).hexdigest()[:16]
        fanout = RedisFanout(hub, poll_s, redis_url, f"memvault:live:{identity}")
    elif settings.backend == "postgresql":
        conninfo = (make_url(db.engine.url).set(drivername="postgresql")
                    .render_as_string(hide_password=False))
        fanout = PostgresFanout(hub, poll_s, db, conninfo)
    else:
        return None
    hub.attach(fanout)
    return fanout


def close_fanout(fanout: Fanout | None, hub: LocalHub) -> None:
    """Detach ``fanout`` from ``hub`` and close it (``vault.close``); ``None``: nothing."""
    if fanout is not None:
        hub.attach(None)
        fanout.close()
