"""Keeping user-supplied base URLs away from our own network (SSRF).

Users register models with their own base URL and our servers fetch it, so such a URL must never lead to
loopback, private, link-local, multicast, metadata or otherwise non-public addresses. Two layers:

1. When a URL is saved, `validate_user_base_url` checks its shape (https only, no user info, a host), refuses
   local names and IP literals in any encoding (decimal, hex, octal, short IPv4, IPv4 inside IPv6) and
   resolves the host name: every address it resolves to must be public.
2. When it is used, the clients built here check again at connect time, on the very addresses the
   connection goes to, so DNS rebinding (a name that answered public when saved and private now) cannot
   slip through. Redirects are never followed.

How the connect-time check is wired:

- Async (aiohttp, the openai SDK's fast transport). `SafeResolver` wraps aiohttp's ThreadedResolver and
  refuses a host when any address it resolves to is non-public; aiohttp connects only to the addresses the
  resolver returned, so there is no second lookup to rebind. aiohttp never asks the resolver about IP
  literals, so the connector from `safe_aiohttp_connector` also vets every host in
  `TCPConnector._resolve_host`, the step every new connection goes through (a private method: the tests
  connect to an IP literal through a bare aiohttp session to pin it down). `safe_openai_http_client` hands a
  session on that connector to the SDK's own httpx2-to-aiohttp transport (`AiohttpTransport(client=...)`,
  vendored by openai in `openai._vendor.httpx_aiohttp`), so `AsyncOpenAI(http_client=...)` behaves like
  `openai.DefaultAioHttpClient` apart from the checks.
- Sync (Celery tasks). httpx2's transport runs on an httpcore2 connection pool, which takes a network
  backend: `_SafeNetworkBackend` resolves the host itself, refuses non-public addresses and connects to the
  vetted IP. TLS still verifies the certificate for, and sends SNI with, the URL's host name, because
  httpcore2 starts TLS with the origin's host rather than the address it connected to.

Both clients ignore proxy environment variables (through a proxy the check would vet the proxy, not the
target), re-check every request URL's shape, and report every refusal as `httpx2.ConnectError` (openai:
`APIConnectionError`) caused by `UnsafeAddressError`; `ssrf_refusal(exc)` finds it. With
`max_response_bytes` a larger body fails with `ResponseTooLarge` once that many bytes have arrived; identity
encoding is asked for so that the cap counts what the caller gets.

The operator allowlist (`LLMHUB["SSRF_ALLOWLIST"]`, "host" or "host:port" strings) re-opens exactly the hosts
it names, as written in the URL (e.g. the local simulated upstream): they may use http and private addresses.
Models defined by operators in the registry do not go through this module.
"""

import re
import socket
from collections.abc import AsyncIterator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import httpcore2
import httpx2
from aiohttp.abc import AbstractResolver, ResolveResult
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from openai._vendor.httpx_aiohttp import AiohttpTransport

from llmhub.errors import ApplicationError

RESOLVE_TIMEOUT_SECONDS = 3.0
MAX_URL_LENGTH = 2048
_DEFAULT_PORTS = {"http": 80, "https": 443}

IPAddress = IPv4Address | IPv6Address
Allowlist = frozenset[tuple[str, int | None]]  # (normalised host, port or None for any port)


class UnsafeURL(ApplicationError):
    status = 400
    code = "unsafe_base_url"


class UnsafeAddressError(OSError):
    """A connection refused at use time. An OSError, so that aiohttp reports it as a connection error."""


class ResponseTooLarge(httpx2.ReadError):
    pass


# --- Addresses and names -------------------------------------------------------------------------------

