"""The search page served by ``clip4clip_dali.serve``, driven in a real headless Chromium."""
from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import env, free_port, run_main

pytest.register_assert_rewrite("search_fixtures")
from search_fixtures import REPO, chromium_driver  # noqa: E402

pytest_plugins = ["search_fixtures"]


@pytest.fixture(scope="module")
def server(folder_index):
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "clip4clip_dali.serve", "--index",
                          str(folder_index), "--port", str(port)], cwd=REPO, env=env(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=5).read()
                break
            except OSError:
                if p.poll() is not None or time.time() > deadline:
                    p.kill()
                    pytest.fail(f"serve did not start:\n{p.communicate()[0][-3000:]}")
                time.sleep(0.3)
        yield url, port, p
    finally:
        p.terminate()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def raw_get(port: int, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (no client-side normalisation of ``..``)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def listening_addresses(port: int) -> set[str]:
    """Local addresses in LISTEN state on ``port`` (Linux /proc/net/tcp{,6})."""
    found = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:
                found.add(addr)
    return found


def test_files_only_from_the_collection_and_clear_errors(server, folder_index):
    from clip4clip_dali.archive.video_index import VideoIndex

    url, port, _ = server
    if Path("/proc/net/tcp").exists():
        assert listening_addresses(port) == {"0100007F"}, "serve must bind 127.0.0.1 only"
    index = VideoIndex(folder_index)
    first = index.records[0].rid
    status, body = raw_get(port, f"/video/{first}")
    assert status == 200 and body == (index.root / index.records[0].path).read_bytes()
    status, body = raw_get(port, f"/video/{first}", {"Range": "bytes=0-99"})
    assert status == 206 and len(body) == 100
    status, body = raw_get(port, f"/thumb/{first}")
    assert status == 200 and body[:2] == b"\xff\xd8"  # a JPEG
    secret = folder_index.parent / "secret.txt"
    secret.write_text("root:x:0:0 do not serve me")
    for path in ("/video/../../../../etc/passwd", "/video/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
                 "/video/..%2fsecret.txt", "/thumb/../index.json", "/thumb/..%2f..%2fsecret.txt",
                 "/static/../serve.py", "/static/%2e%2e/serve.py", "/static/..%2f..%2fsecret.txt",
                 "/../../../../etc/passwd", "/video/0", "/video/9999", "/video/-1", "/video/99999999999",
                 f"/video/{folder_index.parent}/secret.txt", "/secret.txt"):
        status, body = raw_get(port, path)
        assert status in (400, 404), (path, status)
        assert b"root:" not in body and b"do not serve" not in body and b"import" not in body
    for query, message in (("q=", b"Type a few words"), ("q=%20%20", b"Type a few words"),
                           ("q=red&k=abc", b"whole number"), ("q=red&k=0", b"between 1 and"),
                           ("q=" + "a" * 600, b"keep it under")):
        status, body = raw_get(port, "/api/search?" + query)
        assert status == 400 and message in body and b"Traceback" not in body, (query, body)


def test_search_page_in_headless_chromium(server, folder_index, tmp_path):
    driver = chromium_driver(tmp_path)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, _, _ = server
    try:
        driver.get(url + "/")
        assert "12 videos" in driver.find_element(By.CLASS_NAME, "about").text
        box = driver.find_element(By.ID, "q")
        box.send_keys("a red circle moves to the left", Keys.ENTER)
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .card"))
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#results img.thumb')]"
            ".every(i => i.complete && i.naturalWidth > 0)"))
        cards = driver.find_elements(By.CSS_SELECTOR, "#results .card")
        assert len(cards) == 12
        thumbs = driver.execute_script(
            "return [...document.querySelectorAll('#results .card img.thumb')]"
            ".map(i => [i.naturalWidth, i.naturalHeight])")
        assert len(thumbs) == 12 and all(w > 16 and h > 16 for w, h in thumbs)
        scores = [float(c.find_element(By.CLASS_NAME, "score").text) for c in cards]
        assert scores == sorted(scores, reverse=True)
        from clip4clip_dali.archive.video_index import VideoIndex

        ids = {r.id for r in VideoIndex(folder_index).records}
        assert all(c.find_element(By.CLASS_NAME, "id").text in ids for c in cards)
        assert "best matches" in driver.find_element(By.ID, "status").text
        cards[0].click()  # the clip plays in the page
        wait.until(lambda d: d.execute_script(
            "const v = document.getElementById('clip');"
            "return v.readyState >= 2 && v.currentTime > 0 && v.videoWidth > 0"))
        src = driver.execute_script("return document.getElementById('clip').src")
        assert src.endswith(f"/video/{cards[0].get_attribute('data-rid')}")
        driver.save_screenshot(str(tmp_path / "search_page.png"))
        if os.environ.get("CLIP4CLIP_SCREENSHOT"):
            shutil.copy(tmp_path / "search_page.png", os.environ["CLIP4CLIP_SCREENSHOT"])
        # an empty query gets a message on the page, not a stack trace
        box.clear()
        box.send_keys(" ", Keys.ENTER)
        wait.until(lambda d: "error" in d.find_element(By.ID, "status").get_attribute("class"))
        status = driver.find_element(By.ID, "status").text
        assert "Type a few words" in status and "Traceback" not in driver.page_source
    finally:
        driver.quit()


