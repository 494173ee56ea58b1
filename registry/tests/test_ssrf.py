"""registry/ssrf.py: a user's base URL that would reach our own network is refused when saved and when used.

No database: nothing here touches a model. There is no real DNS either: `fake_dns` answers for the names a
test gives it and refuses every other name, so no test can depend on the machine's resolver. The local
servers count the connections they accept, which is how "refused before connecting" is asserted.
"""

import asyncio
import http.server
import ipaddress
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator

import aiohttp
import httpx2
import openai
import pytest
from django.core.exceptions import ImproperlyConfigured

from registry.ssrf import (
    ResponseTooLarge,
    UnsafeAddressError,
    UnsafeURL,
    safe_aiohttp_connector,
    safe_openai_http_client,
    safe_sync_http_client,
    ssrf_refusal,
    validate_user_base_url,
)

PUBLIC_IP = "8.8.8.8"
REAL_GETADDRINFO = socket.getaddrinfo


@pytest.fixture
def fake_dns(monkeypatch) -> dict[str, list[str]]:
    """Name -> addresses; IP literals and `localhost` go to the real resolver, other names do not resolve."""
    answers: dict[str, list[str]] = {}

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else host
        if name in answers:
            port = int(port or 0)
            return [
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0))
                if ":" in address
                else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))
                for address in answers[name]
            ]
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if name != "localhost":
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
        return REAL_GETADDRINFO(host, port, family, type, proto, flags)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


class CountingServer(http.server.ThreadingHTTPServer):
    """Answers GET with an empty model list, a redirect or a large body; counts accepted connections."""

    daemon_threads = True

    def __init__(self, host: str) -> None:
        super().__init__((host, 0), CountingHandler)
        self.connections = 0
        self.requests = 0
        self.redirect_to: str | None = None
        self.body_size: int | None = None

    @property
    def port(self) -> int:
        return self.server_address[1]

    def process_request(self, request, client_address) -> None:
        self.connections += 1
        super().process_request(request, client_address)


