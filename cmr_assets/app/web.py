"""Starlette app: login, the ranking and single-image pages, their JSON API and the images.

Security model (loopback by default, see docs/labelling_app.md):
- signed session cookie (itsdangerous via Starlette's SessionMiddleware; HttpOnly, SameSite=Strict),
  secret key in `$CMR_DATA_DIR/secret/labelling_session.key`; a disabled annotator's session ends at
  the next request;
- a CSRF token per session, required on every POST (form field `csrf` or header `X-CSRF-Token`);
- login failures limited per client address and per name (HTTP 429 with Retry-After);
- every page, API call and image needs a session; images are addressed by (ticket, index) of the
  annotator's own tickets, resolved through the slices table and confined to the slice store;
- Host header checked (DNS rebinding), CSP without inline script or style, frame-ancestors 'none',
  X-Frame-Options, nosniff, no referrer, no caching of pages.

Public API:
- `AppConfig(paths, budget_s=5 h, allowed_hosts=("127.0.0.1", "localhost"), ...)`
- `create_app(config) -> Starlette`
- `LoginThrottle(max_failures, window_s)` - the login rate limiter.
- `session_secret(paths) -> str` - the cookie signing key, created on first use.
"""

from __future__ import annotations

import hmac
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

from cmr_assets.app.accounts import authenticate, load_roster, roster_path
from cmr_assets.app.service import STRATEGIES, LabellingService, Presentation, SubmissionRejected
from cmr_assets.app.tasks import TaskSource
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
    login_max_failures: int = 5
    login_window_s: float = 300.0
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
                failures = self._failures[key]
                while failures and now - failures[0] > self.window_s:
                    failures.popleft()
                if len(failures) >= self.max_failures:
                    waits.append(failures[0] + self.window_s - now)
            return max(waits)

    def record_failure(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self._failures[key].append(self.clock())


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
    throttle = LoginThrottle(config.login_max_failures, config.login_window_s)
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
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise SubmissionRejected(413, "request body too large")
        return body

    def task_json(annotator: str, strategy: str, presentation: Presentation | None) -> dict[str, Any]:
        progress = service.progress(annotator, strategy)
        task = None if presentation is None else {
            "ticket": presentation.ticket_id,
            "images": [f"/img/{presentation.ticket_id}/{i}" for i in range(presentation.n_images)]}
        return {"task": task, "progress": {"done": progress.done, "total": progress.total,
                                           "seconds_used": round(progress.seconds_used, 1),
                                           "budget_s": progress.budget_s}}

    def error(status: int, reason: str) -> JSONResponse:
        return JSONResponse({"error": reason}, status_code=status)

    async def home(request: Request) -> Response:
        annotator = annotator_of(request)
        if annotator is None:
            return RedirectResponse("/login", status_code=303)
        progress = {s: await run_in_threadpool(service.progress, annotator, s) for s in STRATEGIES}
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
        keys = [f"ip:{request.client.host if request.client else '?'}", f"name:{name}"]
        wait = throttle.retry_after(keys)
        if wait > 0:
            response = page(request, "login.html", 429, message="Too many failed attempts; wait a few minutes.")
            response.headers["retry-after"] = str(int(wait) + 1)
            return response
        if not await run_in_threadpool(authenticate, paths, name, password):
            throttle.record_failure(keys)
            return page(request, "login.html", 401, message="Unknown name or wrong password.")
        request.session.clear()  # a fresh session (and CSRF token) at every login: no fixation
        request.session["annotator"] = name
        csrf_token(request)
        return RedirectResponse("/", status_code=303)

    async def logout(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
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
        return JSONResponse(await run_in_threadpool(task_json, annotator, strategy, presentation))

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
            if (strategy, action) == ("single", "undo"):
                if not await run_in_threadpool(service.undo_single, annotator):
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
        next_task = await run_in_threadpool(task_json, annotator, strategy, presentation)
        return JSONResponse({"duplicate": duplicate, **next_task})

    async def image(request: Request) -> Response:
        annotator = annotator_of(request)
        if annotator is None:
            return error(401, "log in first")
        path = await run_in_threadpool(service.image_path, annotator, request.path_params["ticket"],
                                       request.path_params["index"])
        if path is None:
            return error(404, "not found")
        return FileResponse(path, media_type="image/png", headers={"cache-control": "private, max-age=3600"})

    routes = [
        Route("/", home),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/label/{strategy}", strategy_page),
        Route("/api/{strategy}/next", api_next),
        Route("/api/{strategy}/{action}", api_post, methods=["POST"]),
        Route("/img/{ticket}/{index:int}", image),
        Mount("/static", StaticFiles(directory=str(PACKAGE_DIR / "static")), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
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
