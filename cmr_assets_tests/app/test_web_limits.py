"""Inputs that cannot hurt the app: body size limits as bodies stream in, the login limiter's keys,
and forwarded-for handling only from trusted proxies."""

from __future__ import annotations

import contextlib
import socket
import time

import pytest
from starlette.testclient import TestClient

from cmr_assets.app.web import MAX_BODY_BYTES, LoginLimiter, create_app
from cmr_assets_tests.app.conftest import PASSWORD, Campaign, app_config, csrf_of, live_server


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _post_login(client: TestClient, name: str, password: str, forwarded_for: str | None = None):
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    token = csrf_of(client.get("/login", headers=headers).text)
    return client.post("/login", data={"name": name, "password": password, "csrf": token}, headers=headers,
                       follow_redirects=False)


def test_body_over_the_limit_is_refused_by_content_length_and_while_streaming(client: TestClient) -> None:
    token = csrf_of(client.get("/login").text)
    big = b"name=alice&csrf=" + token.encode() + b"&password=" + b"x" * MAX_BODY_BYTES
    response = client.post("/login", content=big, headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 413 and response.json() == {"error": "request body too large"}

    def stream():  # no Content-Length: the app must count while it reads
        for _ in range(64):
            yield b"x" * 4096

    response = client.post("/logout", content=stream())
    assert response.status_code == 413
    assert client.post("/login", content=b"name=a", headers={"content-length": "nonsense"}).status_code == 400


def _raw_request(port: int, head: bytes, chunk: bytes, max_chunks: int) -> tuple[bytes, int]:
    """Send `head`, then `chunk` repeatedly until the server answers or closes; (answer, bytes sent)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        answer = b""
        for _ in range(max_chunks):
            with contextlib.suppress(BlockingIOError):
                answer += sock.recv(65536)
            if answer:
                break
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                time.sleep(0.005)
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.setblocking(True)
        deadline = time.monotonic() + 10
        while b"\r\n\r\n" not in answer and time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            answer += data
    return answer, sent


def test_live_server_refuses_a_1_gb_body_without_reading_it(campaign: Campaign) -> None:
    with live_server(app_config(campaign.paths)) as url:
        port = int(url.rsplit(":", 1)[1])
        rss_before = _rss_bytes()
        declared, sent = _raw_request(port, b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                            b"Content-Type: application/x-www-form-urlencoded\r\n"
                                            b"Content-Length: 1073741824\r\n\r\n", b"x" * 65536, 16_384)
        assert declared.startswith(b"HTTP/1.1 413"), declared[:200]
        assert sent < 64 * 1024 * 1024  # answered long before 1 GB went over the wire
        chunk = b"10000\r\n" + b"x" * 65536 + b"\r\n"  # chunked: no length announced
        streamed, sent = _raw_request(port, b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                            b"Content-Type: application/x-www-form-urlencoded\r\n"
                                            b"Transfer-Encoding: chunked\r\n\r\n", chunk, 16_384)
        assert streamed.startswith(b"HTTP/1.1 413"), streamed[:200]
        assert sent < 64 * 1024 * 1024
        growth = _rss_bytes() - rss_before
        print(f"1 GB bodies refused: sent {sent} bytes before the answer, RSS growth {growth / 2**20:.1f} MiB")
    assert growth < 50 * 1024 * 1024, f"memory grew by {growth / 2**20:.0f} MiB"


def test_wrong_passwords_for_one_name_from_one_address_lock_only_that_pair(campaign: Campaign) -> None:
    config = app_config(campaign.paths, trusted_proxies=("testclient",), login_max_failures=3,
                        login_name_max_failures=7)
    with TestClient(create_app(config)) as client:
        for _ in range(3):
            assert _post_login(client, "alice", "guess-123", "198.51.100.7").status_code == 401
        blocked = _post_login(client, "alice", PASSWORD, "198.51.100.7")
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
        # the same proxy, other clients: alice herself and bob still get in
        assert _post_login(client, "alice", PASSWORD, "198.51.100.8").status_code == 303
        client.cookies.clear()
        assert _post_login(client, "bob", PASSWORD, "198.51.100.7").status_code == 303


def test_guessing_one_name_from_several_addresses_blocks_it_everywhere(campaign: Campaign) -> None:
    config = app_config(campaign.paths, trusted_proxies=("testclient",), login_max_failures=3,
                        login_name_max_failures=7)
    with TestClient(create_app(config)) as client:
        for _ in range(10):  # the 4th..10th from .1 are blocked and not counted for the name
            _post_login(client, "alice", "guess-123", "203.0.113.1")
        assert _post_login(client, "alice", PASSWORD, "203.0.113.9").status_code == 303  # only 3 counted
        client.cookies.clear()
        for _ in range(3):
            _post_login(client, "alice", "guess-123", "203.0.113.2")
        assert _post_login(client, "alice", PASSWORD, "203.0.113.9").status_code == 303  # 6 counted
        client.cookies.clear()
        _post_login(client, "alice", "guess-123", "203.0.113.4")  # the 7th counted failure
        assert _post_login(client, "alice", PASSWORD, "203.0.113.9").status_code == 429
        assert _post_login(client, "bob", PASSWORD, "203.0.113.9").status_code == 303


def test_spraying_names_from_one_address_blocks_that_address_only(campaign: Campaign) -> None:
    config = app_config(campaign.paths, trusted_proxies=("testclient",), login_client_max_failures=6)
    with TestClient(create_app(config)) as client:
        for index in range(6):
            assert _post_login(client, f"user{index}", "guess-123", "192.0.2.66").status_code == 401
        assert _post_login(client, "bob", PASSWORD, "192.0.2.66").status_code == 429
        assert _post_login(client, "bob", PASSWORD, "192.0.2.67").status_code == 303


def test_forwarded_for_from_an_untrusted_peer_is_ignored(campaign: Campaign) -> None:
    with TestClient(create_app(app_config(campaign.paths, login_max_failures=3))) as client:
        for index in range(3):  # a client cannot pick a fresh address per guess
            assert _post_login(client, "alice", "guess-123", f"198.51.100.{index}").status_code == 401
        assert _post_login(client, "alice", PASSWORD, "198.51.100.200").status_code == 429


def test_rightmost_untrusted_forwarded_address_is_the_client(campaign: Campaign) -> None:
    config = app_config(campaign.paths, trusted_proxies=("testclient", "10.0.0.0/8"), login_max_failures=2)
    with TestClient(create_app(config)) as client:
        for spoofed in ("1.1.1.1", "2.2.2.2"):  # the client wrote the left part; the proxies appended
            _post_login(client, "alice", "guess-123", f"{spoofed}, 198.51.100.5, 10.1.2.3")
        assert _post_login(client, "alice", PASSWORD, "3.3.3.3, 198.51.100.5").status_code == 429


def test_limiter_refuses_a_policy_where_one_address_locks_an_account() -> None:
    with pytest.raises(ValueError, match="name_max must exceed pair_max"):
        LoginLimiter(pair_max=5, name_max=5, client_max=50, window_s=300)
    now = [0.0]
    limiter = LoginLimiter(pair_max=2, name_max=4, client_max=10, window_s=60, clock=lambda: now[0])
    limiter.record_failure("a", "alice")
    limiter.record_failure("a", "alice")
    assert limiter.retry_after("a", "alice") == pytest.approx(60)
    assert limiter.retry_after("b", "alice") == 0 and limiter.retry_after("a", "bob") == 0
    now[0] = 61
    assert limiter.retry_after("a", "alice") == 0