class CountingHandler(http.server.BaseHTTPRequestHandler):
    server: CountingServer

    def do_GET(self) -> None:
        self.server.requests += 1
        if self.server.redirect_to:
            self.send_response(302)
            self.send_header("Location", self.server.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"x" * self.server.body_size if self.server.body_size else json.dumps({"object": "list", "data": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:
        pass


@pytest.fixture
def local_server() -> Iterator[Callable[..., CountingServer]]:
    servers: list[CountingServer] = []

    def start(host: str = "127.0.0.1") -> CountingServer:
        server = CountingServer(host)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def refusal_message(exc_info: pytest.ExceptionInfo) -> str:
    refusal = ssrf_refusal(exc_info.value)
    assert refusal is not None, f"not an SSRF refusal: {exc_info.value!r}"
    return str(refusal)


# --- When a URL is saved (no database) -------------------------------------------------------------------

@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1", "'127.0.0.1' is a loopback address"),
        ("http://[::1]", "'::1' is a loopback address"),
        ("http://169.254.169.254/latest/meta-data", "a cloud metadata address"),
        ("http://[fd00:ec2::254]/latest/meta-data", "a cloud metadata address"),
        ("http://10.0.0.1", "'10.0.0.1' is a private address"),
        ("https://10.0.0.1", "'10.0.0.1' is a private address"),
        ("https://172.16.5.4", "a private address"),
        ("https://192.168.1.1:8443/v1", "a private address"),
        ("http://2130706433", "'127.0.0.1' is a loopback address"),
        ("https://2130706433", "'127.0.0.1' is a loopback address"),
        ("https://0x7f000001", "'127.0.0.1' is a loopback address"),
        ("https://0177.0.0.1", "'127.0.0.1' is a loopback address"),
        ("https://127.1", "'127.0.0.1' is a loopback address"),
        ("https://0x7f.1", "'127.0.0.1' is a loopback address"),
        ("https://0", "'0.0.0.0' is an unspecified address"),
        ("https://[::]", "an unspecified address"),
        ("https://[::ffff:127.0.0.1]", "a loopback address (IPv4 127.0.0.1 embedded in IPv6)"),
        ("https://[::ffff:a9fe:a9fe]", "a cloud metadata address (IPv4 169.254.169.254 embedded in IPv6)"),
        ("https://[2002:7f00:1::1]", "a loopback address (IPv4 127.0.0.1 embedded in IPv6)"),
        ("https://[64:ff9b::a00:1]", "a private address (IPv4 10.0.0.1 embedded in IPv6)"),
        ("https://[fd00::1]", "'fd00::1' is a private address"),
        ("https://[fc00::1]", "a private address"),
        ("https://[fe80::1]", "a link-local address"),
        ("https://169.254.1.1", "a link-local address"),
        ("https://224.0.0.1", "a multicast address"),
        ("https://100.64.0.1", "a shared (carrier-grade NAT) address"),
        ("https://240.0.0.1", "a reserved address"),
        ("https://localhost", "'localhost' is a local or internal host name"),
        ("https://localhost.", "'localhost' is a local or internal host name"),
        ("https://LocalHost.:443/v1", "'localhost' is a local or internal host name"),
        ("https://api.localhost", "a local or internal host name"),
        ("https://metadata.google.internal", "'metadata.google.internal' is a local or internal host name"),
        ("https://metadata/computeMetadata/v1", "'metadata' is a single-label host name"),
        ("https://1.2.3.4.5", "is not a valid IPv4 address"),
        ("https://256.1.1.1", "is not a valid IPv4 address"),
        ("https://08.1.1.1", "is not a valid IPv4 address"),
        ("https://exa mple.com", "must not contain spaces"),
        ("https://example.com\\@127.0.0.1", "backslashes"),
        ("https://example.com:0/v1", "port 0 is not a valid port"),
        ("https://example.com:99999/v1", "host or port is invalid"),
        ("ftp://example.com", "only https is allowed for a base URL, not ftp"),
        ("file:///etc/passwd", "only https is allowed for a base URL, not file"),
        ("example.com/v1", "only https is allowed"),
        ("http://example.com/v1", "only https is allowed for a base URL; http is reserved for hosts on the operator allowlist"),
        ("https://user:pw@example.com", "must not contain a user name or password"),
        ("https://user@example.com", "must not contain a user name or password"),
        ("https:///v1", "must include a host"),
        ("", "a base URL is required"),
    ],
)
def test_it_refuses_an_unsafe_base_url_when_saved_with_a_clear_message(fake_dns, url, reason):
    fake_dns["example.com"] = [PUBLIC_IP]

    with pytest.raises(UnsafeURL) as exc_info:
        validate_user_base_url(url, allowlist=[])

    assert reason in exc_info.value.message
    assert exc_info.value.code == "unsafe_base_url"
    assert exc_info.value.status == 400


def test_it_refuses_a_host_name_that_resolves_to_a_private_address(fake_dns):
    fake_dns["llm.corp.example.com"] = ["10.1.2.3"]

    with pytest.raises(UnsafeURL, match=r"'llm\.corp\.example\.com' resolves to a private address \(10\.1\.2\.3\)"):
        validate_user_base_url("https://llm.corp.example.com/v1", allowlist=[])


def test_it_refuses_a_host_name_with_one_public_and_one_private_address(fake_dns):
    fake_dns["mixed.example.com"] = [PUBLIC_IP, "2606:4700::1111", "::1"]

    with pytest.raises(UnsafeURL, match=r"'mixed\.example\.com' resolves to a loopback address \(::1\)"):
        validate_user_base_url("https://mixed.example.com/v1", allowlist=[])


def test_it_refuses_a_host_name_that_does_not_resolve(fake_dns):
    with pytest.raises(UnsafeURL, match=r"the host 'nowhere\.example\.com' could not be resolved"):
        validate_user_base_url("https://nowhere.example.com/v1", allowlist=[])


def test_it_gives_up_on_a_slow_resolver_within_the_resolve_timeout(monkeypatch):
    monkeypatch.setattr("registry.ssrf.RESOLVE_TIMEOUT_SECONDS", 0.2)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: time.sleep(1) or [])
    started = time.monotonic()

    with pytest.raises(UnsafeURL, match=r"resolving the host 'slow\.example\.com' timed out"):
        validate_user_base_url("https://slow.example.com/v1", allowlist=[])

    assert time.monotonic() - started < 0.8


