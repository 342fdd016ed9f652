"""The review station's web app (Starlette): who gets in, what each request may do, and the routes.

Access: the URL printed at start carries a fresh random token, good for one
use; the request with it gets a session cookie (HttpOnly, SameSite=Strict)
and is redirected to the same page without the token, so it leaves the
address bar and the history. Every other request needs that cookie. With a
reviewer registry, the session then signs in with a reviewer's name and
password, which unlocks their signing key for the session: every decision
is signed with it, in their name. Without one, a station password (required
to serve beyond this machine) is asked once, and the reviewer's name once
per session, never changed after. A sign-in expires after 15 minutes
without a request; the session signs in again. Requests that change
anything (POST) also need the session's CSRF token in an ``X-CSRF-Token``
header, which a page of another site can neither read nor send.

Every response carries a Content-Security-Policy that lets the page load its
own script, style and images and nothing else (no CDN, no inline script);
the page puts text from files and the sample sheet into the DOM as text
(``textContent``), never as HTML.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import secrets
import time
import urllib.parse
from dataclasses import dataclass
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from ..exceptions import CytopipeError, OutputError, ReviewError
from ..outputs.html import escape
from ..review.reviewers import ReviewerRegistry, Signer, normalise_name
from .state import StaleError, Station

__all__ = ["COOKIE", "CSP", "CSRF_HEADER", "IDLE_TIMEOUT", "create_app"]

#: Seconds without a request after which a session's sign-in expires (its reviewer signs in again).
IDLE_TIMEOUT = 15 * 60.0

COOKIE = "cytopipe_station"
CSRF_HEADER = "X-CSRF-Token"
#: Only the app's own files; images also as data: URIs (the batch view's small plots).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff", "referrer-policy": "no-referrer",
            "x-frame-options": "DENY", "cache-control": "no-store", "cross-origin-opener-policy": "same-origin"}
_STATIC = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
_NO_SESSION = ("This review station needs the link it printed when it started (http://HOST:PORT/?token=...); "
               "open that link again, or restart 'cytopipe review RUN_DIR --serve' for a new one.")
_USED = ("This station's link was used already: it opens one browser session. Use the browser that opened it, "
         "or restart 'cytopipe review RUN_DIR --serve' for a new link.")
_EXPIRED = "Your sign-in expired after 15 minutes without activity: sign in again."


@dataclass
class Session:
    """One browser's session: its CSRF token, whether it signed in, the reviewer and their unlocked key."""

    csrf: str
    authed: bool
    reviewer: str = ""
    failures: int = 0
    signer: Signer | None = None
    last_seen: float = 0.0


