"""A small web page to search an index: a search box, result cards, the clip playing in the page.

    python -m clip4clip_dali.serve --index INDEX_DIR [--port 8000] [--host 127.0.0.1]

Binds to 127.0.0.1 unless told otherwise, on waitress (a production WSGI server). Only the
files of the index are served, by their record id (``/video/<rid>``, ``/thumb/<rid>``): no path
ever comes from the request, a clip is served only while it is the file that was indexed (its
real path inside the collection, same size and time), and requests naming another host than the
one served are refused (DNS rebinding). A bad query gets a message, never a traceback.
"""
from __future__ import annotations

import os

# On a CPU, OpenMP threads that spin while idle starve the loader's decoding threads (measured:
# a demo step 10x slower). Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import ipaddress
import logging
import socket
import threading
from pathlib import Path

from ..errors import UserError, run_cli

log = logging.getLogger("clip4clip_dali")

MAX_QUERY_CHARS = 500
MAX_TOP_K = 100
# Browsers need the right type to play a file; Python's table lacks some containers.
# The page loads only its own script, style sheet, thumbnails and clips.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; media-src 'self'; connect-src 'self'; "
                               "object-src 'none'; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
VIDEO_TYPES = {".webm": "video/webm", ".mp4": "video/mp4", ".m4v": "video/mp4",
               ".mkv": "video/x-matroska", ".mov": "video/quicktime", ".ogv": "video/ogg",
               ".avi": "video/x-msvideo"}


def allowed_hosts(host: str, port: int) -> set[str]:
    """``Host`` headers a request may carry: the address served (and, for a loopback or
    wildcard bind, the machine's usual names for it), with and without the port."""
    names = {host}
    if host in ("127.0.0.1", "::1", "localhost"):
        names |= {"127.0.0.1", "localhost", "[::1]"}
    elif host in ("0.0.0.0", "::"):
        names |= {"127.0.0.1", "localhost", "[::1]", socket.gethostname(), socket.getfqdn()}
        try:
            names |= {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None)}
        except OSError:
            pass
    names = {f"[{n}]" if ":" in n and not n.startswith("[") else n for n in names}
    return {n.lower() for n in names} | {f"{n.lower()}:{port}" for n in names}