_METADATA_ADDRESSES = frozenset(
    ip_address(address) for address in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
_SHARED_ADDRESS_SPACE = ip_network("100.64.0.0/10")
# IPv6 prefixes whose last 32 bits are an IPv4 address that the stack or a NAT64 gateway would connect to.
_IPV4_IN_LAST_32_BITS = tuple(
    ip_network(prefix) for prefix in ("::/96", "::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48")
)
# Checked in order, so that the most telling reason is the one reported.
_NON_PUBLIC = (
    ("a loopback address", lambda ip: ip.is_loopback),
    ("an unspecified address", lambda ip: ip.is_unspecified),
    ("a link-local address", lambda ip: ip.is_link_local),
    ("a multicast address", lambda ip: ip.is_multicast),
    ("a shared (carrier-grade NAT) address", lambda ip: ip in _SHARED_ADDRESS_SPACE),
    ("a reserved address", lambda ip: ip.is_reserved),
    ("a private address", lambda ip: ip.is_private),
    ("a non-public address", lambda ip: not ip.is_global),
)
# A name that is, or ends in, one of these labels only means something inside our own network.
_LOCAL_NAME_SUFFIXES = frozenset({"localhost", "localdomain", "local", "internal"})

_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)\Z")
_HOST_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")


def _embedded_ipv4(ip: IPv6Address) -> list[IPv4Address]:
    embedded = [address for address in (ip.sixtofour, *(ip.teredo or ())) if address is not None]
    if any(ip in prefix for prefix in _IPV4_IN_LAST_32_BITS):
        embedded.append(IPv4Address(int(ip) & 0xFFFFFFFF))
    return embedded


def _address_refusal(ip: IPAddress) -> str | None:
    """Why `ip` is not public ("a private address"), or None when it is."""
    if ip in _METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(ip, IPv6Address) and not (ip.is_loopback or ip.is_unspecified):
        for ipv4 in _embedded_ipv4(ip):
            if reason := _address_refusal(ipv4):
                return f"{reason} (IPv4 {ipv4} embedded in IPv6)"
    return next((reason for reason, applies in _NON_PUBLIC if applies(ip)), None)


def _host_refusal(name: str, ip: IPAddress | None) -> str | None:
    """Why a host may not be used, judged by its name or IP literal alone (no DNS), or None."""
    if ip is not None:
        reason = _address_refusal(ip)
    elif name.rsplit(".", 1)[-1] in _LOCAL_NAME_SUFFIXES:
        reason = "a local or internal host name"
    elif "." not in name:
        reason = "a single-label host name, which only resolves inside a local network"
    else:
        reason = None
    return reason and f"the host '{name}' is {reason}"


def _resolved_refusal(name: str, addresses: Iterable[str]) -> str | None:
    for address in addresses:
        if reason := _address_refusal(ip_address(address)):
            return f"the host '{name}' resolves to {reason} ({address})"
    return None


def _legacy_ipv4(labels: list[str]) -> IPv4Address:
    """The WHATWG URL IPv4 parser, as browsers and inet_aton read hosts: 1 to 4 parts, each decimal,
    0x-hex or 0-octal, the last filling the remaining bytes (`127.1`, `2130706433`, `0x7f000001`)."""
    if len(labels) > 4 or not all(_NUMERIC_LABEL.match(label) for label in labels):
        raise ValueError
    numbers = [
        int(label[2:] or "0", 16) if label.startswith("0x") else int(label, 8 if label.startswith("0") else 10)
        for label in labels
    ]
    *head, last = numbers
    if any(number > 255 for number in head) or last >= 256 ** (5 - len(numbers)):
        raise ValueError
    return IPv4Address(sum(number << 8 * (3 - index) for index, number in enumerate(head)) + last)


def _normalise_host(raw: str) -> tuple[str, IPAddress | None]:
    """`raw` lower-cased, IDNA-encoded and without its trailing dot, or as a canonical IP literal with the
    address. ValueError if it is neither a valid host name nor an IP address."""
    host = raw.lower().removeprefix("[").removesuffix("]")
    if ":" in host:
        ip = ip_address(host)
        return str(ip), ip
    host = host.removesuffix(".")
    labels = host.split(".")
    if _NUMERIC_LABEL.match(labels[-1]):  # a host ending in a number is an IPv4 address, or invalid
        try:
            ip = _legacy_ipv4(labels)
        except ValueError:
            raise ValueError(f"'{raw}' is not a valid IPv4 address") from None
        return str(ip), ip
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"'{raw}' is not a valid host name") from None
    if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in host.split(".")):
        raise ValueError(f"'{raw}' is not a valid host name")
    return host, None


# --- The allowlist ---------------------------------------------------------------------------------------

def _configured_allowlist(allowlist: Iterable[str] | None) -> list[str]:
    return list(settings.LLMHUB.get("SSRF_ALLOWLIST", ()) if allowlist is None else allowlist)


