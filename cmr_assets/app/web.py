"""Starlette app: login, the ranking and single-image pages, their JSON API and the images.

Security model (loopback by default, see docs/labelling_app.md):
- signed session cookie (itsdangerous via Starlette's SessionMiddleware; HttpOnly, SameSite=Strict),
  secret key in `$CMR_DATA_DIR/secret/labelling_session.key`; a disabled annotator's session ends at
  the next request;
- a CSRF token per session, required on every POST (form field `csrf` or header `X-CSRF-Token`);
- login failures limited per (client address, name), per name across addresses and per address
  across names (HTTP 429 with Retry-After); one address can never lock an account for anyone else;
- request bodies over `MAX_BODY_BYTES` refused with 413 by their Content-Length, or while they
  stream in, before more than the limit is held in memory (`BodyLimit`);
- the client address is the TCP peer; `X-Forwarded-For` is used only when the peer is one of the
  configured `trusted_proxies` (`ClientAddress`);
- every page, API call and image needs a session; images are addressed by (ticket, index) of the
  annotator's own tickets, or by index into their reference strip, resolved through the slices
  table and confined to the slice store;
- Host header checked (DNS rebinding), CSP without inline script or style, frame-ancestors 'none',
  X-Frame-Options, nosniff, no referrer, no caching of pages.

Public API:
- `AppConfig(paths, budget_s=5 h, allowed_hosts=("127.0.0.1", "localhost"), trusted_proxies=(), ...)`
- `create_app(config) -> Starlette`
- `LoginThrottle(max_failures, window_s)` - sliding-window failure counts per key.
- `LoginLimiter(pair_max, name_max, client_max, window_s)` - the login policy on top of it.
- `BodyLimit(app, max_bytes)`, `ClientAddress(app, trusted_proxies)` - ASGI middleware.
- `session_secret(paths) -> str` - the cookie signing key, created on first use.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import secrets
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cmr_assets.app.service import LabellingService, Presentation, SubmissionRejected
from cmr_assets.app.tasks import TaskSource
from cmr_assets.domain import STRATEGIES
from cmr_assets.labelling.roster import authenticate, load_roster, roster_path
from cmr_assets.settings import DEFAULT_HOURS_PER_ANNOTATOR, DataPaths

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
MAX_BODY_BYTES = 16_384
SECURITY_HEADERS = {
    "content-security-policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}


@dataclass(frozen=True)
class AppConfig:
    """Everything the app needs; `budget_s` is each annotator's labelling time per strategy."""

    paths: DataPaths
    budget_s: float = DEFAULT_HOURS_PER_ANNOTATOR * 3600  # the campaign's hours per annotator
    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
    login_max_failures: int = 5  # per (client address, name)
    login_name_max_failures: int = 20  # per name, all addresses (each adds at most login_max_failures)
    login_client_max_failures: int = 50  # per address, all names (blocks that address only)
    login_window_s: float = 300.0
    trusted_proxies: tuple[str, ...] = ()  # addresses / networks whose X-Forwarded-For is believed
    task_refresh_s: float = 60.0
    ticket_ttl_s: float = 1800.0
    session_max_age_s: int = 12 * 3600
    secret_key: str | None = None  # None: read or create the key file under paths.secret


def session_secret(paths: DataPaths) -> str:
    """The cookie-signing key, created once with mode 0600 so sessions survive restarts."""
    path = paths.secret / "labelling_session.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="ascii").strip()
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secrets.token_hex(32))
    return path.read_text(encoding="ascii").strip()


@dataclass
class LoginThrottle:
    """Sliding-window count of failed logins per key (client address, name); blocks past the limit."""

    max_failures: int
    window_s: float
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def retry_after(self, keys: list[str]) -> float:
        """Seconds until any of `keys` may try again (0 when none is blocked)."""
        now = self.clock()
        with self._lock:
            waits = [0.0]
            for key in keys:
                failures = self._failures.get(key)
                if failures is None:
                    continue
                while failures and now - failures[0] > self.window_s:
                    failures.popleft()
                if len(failures) >= self.max_failures:
                    waits.append(failures[0] + self.window_s - now)
            return max(waits)

    def record_failure(self, keys: list[str]) -> None:
        with self._lock:
            now = self.clock()
            for key in keys:
                self._failures[key].append(now)
            if len(self._failures) > 10_000:  # many names tried: forget keys whose window has passed
                for key in [k for k, v in self._failures.items() if not v or now - v[-1] > self.window_s]:
                    del self._failures[key]