def create_app(searcher, hosts: set[str] | None = None):
    """The Flask app over a ``searcher.Searcher``; ``hosts``: the ``Host`` headers accepted
    (None: any, for tests that call the app directly)."""
    from flask import Flask, abort, jsonify, render_template, request, send_file
    from werkzeug.exceptions import HTTPException

    index = searcher.index
    here = Path(__file__).parent / "web"
    app = Flask(__name__, template_folder=str(here / "templates"),
                static_folder=str(here / "static"))
    lock = threading.Lock()  # one query at a time through the model

    def bad(message: str, code: int = 400):
        return jsonify({"error": message}), code

    @app.before_request
    def check_host():
        if hosts is not None and request.host.lower() not in hosts:
            return bad(f"this server answers for {sorted(hosts)[0]}, not for "
                       f"{request.host[:100]!r}.", 421)
        return None

    @app.after_request
    def harden(response):
        response.headers.update(HEADERS)
        response.headers.pop("Server", None)
        return response

    @app.get("/")
    def page():
        return render_template("index.html", videos=index.num_videos, windowing=index.windowing,
                               model=index.identity,
                               score_kind=searcher.score_kind, max_chars=MAX_QUERY_CHARS)

    @app.get("/api/search")
    def api_search():
        q = request.args.get("q", "")
        k = request.args.get("k", "12")
        if not q.strip():
            return bad("Type a few words to search for, e.g. \"a red circle moves to the left\".")
        if len(q) > MAX_QUERY_CHARS:
            return bad(f"The query is {len(q)} characters long; keep it under {MAX_QUERY_CHARS}.")
        try:
            top_k = int(k)
        except ValueError:
            return bad(f"k must be a whole number of results, got {k!r}.")
        if not 1 <= top_k <= MAX_TOP_K:
            return bad(f"k must be between 1 and {MAX_TOP_K}, got {top_k}.")
        try:
            with lock:
                hits = searcher.search([q], top_k)[0]
        except UserError as e:
            return bad(str(e))
        records = {r.rid: r for r in index.store.records([h["rid"] for h in hits])}
        for h in hits:
            rec = records[h["rid"]]
            h.pop("path")  # the page gets record ids, never file paths
            h["name"] = Path(rec.path).name
            h["thumb"] = f"/thumb/{h['rid']}" if rec.thumb else None
            h["video"] = f"/video/{h['rid']}"
        return jsonify({"query": q, "score": searcher.score_kind, "hits": hits})

    @app.get("/video/<int:rid>")
    def video(rid: int):
        from .media import member_video

        served = member_video(index, rid, request)  # a clip inside a tar shard (or None)
        if served is not None:
            return served
        path = index.video_file(rid)
        if path is None:
            abort(404)
        return send_file(path, mimetype=VIDEO_TYPES.get(path.suffix.lower()), conditional=True)

    @app.get("/thumb/<int:rid>")
    def thumb(rid: int):
        path = index.thumb_file(rid)
        if path is None:
            abort(404)
        return send_file(path, mimetype="image/jpeg", max_age=3600)

    @app.errorhandler(HTTPException)
    def http_error(e):
        return bad(f"{e.code} {e.name}: {e.description}", e.code)

    @app.errorhandler(Exception)
    def crash(e):  # logged here in full; the page gets one line
        log.exception("error while serving %s", request.path)
        return bad(f"internal error ({type(e).__name__}); see the server's log.", 500)

    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clip4clip_dali.serve",
                                description="Search an index in a web page.")
    p.add_argument("--index", required=True, help="index folder written by clip4clip_dali.index")
    p.add_argument("--port", type=int, default=8000, help="port, 1-65535 (default 8000)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--threads", type=int, default=8, help="server threads (default 8)")
    p.add_argument("--checkpoint", help="the index's checkpoint, if it has moved since")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--exact", action="store_true",
                   help="score every video, not the index's approximate search")
    args = p.parse_args(argv)
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port {args.port} is not a port; pass one from 1 to 65535 (above "
                        f"1023 without root), e.g. --port 8000.")
    if not 1 <= args.threads <= 256:
        raise UserError(f"--threads must be from 1 to 256, got {args.threads}.")
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        if args.host != "localhost":
            raise UserError(f"--host {args.host} is not an IP address of this machine; pass "
                            f"127.0.0.1 (this machine only), 0.0.0.0 (every interface) or one "
                            f"of its addresses.") from None
        loopback = True
    from .. import distributed as D
    from ..runsetup import setup_logging
    from .search import check_device
    from .searcher import Searcher

    setup_logging(D.DistInfo())
    try:  # the port before the model: a taken port fails in a second, not after loading
        probe = socket.create_server((args.host, args.port))
        probe.close()
    except OSError as e:
        raise UserError(f"cannot serve on {args.host}:{args.port} ({e.strerror or e}); pick "
                        f"another --port.") from None
    searcher = Searcher.open(args.index, args.checkpoint, check_device(args.device),
                             exact=args.exact)
    index = searcher.index
    if not loopback:
        log.warning("binding %s: anyone who can reach this machine can search the index and "
                    "watch its videos", args.host)
    app = create_app(searcher, allowed_hosts(args.host, args.port))
    from waitress import create_server

    server = create_server(app, host=args.host, port=args.port, threads=args.threads,
                           ident="", clear_untrusted_proxy_headers=True)
    print(f"serving {index.num_videos} videos of {index.dir} at http://{args.host}:{args.port}/ "
          f"({searcher.method} search; Ctrl-C to stop)", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    run_cli(main)