def test_it_accepts_a_public_https_url_and_normalises_it(fake_dns):
    fake_dns["api.openai.com"] = [PUBLIC_IP, "2606:4700::1111"]

    assert validate_user_base_url("https://api.openai.com/v1", allowlist=[]) == "https://api.openai.com/v1"
    assert validate_user_base_url("HTTPS://API.OpenAI.com.:443/v1/#x", allowlist=[]) == "https://api.openai.com/v1"
    assert validate_user_base_url("https://api.openai.com:8443/v1?x=1", allowlist=[]) == "https://api.openai.com:8443/v1?x=1"


def test_it_writes_a_public_ip_literal_in_its_canonical_form():
    assert validate_user_base_url("https://134744072/v1", allowlist=[]) == "https://8.8.8.8/v1"
    assert validate_user_base_url("https://[2606:4700:0::1111]/v1", allowlist=[]) == "https://[2606:4700::1111]/v1"


def test_it_reopens_exactly_the_allowlisted_host_and_port():
    allowlist = ["127.0.0.1:9100", "localhost:9100", "[::1]", "gateway.internal"]

    assert validate_user_base_url("http://127.0.0.1:9100/v1", allowlist=allowlist) == "http://127.0.0.1:9100/v1"
    assert validate_user_base_url("http://localhost.:9100/v1/", allowlist=allowlist) == "http://localhost:9100/v1"
    assert validate_user_base_url("http://[::1]:1234/v1", allowlist=allowlist) == "http://[::1]:1234/v1"
    assert validate_user_base_url("https://gateway.internal/v1", allowlist=allowlist) == "https://gateway.internal/v1"
    for refused in ("http://127.0.0.1:9101/v1", "http://127.0.0.1/v1", "http://localhost:9101/v1", "http://127.0.0.2:9100/v1"):
        with pytest.raises(UnsafeURL):
            validate_user_base_url(refused, allowlist=allowlist)


def test_it_reads_the_allowlist_from_settings_when_none_is_given(settings):
    settings.LLMHUB = {**settings.LLMHUB, "SSRF_ALLOWLIST": ["127.0.0.1:9100"]}

    assert validate_user_base_url("http://127.0.0.1:9100/v1") == "http://127.0.0.1:9100/v1"
    with pytest.raises(UnsafeURL):
        validate_user_base_url("http://127.0.0.1:9100/v1", allowlist=[])


def test_it_names_a_malformed_allowlist_entry():
    with pytest.raises(ImproperlyConfigured, match=re.escape("'http://127.0.0.1:9100/v1'")):
        validate_user_base_url("https://8.8.8.8", allowlist=["http://127.0.0.1:9100/v1"])


# --- When a URL is used: connect-time checks over real local HTTP (no database) --------------------------