def _allowlist_entries(allowlist: Iterable[str] | None) -> Allowlist:
    entries = set()
    for entry in _configured_allowlist(allowlist):
        try:
            parts = urlsplit(f"//{entry.strip()}")
            if not parts.hostname or parts.path or parts.query or "@" in parts.netloc:
                raise ValueError
            entries.add((_normalise_host(parts.hostname)[0], parts.port))
        except ValueError:
            raise ImproperlyConfigured(f"SSRF allowlist entry {entry!r} is not a host or host:port.") from None
    return frozenset(entries)


def _is_allowlisted(host: str, port: int, allowlist: Allowlist) -> bool:
    return (host, port) in allowlist or (host, None) in allowlist


# --- Saving a URL ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Target:
    host: str
    ip: IPAddress | None
    port: int
    allowlisted: bool
    url: str


def _target(url: str, allowlist: Allowlist) -> _Target:
    """Parse and check everything about `url` that needs no DNS; UnsafeURL if it may not be used."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise UnsafeURL(f"only https is allowed for a base URL, not {scheme or 'a URL without a scheme'}")
    if "@" in parts.netloc:
        raise UnsafeURL("a base URL must not contain a user name or password")
    if not parts.hostname:
        raise UnsafeURL("a base URL must include a host")
    try:
        host, ip = _normalise_host(parts.hostname)
        if parts.port == 0:
            raise ValueError("port 0 is not a valid port")
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise UnsafeURL(f"the base URL's host or port is invalid: {exc}") from None
    allowlisted = _is_allowlisted(host, port, allowlist)
    if not allowlisted:
        if reason := _host_refusal(host, ip):
            raise UnsafeURL(reason)
        if scheme != "https":
            raise UnsafeURL("only https is allowed for a base URL; http is reserved for hosts on the operator allowlist")
    netloc = f"[{host}]" if isinstance(ip, IPv6Address) else host
    if parts.port not in (None, _DEFAULT_PORTS[scheme]):
        netloc = f"{netloc}:{port}"
    return _Target(host, ip, port, allowlisted, urlunsplit((scheme, netloc, parts.path.rstrip("/"), parts.query, "")))


_RESOLVER_THREADS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ssrf-resolve")


def _resolve(host: str, port: int, timeout: float | None) -> list[str]:
    """The distinct addresses `host` resolves to; a thread bounds the wait, as getaddrinfo has no timeout."""
    future = _RESOLVER_THREADS.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in future.result(timeout=timeout)))
    if not addresses:
        raise socket.gaierror(f"no address for {host}")
    return addresses


def validate_user_base_url(url: str, *, allowlist: Iterable[str] | None = None) -> str:
    """The normalised form of a user's base URL, or UnsafeURL saying why our servers may not fetch it.

    `allowlist` defaults to `LLMHUB["SSRF_ALLOWLIST"]`. Resolves the host name (up to
    RESOLVE_TIMEOUT_SECONDS), so call it off the event loop.
    """
    if not isinstance(url, str) or not url:
        raise UnsafeURL("a base URL is required")
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeURL(f"a base URL may have at most {MAX_URL_LENGTH} characters")
    if any(char.isspace() or not char.isprintable() or char == "\\" for char in url):
        raise UnsafeURL("a base URL must not contain spaces, control characters or backslashes")
    target = _target(url, _allowlist_entries(allowlist))
    if target.ip is None and not target.allowlisted:
        try:
            addresses = _resolve(target.host, target.port, RESOLVE_TIMEOUT_SECONDS)
        except TimeoutError:
            raise UnsafeURL(f"resolving the host '{target.host}' timed out") from None
        except OSError:
            raise UnsafeURL(f"the host '{target.host}' could not be resolved") from None
        if reason := _resolved_refusal(target.host, addresses):
            raise UnsafeURL(reason)
    return target.url


# --- Connect-time checks ---------------------------------------------------------------------------------

def _vet_host(host: str, port: int, allowlist: Allowlist) -> bool:
    """Refuse `host` by name or IP literal; True when the addresses it resolves to must be vetted too."""
    try:
        name, ip = _normalise_host(host)
    except ValueError as exc:
        raise UnsafeAddressError(f"refusing to connect: {exc}") from None
    if _is_allowlisted(name, port, allowlist):
        return False
    if reason := _host_refusal(name, ip):
        raise UnsafeAddressError(f"refusing to connect: {reason}")
    return ip is None


def _vet_addresses(host: str, addresses: Iterable[str]) -> None:
    if reason := _resolved_refusal(host, addresses):
        raise UnsafeAddressError(f"refusing to connect: {reason}")


def ssrf_refusal(exc: BaseException | None) -> UnsafeAddressError | None:
    """The UnsafeAddressError behind `exc` (e.g. an openai.APIConnectionError), if an SSRF check refused it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UnsafeAddressError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class SafeResolver(AbstractResolver):
    """aiohttp resolver that refuses local names and hosts resolving to any non-public address, unless the
    host (as connected to, with its port) is on the allowlist."""

    def __init__(self, *, allowlist: Iterable[str] | None = None, resolver: AbstractResolver | None = None) -> None:
        self._allowlist = _allowlist_entries(allowlist)
        self._resolver = resolver or aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        must_vet = _vet_host(host, port, self._allowlist)
        results = await self._resolver.resolve(host, port, family)
        if must_vet:
            _vet_addresses(host, [result["host"] for result in results])
        return results

    async def close(self) -> None:
        await self._resolver.close()


