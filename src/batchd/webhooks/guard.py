"""Where a webhook may be sent (the SSRF guard).

A webhook URL is ``http`` or ``https`` with a host. Its host is resolved, and only a public
address may be used: loopback, private, link-local (cloud metadata services such as
169.254.169.254), multicast, reserved, unspecified and other non-global addresses are refused,
for IPv4, IPv6 and IPv4-mapped IPv6, unless the address lies in one of the networks of
``webhook_allow_networks``. The attempt connects to the first address that passed (pinned: no
second lookup that could answer otherwise); a host without one is refused. The check runs when
an endpoint is added and again before every attempt (DNS may have changed).
Redirects are never followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

__all__ = ["Target", "address_problem", "resolve", "resolve_sync", "url_problem"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL: its host, port and the address to connect to."""

    host: str
    port: int
    address: str
    literal: bool
    """The URL names the address itself (no name to resolve)."""


def _split(url: str) -> SplitResult | str:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError as exc:
        return f"{url!r} is not a valid URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"{url!r} is not an http:// or https:// URL (webhooks are sent over HTTP(S))"
    if not parts.hostname:
        return f"{url!r} has no host, e.g. https://hooks.example.com/batchd"
    return parts


def url_problem(url: str) -> str | None:
    """What makes ``url`` unusable as a webhook URL, before any name is resolved."""
    parts = _split(url)
    return parts if isinstance(parts, str) else None


def _kind(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address (``None``: it is)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return _kind(ip.ipv4_mapped)
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local (cloud metadata services live there)", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
        ("non-public", not ip.is_global),
    )
    for kind, hit in checks:
        if hit:
            return kind
    return None


def _allowed(ip: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return any(ip in net or (mapped is not None and mapped in net) for net in networks)


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(value, strict=False) for value in values)


def address_problem(address: str, networks: Sequence[IPNetwork], host: str) -> str | None:
    """Why a webhook may not go to ``address`` (what ``host`` resolved to), or ``None``."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    kind = _kind(ip)
    if kind is None or _allowed(ip, networks):
        return None
    article = "an" if kind[0] in "aeiou" else "a"
    where = f"{ip} is" if host == str(ip) else f"{host} resolves to {ip},"
    bits = 32 if ip.version == 4 else 128
    return (
        f"refused: {where} {article} {kind} address; if this receiver is meant, allow it with "
        f'webhook_allow_networks = ["{ip}/{bits}"] in the config'
    )


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _check(url: str, networks: Sequence[IPNetwork], infos: Sequence[str] | None) -> Target | str:
    parts = _split(url)
    if isinstance(parts, str):
        return parts
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    literal = _literal(host)
    addresses = [str(literal)] if literal is not None else list(infos or [])
    if not addresses:
        return f"{host} does not resolve to any address"
    # The first address that may be used is the one connected to (the connection is pinned to
    # it); a name whose every address is refused is refused with the first one's reason.
    problems = []
    for address in addresses:
        problem = address_problem(address, networks, host)
        if problem is None:
            return Target(host, port, address, literal is not None)
        problems.append(problem)
    return problems[0]


def _lookup(url: str) -> tuple[str, int] | None:
    """The host name and port of ``url`` to resolve; ``None`` when there is none (``url`` names
    an address, or :func:`_check` refuses it as it stands)."""
    parts = _split(url)
    if isinstance(parts, str):
        return None
    host = parts.hostname or ""
    if _literal(host) is not None:
        return None
    return host, parts.port or (443 if parts.scheme == "https" else 80)


def _addresses(infos: Iterable[tuple[object, ...]]) -> list[str]:
    seen: list[str] = []
    for info in infos:
        sockaddr = info[4]
        assert isinstance(sockaddr, tuple)
        address = str(sockaddr[0])
        if address not in seen:
            seen.append(address)
    return seen


async def resolve(url: str, networks: Sequence[IPNetwork]) -> Target | str:
    """The checked target of ``url``, or why it is refused (at send time)."""
    name = _lookup(url)
    infos: list[str] | None = None
    if name is not None:
        try:
            loop = asyncio.get_running_loop()
            infos = _addresses(await loop.getaddrinfo(*name, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError) as exc:  # UnicodeError: a name IDNA cannot encode
            return f"cannot resolve {name[0]}: {exc}"
    return _check(url, networks, infos)


def resolve_sync(url: str, networks: Sequence[IPNetwork]) -> Target | str:
    """:func:`resolve` for the command line (``batchd webhooks add``)."""
    name = _lookup(url)
    infos: list[str] | None = None
    if name is not None:
        try:
            infos = _addresses(socket.getaddrinfo(*name, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError) as exc:  # UnicodeError: a name IDNA cannot encode
            return f"cannot resolve {name[0]}: {exc}"
    return _check(url, networks, infos)
