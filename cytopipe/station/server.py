"""Start and stop the review station: bind, print the URL with its token, open the browser, serve.

The server is uvicorn, in this process: one run folder, one reviewer's
machine. It binds to 127.0.0.1 unless told otherwise, and refuses any other
address without a password (the traffic is plain HTTP: beyond this machine,
use it only on a network you trust, or behind an HTTPS proxy).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import threading
import time
import webbrowser
from collections.abc import Callable
from pathlib import Path

from ..exceptions import ReviewError

__all__ = ["DEFAULT_PORT", "StationServer", "check_host", "serve"]

DEFAULT_PORT = 8765


def check_host(host: str, password: str | None) -> None:
    """Refuse a non-loopback address without a password.

    Parameters
    ----------
    host
        The address to listen on.
    password
        The station's password, or anything true when every session signs
        in as an enrolled reviewer (a reviewer registry).

    Raises
    ------
    ReviewError
        ``host`` is reachable from other machines and no password is set.

    Examples
    --------
    >>> check_host("127.0.0.1", None)
    >>> check_host("0.0.0.0", None)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    cytopipe.exceptions.ReviewError: Refusing to serve on '0.0.0.0' without a password: ...
    """
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: other machines may reach it
        loopback = False
    if not loopback and not password:
        msg = (f"Refusing to serve on {host!r} without a password: other machines could reach the review "
               "station. Give a reviewer registry (--registry or CYTOPIPE_REVIEWERS) or --password (or set "
               "CYTOPIPE_REVIEW_PASSWORD), or keep the default --host 127.0.0.1.")
        raise ReviewError(msg)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        msg = (f"Cannot listen on {host}:{port} ({e.strerror or e}); another program may use the port: "
               "give another --port (0 picks a free one).")
        raise ReviewError(msg) from e
    sock.listen(64)
    return sock


class StationServer:
    """The station served by uvicorn on a bound socket; :meth:`run` in the foreground or :meth:`start` a thread.

    Parameters
    ----------
    run_dir
        The output folder of ``cytopipe run``.
    host, port
        Where to listen (port 0: a free port).
    password
        Needed for a ``host`` other machines can reach.
    token
        The URL's secret (default: a fresh random one), good for one use.
    registry
        The lab's reviewer registry (a path): each session signs in as an
        enrolled reviewer and every decision is signed.
    idle_timeout
        Seconds without a request after which a sign-in expires (default 15 minutes).
    """

    def __init__(self, run_dir: str | os.PathLike, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 password: str | None = None, token: str | None = None,
                 registry: str | os.PathLike | None = None, idle_timeout: float | None = None):
        import uvicorn

        from ..review.reviewers import ReviewerRegistry
        from .app import IDLE_TIMEOUT, create_app
        from .state import Station

        reviewers = ReviewerRegistry(registry) if registry else None
        if reviewers is not None and not reviewers.reviewers():
            msg = (f"No reviewer is enrolled in {reviewers.path}: nobody could sign in. Enrol one first: "
                   "'cytopipe reviewer add NAME'.")
            raise ReviewError(msg)
        check_host(host, password or ("registry" if reviewers is not None else None))
        self.station = Station(Path(run_dir))
        self.token = token or secrets.token_urlsafe(24)
        hosts = ["127.0.0.1", "localhost"] + ([host] if host not in ("127.0.0.1", "localhost") else [])
        if ":" in host:  # an IPv6 address: the browser's Host header names it in brackets ("[::1]:8765")
            hosts.append(f"[{host}]")
        if host in ("0.0.0.0", "::"):
            hosts = ["*"]  # any name this machine answers to; the password guards the door
        self.app = create_app(self.station, token=self.token, password=password, allowed_hosts=hosts,
                              registry=reviewers, idle_timeout=idle_timeout or IDLE_TIMEOUT)
        self.sock = _bind(host, port)
        self.port = self.sock.getsockname()[1]
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else (f"[{host}]" if ":" in host else host)
        self.url = f"http://{shown}:{self.port}/?token={self.token}"
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        """Serve until Ctrl-C (or SIGTERM), then finish pending report pages and close."""
        try:
            self.server.run(sockets=[self.sock])
        except KeyboardInterrupt:  # uvicorn shut down gracefully, then re-raised the signal
            pass
        finally:
            self.close()

    def start(self, timeout: float = 30.0) -> StationServer:
        """Serve in a background thread (tests, benchmarks); returns once it accepts requests."""
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                        name="cytopipe-station")
        self._thread.start()
        end = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > end or not self._thread.is_alive():
                msg = f"The review station did not start on port {self.port}."
                raise ReviewError(msg)
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop the background thread's server and close."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self.close()

    def close(self) -> None:
        """Write the report pages still pending; release the socket."""
        self.station.close()
        self.sock.close()


def serve(run_dir: str | os.PathLike, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          open_browser: bool = True, password: str | None = None,
          echo: Callable[[str], None] = print, registry: str | os.PathLike | None = None) -> None:
    """Serve the review station for one run folder until Ctrl-C.

    Parameters
    ----------
    run_dir
        The output folder of ``cytopipe run``.
    host
        Address to listen on; anything but loopback needs ``password``.
    port
        Port (0: a free one).
    open_browser
        Open the URL in the default browser.
    password
        Asked once per browser session.
    echo
        Where the one line with the URL goes.
    registry
        The lab's reviewer registry: sessions sign in as enrolled reviewers
        and decisions are signed.

    Raises
    ------
    ReviewError
        Not a run folder; a non-loopback host without a password; the port is taken.
    """
    srv = StationServer(run_dir, host=host, port=port, password=password, registry=registry)
    echo(f"review station for {Path(run_dir)}: {srv.url}  (Ctrl-C stops it)")
    if open_browser:
        threading.Timer(0.3, webbrowser.open, args=(srv.url,)).start()
    srv.run()
    echo("review station stopped")