class _SafeTCPConnector(aiohttp.TCPConnector):
    def __init__(self, *, allowlist: Iterable[str] | None, **kwargs) -> None:
        self._ssrf_allowlist = _allowlist_entries(allowlist)
        super().__init__(resolver=SafeResolver(allowlist=allowlist, resolver=kwargs.pop("resolver", None)), **kwargs)

    async def _resolve_host(self, host: str, port: int, traces=None) -> list[ResolveResult]:
        # aiohttp connects to IP literals without asking the resolver; names are vetted by SafeResolver.
        _vet_host(host, port, self._ssrf_allowlist)
        return await super()._resolve_host(host, port, traces=traces)


def safe_aiohttp_connector(*, allowlist: Iterable[str] | None = None, **kwargs) -> aiohttp.TCPConnector:
    """A TCPConnector that refuses non-public addresses at connect time (create it inside the event loop).
    `kwargs` go to TCPConnector; a `resolver` among them is wrapped by SafeResolver."""
    return _SafeTCPConnector(allowlist=_configured_allowlist(allowlist), **kwargs)


class _SafeNetworkBackend(httpcore2.NetworkBackend):
    """httpcore2's sync backend, connecting only to vetted addresses of the host."""

    def __init__(self, allowlist: Iterable[str]) -> None:
        self._allowlist = _allowlist_entries(allowlist)
        self._backend = httpcore2.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable | None = None) -> httpcore2.NetworkStream:
        try:
            addresses = [host]
            if _vet_host(host, port, self._allowlist):
                addresses = _resolve(host, port, min(timeout or RESOLVE_TIMEOUT_SECONDS, RESOLVE_TIMEOUT_SECONDS))
                _vet_addresses(host, addresses)
        except UnsafeAddressError as exc:
            raise httpcore2.ConnectError(str(exc)) from exc
        except TimeoutError as exc:
            raise httpcore2.ConnectTimeout(f"resolving {host} timed out") from exc
        except OSError as exc:
            raise httpcore2.ConnectError(f"{host} could not be resolved") from exc
        for address in addresses[:-1]:
            try:
                return self._backend.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout):
                continue
        return self._backend.connect_tcp(addresses[-1], port, timeout, local_address, socket_options)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _SafeHTTPTransport(httpx2.HTTPTransport):
    def __init__(self, *, allowlist: Iterable[str]) -> None:
        super().__init__(trust_env=False)
        # httpx2 has no argument for the network backend, so the pool it built is replaced by one that has it.
        self._pool = httpcore2.ConnectionPool(
            ssl_context=httpx2.create_ssl_context(),
            max_connections=100,  # httpx2's default limits
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=_SafeNetworkBackend(allowlist),
        )


# --- The clients -----------------------------------------------------------------------------------------