def test_it_refuses_a_name_rebound_to_loopback_through_the_async_openai_sdk_before_connecting(fake_dns, local_server):
    internal = local_server()
    fake_dns["rebind.example.com"] = [PUBLIC_IP]
    base_url = validate_user_base_url(f"https://rebind.example.com:{internal.port}/v1", allowlist=[])
    fake_dns["rebind.example.com"] = ["127.0.0.1"]  # the attacker's DNS answers differently at use time

    async def list_models() -> None:
        http_client = safe_openai_http_client(timeout=5, allowlist=[])
        async with openai.AsyncOpenAI(base_url=base_url, api_key="x", http_client=http_client, max_retries=0) as client:
            await client.models.list()

    with pytest.raises(openai.APIConnectionError) as exc_info:
        asyncio.run(list_models())

    assert "'rebind.example.com' resolves to a loopback address (127.0.0.1)" in refusal_message(exc_info)
    assert not isinstance(exc_info.value, openai.APITimeoutError)
    assert internal.connections == 0


def test_it_reaches_an_allowlisted_local_server_through_the_async_openai_sdk(local_server):
    server = local_server()

    async def list_models() -> list:
        http_client = safe_openai_http_client(timeout=5, allowlist=[f"127.0.0.1:{server.port}"])
        base_url = f"http://127.0.0.1:{server.port}/v1"
        async with openai.AsyncOpenAI(base_url=base_url, api_key="x", http_client=http_client, max_retries=0) as client:
            return (await client.models.list()).data

    assert asyncio.run(list_models()) == []
    assert server.requests == 1


def test_it_refuses_a_local_server_that_is_not_allowlisted_through_the_async_openai_sdk(local_server):
    server = local_server()

    async def list_models() -> None:
        http_client = safe_openai_http_client(timeout=5, allowlist=["127.0.0.1:9100"])
        base_url = f"http://127.0.0.1:{server.port}/v1"
        async with openai.AsyncOpenAI(base_url=base_url, api_key="x", http_client=http_client, max_retries=0) as client:
            await client.models.list()

    with pytest.raises(openai.APIConnectionError) as exc_info:
        asyncio.run(list_models())

    assert "'127.0.0.1' is a loopback address" in refusal_message(exc_info)
    assert server.connections == 0


def test_it_does_not_follow_a_redirect_from_an_allowlisted_server_through_the_async_openai_sdk(local_server):
    allowlisted, internal = local_server("127.0.0.1"), local_server("127.0.0.2")
    allowlisted.redirect_to = f"http://127.0.0.2:{internal.port}/v1/models"

    async def list_models() -> None:
        http_client = safe_openai_http_client(timeout=5, allowlist=[f"127.0.0.1:{allowlisted.port}"])
        base_url = f"http://127.0.0.1:{allowlisted.port}/v1"
        async with openai.AsyncOpenAI(base_url=base_url, api_key="x", http_client=http_client, max_retries=0) as client:
            await client.models.list()

    with pytest.raises(openai.APIStatusError) as exc_info:
        asyncio.run(list_models())

    assert exc_info.value.status_code == 302
    assert allowlisted.requests == 1
    assert internal.connections == 0


def test_it_answers_a_chat_completion_from_the_allowlisted_simulated_upstream(simulated_upstream):
    simulated_upstream.reset()

    async def chat() -> str:
        http_client = safe_openai_http_client(timeout=5, allowlist=[f"127.0.0.1:{simulated_upstream.port}"])
        async with openai.AsyncOpenAI(
            base_url=simulated_upstream.base_url, api_key="sk-test", http_client=http_client, max_retries=0
        ) as client:
            completion = await client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
            return completion.choices[0].message.content

    assert asyncio.run(chat())
    assert simulated_upstream.stats()["demo"] == 1