class _SecurityHeaders:
    """Add the CSP and friends to every response (pure ASGI: nothing is buffered)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for k, v in _HEADERS.items():
                    headers[k] = v
            await send(message)

        return await self.app(scope, receive, send_with_headers)


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN and infinities become null (JSON has neither)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _clean(obj.item())
    return obj


def _json(obj: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(_clean(obj), status_code=status)


def _index_param(q, name: str) -> int | None:
    text = q.get(name)
    if text in (None, ""):
        return None
    if not text.isdigit() or len(text) > 9:
        msg = f"{name} must be a whole number (a sample's or a colour's index), got {text!r}."
        raise ReviewError(msg)
    return int(text)


def _plot_params(q) -> dict[str, Any]:
    """A population request's plot options from its query (``x``, ``y``, ``kind``, ``events``, ``window``,
    ``overlay``, ``tint``); values are checked here or by the station, a bad one answers 400 naming it."""
    channels = [c for c in (q.get("x"), q.get("y")) if c]
    if q.get("y") and not q.get("x"):
        msg = f"A plot with y={q.get('y')!r} needs its x too."
        raise ReviewError(msg)
    window = None
    if q.get("window"):
        try:
            nums = [float(v) for v in q["window"].split(",")]
        except ValueError:
            nums = []
        if len(nums) not in (2, 4) or not all(math.isfinite(v) for v in nums):
            msg = f"window is lo,hi (one axis) or xlo,xhi,ylo,yhi in plot units, got {q['window']!r}."
            raise ReviewError(msg)
        window = [nums[k:k + 2] for k in range(0, len(nums), 2)]
    return {"channels": channels or None, "kind": q.get("kind") or None, "events": q.get("events") or "parent",
            "window": window, "overlay": _index_param(q, "overlay"), "tint": _index_param(q, "tint")}


def _page(csrf: str) -> str:
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="csrf-token" content="{escape(csrf)}">
<title>cytopipe review station</title><link rel="stylesheet" href="/static/app.css"></head>
<body>
<header><h1>cytopipe review station</h1><span id="run"></span><span id="left"></span><span id="who"></span>
<nav><button type="button" id="tab-sample" class="on">Sample</button><button type="button" id="tab-batch">One gate
across the batch</button></nav></header>
<p id="message" role="status"></p>
<main>
<aside id="queue-pane"><p class="keys"><kbd>j</kbd>/<kbd>k</kbd> next/previous &middot; <kbd>a</kbd> approve
&middot; <kbd>r</kbd> reject &middot; <kbd>e</kbd> save the moved gate &middot; <kbd>Esc</kbd>/<kbd>z</kbd> undo a
step, <kbd>y</kbd> redo, <kbd>0</kbd> whole axes, <kbd>?</kbd> help. Drag a gate's edges, corners or vertices,
or the whole gate; double-click an edge to add a vertex, a vertex to delete it. The counts follow when you let go.
Each plot: choose x, y and density, contour or histogram; wheel zooms, dragging the background pans.</p>
<p id="queue-tools"><input id="queue-filter" type="search" placeholder="filter: patient, visit, flag, status"
autocomplete="off"> <select id="queue-show"><option value="all">all</option><option value="open">to decide</option>
<option value="flagged">flagged</option><option value="decided">decided</option></select></p>
<table id="queue"><thead><tr><th data-sort="patient">patient</th><th data-sort="visit">visit</th>
<th data-sort="treg_pct">Treg % CD4 [95 % CI]</th><th data-sort="flags">flags</th><th data-sort="status">status</th>
</tr></thead><tbody></tbody></table></aside>
<section id="sample-view"><div id="sample-head"></div>
<p><button type="button" id="btn-approve-unflagged">Approve all unflagged&hellip;</button></p>
<div id="actions"><button type="button" id="btn-approve">Approve (a)</button><button type="button"
id="btn-reject">Reject (r)</button><button type="button" id="btn-edit">Save moved gate (e)</button><button
type="button" id="btn-undo">Undo (Esc)</button><button type="button" id="btn-redo">Redo (y)</button></div>
<div id="plot-tools"></div><div id="plots"></div><div id="history"></div></section>
<section id="batch-view" hidden><div id="batch-controls"><label>Gate <select id="batch-gate"></select></label>
<label>Overlay a patient's visits <select id="batch-patient"><option value="">(none)</option></select></label>
<p id="batch-axes"></p></div>
<div id="overlay"></div><div id="batch-grid"></div></section>
</main>
<div id="help" hidden><div><h2>Keys</h2><p><kbd>j</kbd>/<kbd>k</kbd> next/previous sample (the queue as shown)
&middot; <kbd>a</kbd> approve &middot; <kbd>r</kbd> reject &middot; <kbd>e</kbd> save the moved gate &middot;
<kbd>Esc</kbd>/<kbd>z</kbd> undo a step &middot; <kbd>y</kbd> redo &middot; <kbd>?</kbd> this help.</p>
<p>Drag a gate's edge, corner or vertex, or the whole gate; double-click an edge to add a vertex, a vertex to
delete it. The counts follow when you let go; nothing is recorded until you approve, reject or save.</p>
<h2>Plots</h2><p>Each plot's <b>x</b> and <b>y</b> can be any channel of the sample, Time included (Time &times; a
marker shows where a flow-rate flag's clog or bubble fell). A gate is drawn, and can be moved, on its own axes
only; on any other axes its parent is shown with the gate's events in red (backgating). <b>density</b>,
<b>contour</b> (probability contours: 2, 10, 25, 50, 75 and 90 % of the events outside each) or <b>histogram</b>
of x. <b>Overlay</b> (above the plots) draws another sample's population of the same gate in orange on every
plot, on this sample's axes.</p>
<p>Mouse wheel: zoom around the pointer &middot; drag the background, or <kbd>Shift</kbd>+drag anywhere: pan
&middot; <kbd>0</kbd> or a plot's &#x2922; button: the whole axes again. Gates stay editable while zoomed;
handles beyond the view wait on its edge.</p>
<p><kbd>?</kbd> or <kbd>Esc</kbd> closes this.</p></div></div>
<div id="modal" hidden><form id="modal-form"><label for="modal-input" id="modal-label"></label>
<input id="modal-input" autocomplete="off" maxlength="500"><div><button type="submit" id="modal-ok">OK</button>
<button type="button" id="modal-cancel">Cancel</button></div></form></div>
<script src="/static/app.js"></script>
</body></html>
"""