@dataclass
class LoginLimiter:
    """Who may try a password now. Failures count per (address, name), per name and per address:

    - `pair_max` failures for one name from one address block that name from that address;
    - `name_max` failures for one name block it from everywhere (guessing spread over addresses).
      A blocked attempt is not counted, so one address adds at most `pair_max` to a name's count and
      `name_max > pair_max` means no single address can lock an account for anyone else;
    - `client_max` failures from one address, over all names, block that address (spraying).
    """

    pair_max: int
    name_max: int
    client_max: int
    window_s: float
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        if self.name_max <= self.pair_max:
            raise ValueError("name_max must exceed pair_max, or one address could lock an account out")
        self._throttles = [LoginThrottle(limit, self.window_s, self.clock)
                           for limit in (self.pair_max, self.name_max, self.client_max)]

    @staticmethod
    def _keys(client: str, name: str) -> list[str]:
        return [f"pair:{client}\x00{name}", f"name:{name}", f"client:{client}"]

    def retry_after(self, client: str, name: str) -> float:
        return max(t.retry_after([k]) for t, k in zip(self._throttles, self._keys(client, name), strict=True))

    def record_failure(self, client: str, name: str) -> None:
        for throttle, key in zip(self._throttles, self._keys(client, name), strict=True):
            throttle.record_failure([key])


class BodyTooLarge(Exception):
    """Raised from `receive` when a request body streams past the limit."""


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413: at once when Content-Length says so, else as
    soon as the streamed body passes the limit (the rest is never read, so never held in memory)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    @staticmethod
    async def _refuse(send: Send, status: int, reason: str) -> None:
        body = json.dumps({"error": reason}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = [v for k, v in scope.get("headers", []) if k == b"content-length"]
        if declared:
            try:
                length = int(declared[0])
            except ValueError:
                await self._refuse(send, 400, "invalid Content-Length")
                return
            if length > self.max_bytes:
                await self._refuse(send, 413, "request body too large")
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(send, 413, "request body too large")


def _networks(entries: tuple[str, ...]) -> tuple[list, set[str]]:
    networks, names = [], set()
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.add(entry)  # a literal peer name (e.g. a unix-socket proxy, or TestClient's "testclient")
    return networks, names


class ClientAddress:
    """`scope["client"]` becomes the real client behind a trusted reverse proxy, and only there.

    When the TCP peer is one of `trusted_proxies`, the `X-Forwarded-For` list is read from the right
    and the first address that is not itself a trusted proxy is the client (entries further left
    were written by the client and are not believed); `X-Forwarded-Proto` sets the scheme. From any
    other peer these headers are ignored, so a client cannot choose its own address (and its own
    login-limit key). With no trusted proxies configured the peer is always the client.
    """

    def __init__(self, app: ASGIApp, trusted_proxies: tuple[str, ...]) -> None:
        self.app = app
        self.networks, self.names = _networks(trusted_proxies)

    def trusted(self, host: str) -> bool:
        if host in self.names:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] in ("http", "websocket") and client and self.trusted(client[0]):
            headers: dict[bytes, bytes] = {}
            for key, value in scope.get("headers", []):
                if key in (b"x-forwarded-for", b"x-forwarded-proto"):  # several headers: join them
                    headers[key] = (headers[key] + b"," + value) if key in headers else value
            hops = [h.strip() for h in headers.get(b"x-forwarded-for", b"").decode("latin-1").split(",") if h.strip()]
            real = next((hop for hop in reversed(hops) if not self.trusted(hop)), None)
            if real is not None:
                scope = {**scope, "client": (real, 0)}
                proto = headers.get(b"x-forwarded-proto", b"").decode("latin-1").split(",")[-1].strip().lower()
                if proto in ("http", "https"):
                    scope["scheme"] = proto
        await self.app(scope, receive, send)