def test_it_refuses_a_rebound_name_and_a_redirect_to_an_ip_literal_at_the_aiohttp_connector(fake_dns, local_server):
    # A bare aiohttp session, without the URL re-check of the openai client: the connector alone must refuse,
    # both for names (SafeResolver) and for IP literals, which aiohttp never hands to a resolver.
    allowlisted, internal = local_server("127.0.0.1"), local_server("127.0.0.2")
    allowlisted.redirect_to = f"http://127.0.0.2:{internal.port}/"
    fake_dns["rebind.example.com"] = ["127.0.0.2"]

    async def get(url: str) -> int:
        connector = safe_aiohttp_connector(allowlist=[f"127.0.0.1:{allowlisted.port}"])
        async with aiohttp.ClientSession(connector=connector) as session, session.get(url) as response:
            return response.status

    for url, reason in (
        (f"http://rebind.example.com:{internal.port}/", "'rebind.example.com' resolves to a loopback address (127.0.0.2)"),
        (f"http://127.0.0.2:{internal.port}/", "'127.0.0.2' is a loopback address"),
        (f"http://127.0.0.1:{allowlisted.port}/", "'127.0.0.2' is a loopback address"),  # aiohttp follows the redirect
        (f"http://metadata.google.internal:{internal.port}/", "is a local or internal host name"),
    ):
        with pytest.raises(aiohttp.ClientConnectorError) as exc_info:
            asyncio.run(get(url))
        assert isinstance(ssrf_refusal(exc_info.value), UnsafeAddressError)
        assert reason in refusal_message(exc_info)

    assert allowlisted.requests == 1
    assert internal.connections == 0


def test_it_refuses_a_rebound_name_through_the_sync_openai_sdk_before_connecting(fake_dns, local_server):
    internal = local_server()
    fake_dns["rebind.example.com"] = ["10.0.0.7", "127.0.0.1"]
    client = openai.OpenAI(
        base_url=f"https://rebind.example.com:{internal.port}/v1",
        api_key="x",
        http_client=safe_sync_http_client(timeout=5, allowlist=[]),
        max_retries=0,
    )

    with client, pytest.raises(openai.APIConnectionError) as exc_info:
        client.models.list()

    assert "'rebind.example.com' resolves to a private address (10.0.0.7)" in refusal_message(exc_info)
    assert internal.connections == 0


def test_it_reaches_the_allowlisted_simulated_upstream_through_the_sync_openai_sdk(simulated_upstream):
    client = openai.OpenAI(
        base_url=simulated_upstream.base_url,
        api_key="sk-test",
        http_client=safe_sync_http_client(timeout=5, allowlist=[f"127.0.0.1:{simulated_upstream.port}"]),
        max_retries=0,
    )

    with client:
        assert "demo" in [model.id for model in client.models.list().data]


def test_it_does_not_follow_a_redirect_through_the_sync_client(local_server):
    allowlisted, internal = local_server("127.0.0.1"), local_server("127.0.0.2")
    allowlisted.redirect_to = f"http://127.0.0.2:{internal.port}/"

    with safe_sync_http_client(timeout=5, allowlist=[f"127.0.0.1:{allowlisted.port}"]) as client:
        assert client.get(f"http://127.0.0.1:{allowlisted.port}/").status_code == 302
        # A caller that asks for redirects anyway still cannot reach the non-public target.
        with pytest.raises(httpx2.ConnectError, match=r"'127\.0\.0\.2' is a loopback address"):
            client.get(f"http://127.0.0.1:{allowlisted.port}/", follow_redirects=True)

    assert internal.connections == 0


def test_it_caps_the_response_body_in_both_clients(local_server):
    server = local_server()
    server.body_size = 200_000
    allowlist = [f"127.0.0.1:{server.port}"]
    url = f"http://127.0.0.1:{server.port}/"

    with safe_sync_http_client(timeout=5, max_response_bytes=100_000, allowlist=allowlist) as client:
        with pytest.raises(ResponseTooLarge, match="larger than 100000 bytes"):
            client.get(url)
        server.body_size = 100_000
        assert len(client.get(url).content) == 100_000

    async def get() -> None:
        async with safe_openai_http_client(timeout=5, max_response_bytes=50_000, allowlist=allowlist) as client:
            await client.get(url)

    with pytest.raises(ResponseTooLarge, match="larger than 50000 bytes"):
        asyncio.run(get())
