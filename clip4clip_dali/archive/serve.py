"""A small web page to search an index: a search box, result cards, the clip playing in the page.

    python -m clip4clip_dali.serve --index INDEX_DIR [--port 8000] [--host 127.0.0.1]

Binds to 127.0.0.1 unless told otherwise. Only the files of the index are served, by their row
number (``/video/<row>``, ``/thumb/<row>``): no path ever comes from the request. A bad query
gets a message, never a traceback. Flask's own server, fine for one user on their machine.
"""
from __future__ import annotations

import os

# On a CPU, OpenMP threads that spin while idle starve the loader's decoding threads (measured:
# a demo step 10x slower). Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import ipaddress
import logging
import threading
from pathlib import Path

from ..errors import UserError, run_cli

log = logging.getLogger("clip4clip_dali")

MAX_QUERY_CHARS = 500
MAX_TOP_K = 100
# Browsers need the right type to play a file; Python's table lacks some containers.
VIDEO_TYPES = {".webm": "video/webm", ".mp4": "video/mp4", ".m4v": "video/mp4",
               ".mkv": "video/x-matroska", ".mov": "video/quicktime", ".ogv": "video/ogg",
               ".avi": "video/x-msvideo"}


def create_app(searcher):
    """The Flask app over a ``video_index.Searcher``."""
    from flask import Flask, abort, jsonify, render_template, request, send_file
    from werkzeug.exceptions import HTTPException

    index = searcher.index
    here = Path(__file__).parent / "web"
    app = Flask(__name__, template_folder=str(here / "templates"),
                static_folder=str(here / "static"))
    lock = threading.Lock()  # one query at a time through the model

    def bad(message: str, code: int = 400):
        return jsonify({"error": message}), code

    @app.get("/")
    def page():
        return render_template("index.html", videos=len(index), model=index.identity,
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
        for h in hits:
            rec = index.records[h["row"]]
            h.pop("path")  # the page gets rows, never file paths
            h["name"] = Path(rec.path).name
            h["thumb"] = f"/thumb/{h['row']}" if rec.thumb else None
            h["video"] = f"/video/{h['row']}"
        return jsonify({"query": q, "score": searcher.score_kind, "hits": hits})

    @app.get("/video/<int:row>")
    def video(row: int):
        path = index.video_file(row)
        if path is None or not path.is_file():
            abort(404)
        return send_file(path, mimetype=VIDEO_TYPES.get(path.suffix.lower()), conditional=True)

    @app.get("/thumb/<int:row>")
    def thumb(row: int):
        path = index.thumb_file(row)
        if path is None or not path.is_file():
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
    from .. import distributed as D
    from ..runsetup import setup_logging
    from .video_index import Searcher

    p = argparse.ArgumentParser(prog="python -m clip4clip_dali.serve",
                                description="Search an index in a web page.")
    p.add_argument("--index", required=True, help="index folder written by clip4clip_dali.index")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--checkpoint", help="the index's checkpoint, if it has moved since")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    args = p.parse_args(argv)
    setup_logging(D.DistInfo())
    searcher = Searcher.open(args.index, args.checkpoint, args.device)
    index = searcher.index
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        log.warning("binding %s: anyone who can reach this machine can search the index and "
                    "watch its videos", args.host)
    app = create_app(searcher)
    print(f"serving {len(index)} videos of {index.dir} at http://{args.host}:{args.port}/ "
          f"(Ctrl-C to stop)", flush=True)
    try:
        app.run(host=args.host, port=args.port, threaded=True, debug=False,
                use_reloader=False)
    except OSError as e:
        raise UserError(f"cannot serve on {args.host}:{args.port} ({e.strerror or e}); pick "
                        f"another --port.") from None
    return 0


if __name__ == "__main__":
    run_cli(main)