class SecurityHeaders:
    """Adds the security headers to every HTTP response (pages, API, images, static files)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                if not scope["path"].startswith("/static/"):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class ActiveRoster:
    """Active annotator names, re-read only when the roster file changes (disable takes effect live)."""

    def __init__(self, paths: DataPaths) -> None:
        self._paths = paths
        self._stamp: tuple[int, int] | None = None
        self._active: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def is_active(self, name: str) -> bool:
        path = roster_path(self._paths)
        try:
            stat = path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            return False
        with self._lock:
            if stamp != self._stamp:
                self._active = frozenset(n for n, a in load_roster(self._paths).items() if a.active)
                self._stamp = stamp
            return name in self._active


def create_app(config: AppConfig) -> Starlette:
    """Build the labelling app for one data dir."""
    paths = config.paths
    templates = Jinja2Templates(directory=str(PACKAGE_DIR / "templates"))
    service = LabellingService(paths, TaskSource(paths, config.task_refresh_s), config.budget_s,
                               ticket_ttl_s=config.ticket_ttl_s)
    limiter = LoginLimiter(config.login_max_failures, config.login_name_max_failures,
                           config.login_client_max_failures, config.login_window_s)
    roster = ActiveRoster(paths)

    def csrf_token(request: Request) -> str:
        if "csrf" not in request.session:
            request.session["csrf"] = secrets.token_urlsafe(32)
        return request.session["csrf"]

    def csrf_ok(request: Request, supplied: str | None) -> bool:
        expected = request.session.get("csrf")
        return bool(expected and supplied and hmac.compare_digest(expected, supplied))

    def annotator_of(request: Request) -> str | None:
        name = request.session.get("annotator")
        if name and roster.is_active(name):
            return name
        if name:
            request.session.clear()
        return None

    def page(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
        return templates.TemplateResponse(request, template, {"csrf": csrf_token(request),
                                                              "annotator": annotator_of(request), **context},
                                          status_code=status_code)

    async def read_body(request: Request) -> bytes:
        """The body, read in chunks; `BodyLimit` has already refused it past the limit, this is the
        same rule for an app mounted without that middleware."""
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise SubmissionRejected(413, "request body too large")
            chunks.append(chunk)
        return b"".join(chunks)

    def progress_json(request: Request, annotator: str, strategy: str) -> dict[str, Any]:
        """Totals, this login session's share (against a baseline kept in the session cookie), and the
        time the rest of the queue would take at the annotator's own pace so far."""
        progress = service.progress(annotator, strategy)
        baseline = request.session.setdefault(f"since_{strategy}", [progress.done, progress.seconds_used])
        pace = progress.seconds_used / progress.done if progress.done else None
        return {"done": progress.done, "total": progress.total, "seconds_used": round(progress.seconds_used, 1),
                "budget_s": progress.budget_s, "session_done": progress.done - baseline[0],
                "session_seconds": round(progress.seconds_used - baseline[1], 1),
                "seconds_per_task": None if pace is None else round(pace, 1),
                "seconds_left_estimate": None if pace is None else round(pace * (progress.total - progress.done))}

    def task_json(request: Request, annotator: str, strategy: str,
                  presentation: Presentation | None) -> dict[str, Any]:
        task = None if presentation is None else {
            "ticket": presentation.ticket_id,
            "images": [f"/img/{presentation.ticket_id}/{i}" for i in range(presentation.n_images)],
            "crops": list(presentation.crops), "initial": presentation.initial}
        return {"task": task, "progress": progress_json(request, annotator, strategy),
                "can_undo": service.can_undo(annotator, strategy)}

    def error(status: int, reason: str) -> JSONResponse:
        return JSONResponse({"error": reason}, status_code=status)

    async def home(request: Request) -> Response:
        annotator = annotator_of(request)
        if annotator is None:
            return RedirectResponse("/login", status_code=303)
        progress = {s: await run_in_threadpool(progress_json, request, annotator, s) for s in STRATEGIES}
        return page(request, "home.html", progress=progress)

    async def login_page(request: Request) -> Response:
        if annotator_of(request):
            return RedirectResponse("/", status_code=303)
        return page(request, "login.html")

    async def login(request: Request) -> Response:
        try:
            form = parse_qs((await read_body(request)).decode("utf-8", "replace"))
        except SubmissionRejected as rejected:
            return error(rejected.status, rejected.reason)
        name = form.get("name", [""])[0].strip().lower()
        password = form.get("password", [""])[0]
        if not csrf_ok(request, form.get("csrf", [None])[0]):
            return page(request, "login.html", 403, message="The form expired; please try again.")
        client = request.client.host if request.client else "?"
        wait = limiter.retry_after(client, name)
        if wait > 0:
            response = page(request, "login.html", 429, message="Too many failed attempts; wait a few minutes.")
            response.headers["retry-after"] = str(int(wait) + 1)
            return response
        if not await run_in_threadpool(authenticate, paths, name, password):
            limiter.record_failure(client, name)
            return page(request, "login.html", 401, message="Unknown name or wrong password.")
        request.session.clear()  # a fresh session (and CSRF token) at every login: no fixation
        request.session["annotator"] = name
        csrf_token(request)
        return RedirectResponse("/", status_code=303)

    async def logout(request: Request) -> Response:
        try:
            form = parse_qs((await read_body(request)).decode("utf-8", "replace"))
        except SubmissionRejected as rejected:
            return error(rejected.status, rejected.reason)
        if not csrf_ok(request, form.get("csrf", [None])[0]):
            return error(403, "missing or wrong CSRF token")
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    async def strategy_page(request: Request) -> Response:
        strategy = request.path_params["strategy"]
        if strategy not in STRATEGIES:
            return error(404, "not found")
        if annotator_of(request) is None:
            return RedirectResponse("/login", status_code=303)
        return page(request, f"{strategy}.html", strategy=strategy)

    async def api_next(request: Request) -> Response:
        annotator = annotator_of(request)
        if annotator is None:
            return error(401, "log in first")
        strategy = request.path_params["strategy"]
        try:
            presentation = await run_in_threadpool(service.present, annotator, strategy)
        except SubmissionRejected as rejected:
            return error(rejected.status, rejected.reason)
        return JSONResponse(await run_in_threadpool(task_json, request, annotator, strategy, presentation))

    async def api_recent(request: Request) -> Response:
        annotator = annotator_of(request)
        if annotator is None:
            return error(401, "log in first")
        strategy = request.path_params["strategy"]
        if strategy not in STRATEGIES:
            return error(404, "not found")
        return JSONResponse({"answers": await run_in_threadpool(service.recent, annotator, strategy)})

    async def api_reference(request: Request) -> Response:
        annotator = annotator_of(request)
        if annotator is None:
            return error(401, "log in first")
        examples = await run_in_threadpool(service.reference, annotator)
        return JSONResponse({"examples": [{"label": label, "image": f"/ref/{index}", "crop": crop}
                                          for index, (label, crop) in enumerate(examples)]})

    async def api_post(request: Request) -> Response:
        """Submit or undo: JSON body, CSRF header; answers with the next task so it shows at once."""
        annotator = annotator_of(request)
        if annotator is None:
            return error(401, "log in first")
        if not csrf_ok(request, request.headers.get("x-csrf-token")):
            return error(403, "missing or wrong CSRF token")
        strategy, action = request.path_params["strategy"], request.path_params["action"]
        try:
            body = _json_object(await read_body(request))
            duplicate = False
            if action == "undo" and strategy in STRATEGIES:
                if not await run_in_threadpool(service.undo, annotator, strategy):
                    raise SubmissionRejected(409, "nothing to undo")
            elif (strategy, action) == ("single", "submit"):
                result = await run_in_threadpool(service.submit_single, annotator, str(body.get("ticket")),
                                                 body.get("label"), body.get("artefact") is True)
                duplicate = result.duplicate
            elif (strategy, action) == ("ranking", "submit"):
                result = await run_in_threadpool(service.submit_ranking, annotator, str(body.get("ticket")),
                                                 _int_list(body.get("order")), _int_list(body.get("dividers")),
                                                 _int_list(body.get("artefacts", [])))
                duplicate = result.duplicate
            else:
                raise SubmissionRejected(404, "not found")
            presentation = await run_in_threadpool(service.present, annotator, strategy)
        except SubmissionRejected as rejected:
            return error(rejected.status, rejected.reason)
        next_task = await run_in_threadpool(task_json, request, annotator, strategy, presentation)
        return JSONResponse({"duplicate": duplicate, **next_task})

    async def image(request: Request) -> Response:
        annotator = annotator_of(request)
        if annotator is None:
            return error(401, "log in first")
        if "ticket" in request.path_params:
            path = await run_in_threadpool(service.image_path, annotator, request.path_params["ticket"],
                                           request.path_params["index"])
        else:
            path = await run_in_threadpool(service.reference_image_path, annotator, request.path_params["index"])
        if path is None:
            return error(404, "not found")
        return FileResponse(path, media_type="image/png", headers={"cache-control": "private, max-age=3600"})

    routes = [
        Route("/", home),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/label/{strategy}", strategy_page),
        Route("/api/reference", api_reference),
        Route("/api/{strategy}/next", api_next),
        Route("/api/{strategy}/recent", api_recent),
        Route("/api/{strategy}/{action}", api_post, methods=["POST"]),
        Route("/img/{ticket}/{index:int}", image),
        Route("/ref/{index:int}", image),
        Mount("/static", StaticFiles(directory=str(PACKAGE_DIR / "static")), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(BodyLimit, max_bytes=MAX_BODY_BYTES),
        Middleware(ClientAddress, trusted_proxies=config.trusted_proxies),
        Middleware(TrustedHostMiddleware, allowed_hosts=list(config.allowed_hosts)),
        Middleware(SessionMiddleware, secret_key=config.secret_key or session_secret(paths),
                   session_cookie="cmr_labelling_session", max_age=config.session_max_age_s,
                   same_site="strict"),
    ]
    return Starlette(routes=routes, middleware=middleware)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except ValueError as exc:
        raise SubmissionRejected(400, "the body is not valid JSON") from exc
    if not isinstance(value, dict):
        raise SubmissionRejected(400, "the body must be a JSON object")
    return value


def _int_list(value: Any) -> list[int]:
    """A JSON list of integers, else `SubmissionRejected` (booleans are not integers here)."""
    if not isinstance(value, list) or not all(type(v) is int for v in value):
        raise SubmissionRejected(400, "expected a list of integers")
    return value