class _CappedStream(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    def __init__(self, stream: httpx2.SyncByteStream | httpx2.AsyncByteStream, request: httpx2.Request, limit: int) -> None:
        self._stream = stream
        self._request = request
        self._limit = limit
        self._received = 0

    def _too_large(self, chunk: bytes) -> bool:
        self._received += len(chunk)
        return self._received > self._limit

    def _error(self) -> ResponseTooLarge:
        return ResponseTooLarge(f"the response is larger than {self._limit} bytes", request=self._request)

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._stream:
            if self._too_large(chunk):
                self._stream.close()
                raise self._error()
            yield chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            if self._too_large(chunk):
                await self._stream.aclose()
                raise self._error()
            yield chunk

    def close(self) -> None:
        self._stream.close()

    async def aclose(self) -> None:
        await self._stream.aclose()


@contextmanager
def _refusals_reported(request: httpx2.Request) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        if (refusal := ssrf_refusal(exc)) is None:
            raise
        raise httpx2.ConnectError(str(refusal), request=request) from refusal


class _GuardedTransport(httpx2.BaseTransport, httpx2.AsyncBaseTransport):
    """Around a transport that vets addresses: re-checks each request URL, reports refusals as
    httpx2.ConnectError (the aiohttp adapter calls every connection error a ConnectTimeout) and caps bodies."""

    def __init__(self, inner: httpx2.BaseTransport | httpx2.AsyncBaseTransport, *, allowlist: Iterable[str],
                 max_response_bytes: int | None) -> None:
        self._inner = inner
        self._allowlist = _allowlist_entries(allowlist)
        self._max_response_bytes = max_response_bytes

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        with _refusals_reported(request):
            self._check(request)
            response = self._inner.handle_request(request)
        return self._capped(response, request)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        with _refusals_reported(request):
            self._check(request)
            response = await self._inner.handle_async_request(request)
        return self._capped(response, request)

    def close(self) -> None:
        self._inner.close()

    async def aclose(self) -> None:
        await self._inner.aclose()

    def _check(self, request: httpx2.Request) -> None:
        try:
            _target(str(request.url), self._allowlist)
        except UnsafeURL as exc:
            raise UnsafeAddressError(f"refusing to connect: {exc.message}") from None

    def _capped(self, response: httpx2.Response, request: httpx2.Request) -> httpx2.Response:
        if self._max_response_bytes is not None:
            response.stream = _CappedStream(response.stream, request, self._max_response_bytes)
        return response


def _client_options(timeout: float | httpx2.Timeout, max_response_bytes: int | None) -> dict:
    return {
        "timeout": timeout,
        "follow_redirects": False,
        "trust_env": False,
        "headers": {"Accept-Encoding": "identity"} if max_response_bytes is not None else None,
    }


def safe_openai_http_client(*, timeout: float | httpx2.Timeout, max_response_bytes: int | None = None,
                            allowlist: Iterable[str] | None = None) -> httpx2.AsyncClient:
    """An aiohttp-backed client for `openai.AsyncOpenAI(http_client=...)` that refuses non-public addresses at
    connect time and does not follow redirects. `allowlist` defaults to `LLMHUB["SSRF_ALLOWLIST"]`."""
    allowlist = _configured_allowlist(allowlist)
    ssl_context = httpx2.create_ssl_context()

    def session() -> aiohttp.ClientSession:
        # Called on the first request: aiohttp sessions and connectors must be created in the event loop.
        return aiohttp.ClientSession(connector=safe_aiohttp_connector(allowlist=allowlist, ssl=ssl_context))

    transport = _GuardedTransport(AiohttpTransport(client=session), allowlist=allowlist, max_response_bytes=max_response_bytes)
    return httpx2.AsyncClient(transport=transport, **_client_options(timeout, max_response_bytes))


def safe_sync_http_client(*, timeout: float | httpx2.Timeout, max_response_bytes: int | None = None,
                          allowlist: Iterable[str] | None = None) -> httpx2.Client:
    """The sync counterpart of `safe_openai_http_client`, for `openai.OpenAI(http_client=...)` in tasks."""
    allowlist = _configured_allowlist(allowlist)
    transport = _GuardedTransport(_SafeHTTPTransport(allowlist=allowlist), allowlist=allowlist,
                                  max_response_bytes=max_response_bytes)
    return httpx2.Client(transport=transport, **_client_options(timeout, max_response_bytes))
