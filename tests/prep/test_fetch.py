"""fetch against a loopback HTTP server: range downloads, every failure class, retries and resume."""

import http.server
import re
import threading
import time
from collections import Counter

import numpy as np
import pytest

from tests.fixtures.av_corpus import make_media
from uniform_cli.media.prepare import prepare_media
from uniform_cli.prep import fetch as F
from uniform_cli.prep.download import download_range
from uniform_cli.prep.manifest import ManifestItem
from uniform_cli.prep.retry import PERMANENT, RateLimiter
from uniform_cli.stage import read_status

FLASH = 7.0  # seconds into the served video


class Server:
    """127.0.0.1 server for one video with Range support and per-path misbehaviour.

    /ok/*: always fine; /missing/*: 404; /forbidden/*: 403; /busy/*: 429 + Retry-After: 1 once, then fine;
    /flaky/*: 500 once, then fine; /down/*: always 503; /cut/*: the first ranged download is cut mid-file;
    /trickle/*: the headers, then a byte every 0.1 s (for at most 20 s); /stall/*: the headers, then nothing
    (for at most 20 s); /page/*: an HTML page with three <video> tags (of /ok/).
    """

    def __init__(self, video: bytes):
        self.video = video
        self.hits: Counter = Counter()
        self.log: list[tuple[float, str]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.handle(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def handle(self, h):
        kind = h.path.split("/")[1]
        self.hits[kind] += 1
        self.log.append((time.monotonic(), h.path))
        first = self.hits[kind] == 1
        if kind == "missing":
            return h.send_error(404)
        if kind == "page":  # a web page with several videos
            html = "".join(f'<video src="/ok/v{i}.mp4"></video>' for i in range(3)).encode()
            h.send_response(200)
            h.send_header("Content-Type", "text/html")
            h.send_header("Content-Length", str(len(html)))
            h.end_headers()
            return h.wfile.write(html)
        if kind == "forbidden":
            return h.send_error(403)
        if kind == "down" or (kind == "flaky" and first):
            return h.send_error(503 if kind == "down" else 500)
        if kind == "busy" and first:
            h.send_response(429)
            h.send_header("Retry-After", "1")
            h.send_header("Content-Length", "0")
            return h.end_headers()
        data, start = self.video, 0
        end = len(data) - 1
        ranged = h.headers.get("Range")
        if ranged:
            m = re.match(r"bytes=(\d+)-(\d*)", ranged)
            start, end = int(m[1]), int(m[2]) if m[2] else end
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            h.send_response(200)
        h.send_header("Content-Type", "video/mp4")
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(end - start + 1))
        h.end_headers()
        body = data[start : end + 1]
        if kind in ("trickle", "stall"):
            until = time.monotonic() + 20  # bounded: the test's deadline is far shorter
            for byte in body[: 200 if kind == "trickle" else 0]:
                if time.monotonic() > until:
                    break
                try:
                    h.wfile.write(bytes([byte]))
                    h.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return
                time.sleep(0.1)
            while kind == "stall" and time.monotonic() < until:
                time.sleep(0.1)
            h.close_connection = True
            return
        if kind == "cut" and ranged and self.hits["cut-ranged"] == 0:
            self.hits["cut-ranged"] += 1
            body = body[: len(body) // 3]  # then the connection closes: a cut download
        try:
            h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        if kind == "cut" and len(body) < end - start + 1:
            h.close_connection = True

    def close(self):
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = make_media(tmp_path_factory.mktemp("src") / "source.mp4", seconds=12.0, fps=24, gop=12,
                      flash_at=FLASH, click_at=FLASH, sample_rate=16000)
    srv = Server(path.read_bytes())
    yield srv
    srv.close()


def item(server, kind, key=None, start=5.0):
    return ManifestItem(key or kind, f"{server.base}/{kind}/video.mp4", start, None)


def options(root, **kw):
    return F.FetchOptions(**{"root": str(root), "seconds": 4.0, "margin": 1.0, "retries": 2, "backoff": 0.05, **kw})


def test_range_download_lands_where_clip_expects_it(server, tmp_path):
    result = F.fetch_item(item(server, "ok", start=5.0), options(tmp_path), RateLimiter(None))
    assert result.status == "ok", result.error
    assert result.fields["path"] == "raw/ok.mp4" and result.fields["offset"] == 4.0
    raw = tmp_path / "raw" / "ok.mp4"
    assert raw.stat().st_size < len(server.video)  # only the range, not the whole file
    # The flash (source 7.0 s) is 2.0 s into the clip that starts at source 5.0 = file 5.0 - offset.
    clip = prepare_media(raw, start=5.0 - result.fields["offset"])
    flash = np.argmax(clip.video.mean(axis=(1, 2, 3))) / 17
    click = np.argmax(np.abs(clip.audio)) / 16000
    assert abs(flash - 2.0) <= 1 / 17 and abs(click - 2.0) <= 1 / 17
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["ok.mp4"]  # no temp files left


@pytest.mark.parametrize("kind, status", [("missing", "unavailable"), ("forbidden", "forbidden")])
def test_permanent_failures_are_not_retried(server, tmp_path, kind, status):
    before = server.hits[kind]
    result = F.fetch_item(item(server, kind), options(tmp_path), RateLimiter(None))
    assert result.status == status and result.fields["attempts"] == 1
    assert server.hits[kind] == before + 1
    assert status in PERMANENT


def test_429_waits_for_retry_after_then_succeeds(server, tmp_path):
    t0 = time.monotonic()
    result = F.fetch_item(item(server, "busy"), options(tmp_path), RateLimiter(None))
    assert result.status == "ok" and result.fields["attempts"] == 2
    times = [t for t, p in server.log if p.startswith("/busy/")]
    assert times[1] - times[0] >= 1.0  # Retry-After: 1 honoured although the backoff is 0.05 s
    assert time.monotonic() - t0 >= 1.0


def test_500_then_200_and_cut_connection_are_retried(server, tmp_path):
    flaky = F.fetch_item(item(server, "flaky"), options(tmp_path), RateLimiter(None))
    assert flaky.status == "ok" and flaky.fields["attempts"] == 2
    cut = F.fetch_item(item(server, "cut"), options(tmp_path), RateLimiter(None))
    assert cut.status == "ok" and cut.fields["attempts"] >= 2, cut.error
    clip = prepare_media(tmp_path / "raw" / "cut.mp4", start=1.0)
    assert clip.video.shape == (68, 256, 256, 3)


def test_run_records_statuses_and_a_rerun_resumes(server, tmp_path):
    local = make_media(tmp_path / "mine.mp4", seconds=5.0)
    items = [
        item(server, "ok", "good"),
        item(server, "missing", "gone"),
        item(server, "down", "down"),
        ManifestItem("-local", str(local), 0.0, None),
    ]
    result = F.run_fetch(items, tmp_path, options(tmp_path, ), workers=3, rate_limit=50.0)
    assert result.counts == Counter({"ok": 1, "unavailable": 1, "server_error": 1, "local": 1}) and result.skipped == 0
    assert result.table == tmp_path / "fetch.csv" and result.outputs == tmp_path / "raw"
    rows = read_status(tmp_path, "fetch")
    assert rows["-local"]["path"] == str(local)  # used in place, never downloaded
    assert rows["down"]["error"].startswith("HTTP Error 503") or "503" in rows["down"]["error"]
    assert not (tmp_path / "raw" / "-local.mp4").exists()
    hits = Counter(server.hits)
    again = F.run_fetch(items, tmp_path, options(tmp_path), workers=2, rate_limit=50.0)
    assert again.counts == Counter({"server_error": 1}) and again.skipped == 3  # only the transient failure again
    assert server.hits["missing"] == hits["missing"] and server.hits["ok"] == hits["ok"]
    (tmp_path / "raw" / "good.mp4").unlink()  # a done item whose file went missing is fetched again
    assert F.run_fetch(items[:1], tmp_path, options(tmp_path), rate_limit=50.0).counts == Counter({"ok": 1})


def test_only_http_reaches_yt_dlp_and_keys_stay_under_root(tmp_path):
    with pytest.raises(Exception, match="http"):
        download_range(ManifestItem("k", "/etc/passwd", 0.0, None), tmp_path / "raw" / "k.mp4", (0.0, 4.0))
    with pytest.raises(Exception, match="outside"):
        F.raw_path(tmp_path, "../evil")
    assert F.raw_path(tmp_path, "-abc_000030").name == "-abc_000030.mp4"


def test_cli_records_local_files_without_downloading(tmp_path):
    from typer.testing import CliRunner

    from uniform_cli.cli.main import app

    make_media(tmp_path / "a.mp4", seconds=4.5)
    manifest = tmp_path / "mine.csv"
    manifest.write_text("id,url,start,end,label,split\n-a,a.mp4,0,,dog,train\n")
    result = CliRunner().invoke(app, ["fetch", str(manifest), "--root", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    assert read_status(tmp_path / "data", "fetch")["-a"]["status"] == "local"
    result = CliRunner().invoke(app, ["fetch", str(manifest), "--root", str(tmp_path / "data")])
    assert "skipped" in result.output  # done before


def test_cli_records_each_bad_manifest_row_and_fetches_the_rest(tmp_path):
    from typer.testing import CliRunner

    from uniform_cli.cli.main import app

    make_media(tmp_path / "a.mp4", seconds=4.5)
    manifest = tmp_path / "mine.csv"
    manifest.write_bytes(
        "\ufeffid,url,start,end,label,split\n"  # a BOM, as spreadsheets write
        "-a,a.mp4,0,,dog,train\n"
        "\n"
        "b/c,a.mp4,0,,,\n"
        f"{'x' * 300},a.mp4,0,,,\n"
        "d,javascript:alert(1),0,,,\n"
        "e,a.mp4,nan,,,\n"
        "f,a.mp4,1e300,,,\n"
        "-a,a.mp4,0,,dog,train\n".encode()
    )
    result = CliRunner().invoke(app, ["fetch", str(manifest), "--root", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    rows = read_status(tmp_path / "data", "fetch")
    assert rows["-a"]["status"] == "local"
    assert {k: r["status"] for k, r in rows.items() if k != "-a"} == {
        "line-4": "bad_row", "line-5": "bad_row", "d": "bad_row", "e": "bad_row", "f": "bad_row", "line-9": "bad_row"}
    assert "line 4: id 'b/c'" in rows["line-4"]["error"] and "at most 200 characters" in rows["line-5"]["error"]
    assert "'nan' is not a time" in rows["e"]["error"] and "'1e300' is not a time" in rows["f"]["error"]
    assert "duplicate key '-a' (first on line 2)" in rows["line-9"]["error"]
    manifest.write_text("id,url,start,end,label,split\ne,a.mp4,0,,,\n")  # corrected since
    assert CliRunner().invoke(app, ["fetch", str(manifest), "--root", str(tmp_path / "data")]).exit_code == 0
    assert read_status(tmp_path / "data", "fetch")["e"]["status"] == "local"
    manifest.write_bytes(b"id,url,start\nb,caf\xe9.mp4,0\n")
    result = CliRunner().invoke(app, ["fetch", str(manifest), "--root", str(tmp_path / "data")])
    assert result.exit_code == 2 and "not UTF-8 text (byte 18)" in result.output


@pytest.mark.parametrize("kind", ["trickle", "stall"])
def test_a_trickling_or_stalled_server_times_out_at_the_deadline(server, tmp_path, kind):
    t0 = time.monotonic()
    result = F.fetch_item(item(server, kind), options(tmp_path, deadline=2.0, retries=0), RateLimiter(None))
    assert result.status == "timeout" and "longer than 2 s" in result.error
    assert time.monotonic() - t0 < 15  # the server would go on for 20 s
    assert not [p for p in (tmp_path / "raw").glob(".*")]  # the attempt's temp folder is gone


def test_a_page_with_several_videos_gives_one_download(server, tmp_path):
    before = [path for _, path in server.log]
    result = F.fetch_item(ManifestItem("page", f"{server.base}/page/index.html", 0.0, None), options(tmp_path),
                          RateLimiter(None))
    assert result.status == "ok", result.error
    fetched = {path for _, path in server.log[len(before):] if path.startswith("/ok/")}
    assert fetched == {"/ok/v0.mp4"}