def _login_page(csrf: str, note: str = "", *, reviewer: bool = False) -> str:
    name = ('<label>Your name, as enrolled <input type="text" name="name" id="login-name" autocomplete="username" '
            'maxlength="100" autofocus></label>' if reviewer else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cytopipe review station: sign in</title>
<link rel="stylesheet" href="/static/app.css"></head><body class="login">
<form method="post" action="/login"><h1>cytopipe review station</h1><p id="login-note">{escape(note)}</p>
{name}<label>Password <input type="password" name="password" id="login-password"
autocomplete="current-password"{"" if reviewer else " autofocus"}></label>
<input type="hidden" name="csrf" value="{escape(csrf)}"><button type="submit" id="login-ok">Sign in</button></form>
</body></html>
"""


def create_app(station: Station, *, token: str, password: str | None = None,
               allowed_hosts: list[str] | None = None, registry: ReviewerRegistry | None = None,
               idle_timeout: float = IDLE_TIMEOUT) -> Starlette:
    """The station's ASGI app for one run folder.

    Parameters
    ----------
    station
        The run folder under review.
    token
        The secret carried by the printed URL (``/?token=...``).
    password
        Asked once per session when given (needed beyond this machine).
    allowed_hosts
        ``Host`` header values accepted (default: this machine's names), which
        stops a hostile page from reaching the app through DNS rebinding.
    registry
        The lab's reviewer registry: each session signs in with a reviewer's
        name and password (instead of ``password``), and every decision is
        signed with their key.
    idle_timeout
        Seconds without a request after which a sign-in expires.

    Returns
    -------
    starlette.applications.Starlette
    """
    sessions: dict[str, Session] = {}
    token_used = False
    signs_in = registry is not None or password is not None  # else no sign-in to expire: the token is the key

    def session_of(request: Request) -> Session | None:
        sid = request.cookies.get(COOKIE)
        sess = sessions.get(sid) if sid else None
        if sess is not None and sess.authed and signs_in:
            now = time.monotonic()
            if now - sess.last_seen > idle_timeout:  # signed out: the key is dropped from memory
                sess.authed, sess.signer, sess.reviewer = False, None, ""
            else:
                sess.last_seen = now
        return sess

    def guard(handler, *, changes_state: bool = False):
        async def endpoint(request: Request) -> Response:
            sess = session_of(request)
            if sess is None:
                return _json({"error": _NO_SESSION}, 401)
            if not sess.authed:
                return _json({"error": _EXPIRED if signs_in else _NO_SESSION, "login": True}, 401)
            if changes_state and not hmac.compare_digest(request.headers.get(CSRF_HEADER, ""), sess.csrf):
                return _json({"error": f"Refused: a request that changes anything needs the {CSRF_HEADER} header "
                                       "of this session's page; reload the page."}, 403)
            try:
                return await handler(request, sess)
            except StaleError as e:
                return _json({"error": str(e), "stale": True}, 409)
            except OutputError as e:
                return _json({"error": str(e)}, 409)
            except CytopipeError as e:
                return _json({"error": str(e)}, 400)

        return endpoint

    async def body_of(request: Request) -> dict[str, Any]:
        try:
            data = json.loads(await request.body() or b"{}")
        except ValueError:
            data = None
        if not isinstance(data, dict):
            from ..exceptions import ReviewError

            msg = "The request body must be a JSON object."
            raise ReviewError(msg)
        return data

    async def index(request: Request) -> Response:
        nonlocal token_used
        given = request.query_params.get("token")
        if given is not None:
            if not hmac.compare_digest(given.encode(), token.encode()):
                return PlainTextResponse("This link's token is not this station's. " + _NO_SESSION, 403)
            if token_used:
                return PlainTextResponse(_USED, 403)
            token_used = True
            sid = secrets.token_urlsafe(32)
            sessions[sid] = Session(csrf=secrets.token_urlsafe(24), authed=not signs_in)
            resp = RedirectResponse("/login" if signs_in else "/", status_code=303)
            resp.set_cookie(COOKIE, sid, httponly=True, samesite="strict", path="/")
            return resp
        sess = session_of(request)
        if sess is None:
            return PlainTextResponse(_NO_SESSION, 401)
        if not sess.authed:
            return RedirectResponse("/login", status_code=303)
        return HTMLResponse(_page(sess.csrf))

    async def login(request: Request) -> Response:
        sess = session_of(request)
        if sess is None:
            return PlainTextResponse(_NO_SESSION, 401)
        if request.method == "GET":
            if sess.authed:
                return RedirectResponse("/", status_code=303)
            note = "Sign in with your name and password to review and sign decisions." if registry else ""
            return HTMLResponse(_login_page(sess.csrf, note, reviewer=registry is not None))
        form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
        csrf, given = form.get("csrf", [""])[0], form.get("password", [""])[0]
        if not hmac.compare_digest(csrf, sess.csrf):
            return PlainTextResponse("Refused: the form is not this session's; reload the page.", 403)
        if registry is not None:
            name = form.get("name", [""])[0]
            try:
                signer = await run_in_threadpool(registry.unlock, name, given)  # Scrypt: ~0.1 s off the loop
            except CytopipeError:
                signer = None
            if signer is not None:
                sess.authed, sess.signer, sess.reviewer = True, signer, signer.name
                sess.last_seen, sess.failures = time.monotonic(), 0
                return RedirectResponse("/", status_code=303)
            note = ("Name or password not recognised. Give your name as enrolled ('cytopipe reviewer list'); "
                    "not enrolled yet: ask for 'cytopipe reviewer add'.")
        elif signs_in and hmac.compare_digest(given.encode(), (password or "").encode()):
            sess.authed, sess.last_seen = True, time.monotonic()
            return RedirectResponse("/", status_code=303)
        else:
            note = "Wrong password."
        sess.failures += 1
        await asyncio.sleep(min(5.0, 0.5 * sess.failures))  # slows guessing
        return HTMLResponse(_login_page(sess.csrf, note, reviewer=registry is not None), status_code=403)

    async def static(request: Request, sess: Session) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            return PlainTextResponse("not found", 404)
        data = resources.files(__package__).joinpath("static", name).read_bytes()
        return Response(data, media_type=_STATIC[name])

    async def state(request: Request, sess: Session) -> Response:
        out = await run_in_threadpool(station.queue)
        out["reviewer"] = sess.reviewer
        out["signed"] = sess.signer is not None
        return _json(out)

    async def reviewer(request: Request, sess: Session) -> Response:
        if registry is not None:  # the name is the one signed in with, never typed again
            return _json({"error": f"You are signed in as {sess.reviewer!r}: decisions carry that name and "
                                   "signature. To review as someone else, sign out and sign in."}, 403)
        try:
            name = normalise_name(str((await body_of(request)).get("name", "")))
        except ReviewError as e:
            return _json({"error": f"{e} It is recorded with every decision."}, 400)
        if sess.reviewer and sess.reviewer != name:
            return _json({"error": f"This session's reviewer is {sess.reviewer!r}; the name cannot change in a "
                                   "session. Restart the station for another reviewer."}, 409)
        sess.reviewer = name
        return _json({"reviewer": name})

    async def logout(request: Request, sess: Session) -> Response:
        sess.authed, sess.signer, sess.reviewer = not signs_in, None, sess.reviewer if not signs_in else ""
        return _json({"signed_out": signs_in})

    async def sample(request: Request, sess: Session) -> Response:
        return _json(await run_in_threadpool(station.open, int(request.path_params["i"])))

    async def population(request: Request, sess: Session) -> Response:
        q = request.query_params
        kw = _plot_params(q)
        kind, data = await run_in_threadpool(lambda: station.population(
            int(request.path_params["i"]), q.get("gate", ""), q.get("cand") or None, **kw))
        if kind == "png":
            return Response(data, media_type="image/png")
        return _json(data)

    async def recount(request: Request, sess: Session) -> Response:
        body = await body_of(request)
        start = time.perf_counter()
        out = await run_in_threadpool(station.recount, int(request.path_params["i"]), str(body.get("version", "")),
                                      body.get("gates") or {})
        out["total_ms"] = round(1000 * (time.perf_counter() - start), 1)
        return _json(out)

    async def decision(request: Request, sess: Session) -> Response:
        body = await body_of(request)
        out = await run_in_threadpool(
            lambda: station.decide(int(request.path_params["i"]), str(body.get("version", "")),
                                   str(body.get("action", "")), reviewer=sess.reviewer,
                                   reason=str(body.get("reason", "") or ""), gates=body.get("gates") or {},
                                   signer=sess.signer))
        return _json(out)

    async def approve_unflagged(request: Request, sess: Session) -> Response:
        body = await body_of(request)
        versions = body.get("versions")
        if not isinstance(versions, dict) or not all(str(k).isdigit() for k in versions):
            return _json({"error": "Send the samples to approve as {\"versions\": {index: version}}."}, 400)
        out = await run_in_threadpool(
            lambda: station.approve_unflagged({int(k): str(v) for k, v in versions.items()}, reviewer=sess.reviewer,
                                              reason=str(body.get("reason", "") or ""), signer=sess.signer))
        return _json(out)

    async def batch(request: Request, sess: Session) -> Response:
        return _json(await run_in_threadpool(station.batch, request.query_params.get("gate", "")))

    async def thumb(request: Request, sess: Session) -> Response:
        tint = request.query_params.get("tint")
        if tint not in (None, "") and not tint.isdigit():
            return _json({"error": f"tint must be a whole number (a colour's index), got {tint!r}."}, 400)
        return _json(await run_in_threadpool(station.thumb, int(request.path_params["i"]),
                                             request.query_params.get("gate", ""),
                                             int(tint) if tint not in (None, "") else None))

    routes = [
        Route("/", index),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/favicon.ico", lambda request: Response(status_code=204)),  # none: the browser asks anyway
        Route("/static/{name}", guard(static)),
        Route("/api/state", guard(state)),
        Route("/api/reviewer", guard(reviewer, changes_state=True), methods=["POST"]),
        Route("/api/logout", guard(logout, changes_state=True), methods=["POST"]),
        Route("/api/sample/{i:int}", guard(sample)),
        Route("/api/sample/{i:int}/population", guard(population)),
        Route("/api/sample/{i:int}/recount", guard(recount, changes_state=True), methods=["POST"]),
        Route("/api/sample/{i:int}/decision", guard(decision, changes_state=True), methods=["POST"]),
        Route("/api/approve-unflagged", guard(approve_unflagged, changes_state=True), methods=["POST"]),
        Route("/api/batch", guard(batch)),
        Route("/api/thumb/{i:int}", guard(thumb)),
    ]
    hosts = allowed_hosts or ["127.0.0.1", "localhost"]
    return Starlette(routes=routes, middleware=[Middleware(_SecurityHeaders),
                                                Middleware(TrustedHostMiddleware, allowed_hosts=hosts)])