def test_only_the_served_host_and_hardening_headers(server):
    _, port, _ = server
    for host in ("evil.example", "evil.example:%d" % port, "127.0.0.2:%d" % port):
        status, body = raw_get(port, "/", {"Host": host})
        assert status == 421 and b"answers for" in body, host
        status, _ = raw_get(port, "/api/search?q=red", {"Host": host})
        assert status == 421
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/", headers={"Host": host})
        r = conn.getresponse()
        r.read()
        conn.close()
        assert r.status == 200, host
        csp = r.getheader("Content-Security-Policy")
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert r.getheader("X-Content-Type-Options") == "nosniff"
        assert r.getheader("X-Frame-Options") == "DENY"
        assert r.getheader("Referrer-Policy") == "no-referrer"
        server_header = (r.getheader("Server") or "").lower()
        assert "python" not in server_header and "waitress" not in server_header
        assert "werkzeug" not in server_header


def test_a_replaced_clip_is_never_served(clips, tmp_path):
    """A clip replaced after indexing (by a symlink to a secret, or by other bytes) is refused;
    the collection's own clips are served while they are what was indexed."""
    from types import SimpleNamespace

    from search_fixtures import save_untrained

    from clip4clip_dali.archive.indexer import build_index, folder_candidates
    from clip4clip_dali.archive.serve import create_app
    from clip4clip_dali.archive.video_index import VideoIndex
    from clip4clip_dali.runsetup import checkpoint_config

    videos = tmp_path / "videos"
    videos.mkdir()
    for f in sorted((clips / "videos").glob("*.webm"))[:3]:
        shutil.copy(f, videos / f.name)
    ckpt = save_untrained(tmp_path / "m.pt")
    root, cands = folder_candidates(videos)
    build_index(tmp_path / "index", ckpt, checkpoint_config(ckpt), root, cands,
                show_progress=False)
    index = VideoIndex(tmp_path / "index")
    app = create_app(SimpleNamespace(index=index, score_kind="cosine"), {"localhost"})
    client = app.test_client()
    a, b, c = index.records
    assert client.get(f"/video/{a.rid}").status_code == 200
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0 do not serve me")
    (root / a.path).unlink()
    os.symlink(secret, root / a.path)          # a link out of the collection
    r = client.get(f"/video/{a.rid}")
    assert r.status_code == 404 and b"root:" not in r.data
    (root / b.path).write_bytes(b"other bytes")  # same path, other content
    assert client.get(f"/video/{b.rid}").status_code == 404
    assert client.get(f"/video/{c.rid}", headers={"Host": "evil"}).status_code == 421
    assert client.get(f"/video/{c.rid}").status_code == 200


def test_bad_arguments_are_one_line(tmp_path, capsys):
    from clip4clip_dali.serve import main

    for args, message in ((["--port", "99999"], "--port 99999 is not a port"),
                          (["--port", "0"], "--port 0 is not a port"),
                          (["--host", "not an address"], "--host not an address"),
                          (["--threads", "0"], "--threads")):
        assert run_main(main, "--index", str(tmp_path), *args) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err)
        assert len(err.strip().splitlines()) == 1, (args, err)
