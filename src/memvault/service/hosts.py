"""Loopback-only serving for ``MEMVAULT_AUTH=disabled``.

With auth disabled every request acts as the built-in local user, so the
service must only be reachable from this machine. Settings already refuse a
non-loopback ``MEMVAULT_HOST``; this middleware checks, on every request, what
settings cannot see:

- the address the server actually bound (ASGI ``scope["server"]``) is loopback
  (a wrapper or a proxy may have bound something else);
- the ``Host`` header names a loopback host (``localhost``, ``*.localhost``,
  ``127.0.0.0/8``, ``[::1]``, with an optional port). A web page on another site
  can make a browser send requests to ``127.0.0.1`` under its own name by
  rebinding that name's DNS record; those requests carry the foreign name in
  ``Host`` and are refused here (DNS rebinding protection).

Refused requests get a 403 problem+json (code ``host_not_allowed``).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from .problems import problem

__all__ = ["LoopbackOnlyMiddleware", "is_loopback_address", "is_loopback_host"]


def is_loopback_address(host: str) -> bool:
    """``host`` is ``localhost`` or a loopback IP address (IPv4-mapped included)."""
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def is_loopback_host(value: str) -> bool:
    """A ``Host`` header naming this machine: ``localhost``, ``*.localhost``,
    ``127.x.y.z`` or ``[::1]``, each with an optional port."""
    value = value.strip().lower()
    if value.startswith("["):
        host, bracket, port = value[1:].partition("]")
        if not bracket or (port and not (port.startswith(":") and _is_port(port[1:]))):
            return False
        try:
            return ipaddress.IPv6Address(host).is_loopback
        except ValueError:
            return False
    host, colon, port = value.partition(":")
    if colon and not _is_port(port):
        return False
    host = host.removesuffix(".")  # the fully qualified spelling "localhost."
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.IPv4Address(host).is_loopback
    except ValueError:
        return False


def _is_port(digits: str) -> bool:
    return 0 < len(digits) <= 5 and digits.isascii() and digits.isdigit()


def _host_header(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"host":
            return str(value.decode("latin-1"))
    return None


class LoopbackOnlyMiddleware:
    """Refuse requests not bound to loopback or not addressed to a loopback name."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        reason = self._refusal(scope)
        if reason is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await problem(403, reason, "host_not_allowed")(scope, receive, send)

    @staticmethod
    def _refusal(scope: Scope) -> str | None:
        server: Any = scope.get("server")
        # None: a Unix socket, which only this machine can reach.
        if server is not None and not is_loopback_address(str(server[0])):
            return "with MEMVAULT_AUTH=disabled the service only answers on a loopback address"
        host = _host_header(scope)
        if host is None or not is_loopback_host(host):
            return ("with MEMVAULT_AUTH=disabled only requests addressed to a loopback host "
                    "name (localhost, 127.0.0.1, [::1]) are served")
        return None
