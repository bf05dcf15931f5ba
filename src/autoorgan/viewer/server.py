"""The viewer's HTTP server: an output folder on 127.0.0.1, under a random token, read-only.

Every URL is ``/<token>/<path>``; the token (random, new for each server) keeps other users of a
shared machine, who can reach 127.0.0.1 too, and web pages that guess ports, away from the folder.
Requests whose ``Host`` is not the server's own address are refused (DNS rebinding). What a path
may name:

* ``""`` — ``index.html`` if the folder has one, else a list of its cases;
* ``.view/<case>`` — the case's viewer page (:mod:`autoorgan.viewer.page`);
* ``.input/<case>/<name>`` — the CT of a case, only the file its sidecar and run record name
  (:meth:`autoorgan.viewer.site.OutputSite.case`);
* ``.niivue/niivue.umd.js`` and ``.niivue/LICENSE.txt`` — the vendored NiiVue bundle and its licence;
* any other path — a regular file inside the output folder (no hidden names, no ``..``, no link
  leading out).

Everything else, and every method but GET and HEAD, is refused. Nothing is ever written.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from autoorgan.errors import InputError, OutputError
from autoorgan.report.html import VIEWER_PREFIX
from autoorgan.viewer import NIIVUE_BUNDLE, NIIVUE_LICENSE
from autoorgan.viewer.page import INPUT_PREFIX, render_case_list, render_case_page
from autoorgan.viewer.site import OutputSite

log = logging.getLogger(__name__)

#: The only address the server binds.
HOST = "127.0.0.1"

_TYPES = {".html": "text/html; charset=utf-8", ".png": "image/png", ".json": "application/json",
          ".csv": "text/csv; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".txt": "text/plain; charset=utf-8"}
_STATIC = {"niivue.umd.js": NIIVUE_BUNDLE, "LICENSE.txt": NIIVUE_LICENSE}


def _content_type(path: Path) -> str:
    # Image files (.nii.gz and the like) go as plain bytes: never "Content-Encoding: gzip", which
    # would make the browser unpack a .nii.gz before NiiVue sees it.
    return _TYPES.get(path.suffix.lower(), "application/octet-stream")


@dataclass
class Response:
    """What a request gets: a file, or generated text, or an error status."""

    status: HTTPStatus
    file: Path | None = None
    text: str | None = None
    content_type: str = "text/plain; charset=utf-8"


class ViewerApp:
    """Maps a request path to a response; no sockets here, so it is tested directly."""

    def __init__(self, folder: Path, token: str) -> None:
        self.site = OutputSite(folder)
        self.token = token

    def respond(self, raw_path: str) -> Response:
        """The response to the request target ``raw_path`` (path and query as sent)."""
        path = urlsplit(raw_path).path
        prefix = f"/{self.token}/"
        if not path.startswith(prefix):
            if path == f"/{self.token}":
                return Response(HTTPStatus.MOVED_PERMANENTLY, text=prefix)
            return Response(HTTPStatus.NOT_FOUND, text="not found")
        rest = path[len(prefix):]
        if "\\" in rest or "\x00" in unquote(rest):
            return Response(HTTPStatus.NOT_FOUND, text="not found")
        parts = [unquote(p) for p in rest.split("/")] if rest else []
        if not parts:
            return self._root()
        head = parts[0] + "/"
        if head == VIEWER_PREFIX and len(parts) == 2:
            return self._case_page(parts[1])
        if head == INPUT_PREFIX and len(parts) == 3:
            return self._input(parts[1], parts[2])
        if head == ".niivue/" and len(parts) == 2 and parts[1] in _STATIC:
            return Response(HTTPStatus.OK, file=_STATIC[parts[1]], content_type=_content_type(_STATIC[parts[1]]))
        found = self.site.output_file(parts)
        if found is None:
            return Response(HTTPStatus.NOT_FOUND, text="not found")
        return Response(HTTPStatus.OK, file=found, content_type=_content_type(found))

    def _root(self) -> Response:
        index = self.site.output_file(["index.html"])
        if index is not None:
            return Response(HTTPStatus.OK, file=index, content_type=_TYPES[".html"])
        text = render_case_list(self.site.case_ids(), title=f"autoorgan · {self.site.folder.name}")
        return Response(HTTPStatus.OK, text=text, content_type=_TYPES[".html"])

    def _case_page(self, case_id: str) -> Response:
        view = self.site.case(case_id)
        if view is None:
            return Response(HTTPStatus.NOT_FOUND, text="not found: no viewable label map for this case")
        page = render_case_page(view, has_index=self.site.output_file(["index.html"]) is not None)
        return Response(HTTPStatus.OK, text=page, content_type=_TYPES[".html"])

    def _input(self, case_id: str, name: str) -> Response:
        view = self.site.case(case_id)
        if view is None or view.ct is None or view.ct.name != name:
            return Response(HTTPStatus.NOT_FOUND, text="not found")
        return Response(HTTPStatus.OK, file=view.ct, content_type=_content_type(view.ct))


class _Handler(BaseHTTPRequestHandler):
    server: _ViewerServer
    server_version = "autoorgan-view"
    sys_version = ""

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        if self.headers.get("Host") not in self.server.hosts:
            self._send(Response(HTTPStatus.FORBIDDEN, text="forbidden"), body)
            return
        try:
            response = self.server.app.respond(self.path)
        except OSError as exc:  # a file that vanished or cannot be read
            response = Response(HTTPStatus.NOT_FOUND, text=f"cannot read: {exc.strerror or exc}")
        self._send(response, body)

    def _send(self, response: Response, body: bool) -> None:
        handle, size = None, 0
        if response.file is not None:
            try:
                handle = response.file.open("rb")
                size = os.fstat(handle.fileno()).st_size
            except OSError:
                response = Response(HTTPStatus.NOT_FOUND, text="not found")
        data = b"" if handle is not None else (response.text or "").encode("utf-8")
        try:
            self.send_response(response.status)
            if response.status == HTTPStatus.MOVED_PERMANENTLY:
                self.send_header("Location", response.text or "/")
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(size if handle is not None else len(data)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.end_headers()
            if body and handle is not None:
                shutil.copyfileobj(handle, self.wfile)
            elif body:
                self.wfile.write(data)
        finally:
            if handle is not None:
                handle.close()

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class _ViewerServer(ThreadingHTTPServer):
    daemon_threads = True
    app: ViewerApp
    hosts: frozenset[str]


@dataclass
class ViewerServer:
    """A running viewer server (see :func:`start`); ``url`` is the folder's address with its token."""

    httpd: _ViewerServer
    thread: threading.Thread | None
    url: str

    def case_url(self, case_id: str) -> str:
        from autoorgan.report.html import viewer_href

        return self.url + viewer_href(case_id)

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.thread is not None:
            self.thread.join(timeout=5)


def start(folder: Path, port: int = 0, *, background: bool = True,
          token_factory: Callable[[], str] = lambda: secrets.token_urlsafe(16)) -> ViewerServer:
    """Serve the output ``folder`` on 127.0.0.1 at ``port`` (0: a free port).

    With ``background`` the server runs in a daemon thread and this returns at once; otherwise call
    :meth:`ViewerServer.serve_forever`. :class:`InputError` if ``folder`` is not a folder,
    :class:`OutputError` if the port cannot be bound.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder (give the output folder of autoorgan predict)")
    token = token_factory()
    try:
        httpd = _ViewerServer((HOST, port), _Handler)
    except OSError as exc:
        raise OutputError(f"cannot serve on {HOST}:{port}: {exc.strerror or exc}") from None
    bound = httpd.server_address[1]
    httpd.app = ViewerApp(folder, token)
    httpd.hosts = frozenset({f"{HOST}:{bound}", f"localhost:{bound}"})
    thread = None
    if background:
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="autoorgan-view",
                                  daemon=True)
        thread.start()
    return ViewerServer(httpd=httpd, thread=thread, url=f"http://{HOST}:{bound}/{token}/")
