"""Which download failures fetch retries: yt-dlp errors classified, backoff with jitter, the shared rate limit."""

import threading
import time

from yt_dlp.networking.common import Response
from yt_dlp.networking.exceptions import HTTPError
from yt_dlp.utils import DownloadError, ExtractorError, GeoRestrictedError

from uniform_cli.prep import retry as R


def test_classify_from_exc_info_and_messages():
    def http_error(status, headers=None):
        response = Response(None, "http://x", headers or {}, status=status)
        try:
            raise HTTPError(response)
        except HTTPError:
            import sys

            return DownloadError("ERROR: HTTP Error", sys.exc_info())

    assert R.classify_error(http_error(404)).status == "unavailable"
    limited = R.classify_error(http_error(429, {"Retry-After": "7"}))
    assert limited.status == "rate_limited" and limited.retry_after == 7 and limited.transient
    assert R.classify_error(http_error(502)).transient
    wrapped = ExtractorError("Unable to download webpage", cause=GeoRestrictedError("blocked"))
    assert R.classify_error(DownloadError("ERROR: blocked", (type(wrapped), wrapped, None))).status == "geo_blocked"
    messages = {
        "ERROR: [youtube] abc: Private video. Sign in if you've been granted access": "private",
        "ERROR: [youtube] abc: Video unavailable. This video has been removed by the uploader": "unavailable",
        "ERROR: [youtube] abc: Sign in to confirm your age. This video may be inappropriate": "age_restricted",
        "ERROR: [youtube] abc: Sign in to confirm you're not a bot": "bot_check",
        "ERROR: The uploader has not made this video available in your country": "geo_blocked",
        "ERROR: unable to download video data: <urlopen error timed out>": "network_error",
    }
    for message, status in messages.items():
        assert R.classify_error(DownloadError(message)).status == status, message
    assert R.parse_retry_after("120") == 120 and R.parse_retry_after("soon") is None


def test_rate_limiter_is_shared_by_threads():
    limiter = R.RateLimiter(20.0)
    t0 = time.monotonic()
    threads = [threading.Thread(target=limiter.wait) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - t0 >= 5 / 20 - 0.01
    limiter.pause(0.3)
    t1 = time.monotonic()
    limiter.wait()
    assert time.monotonic() - t1 >= 0.25


def test_backoff_grows_with_jitter_and_is_capped():
    import random

    rng = random.Random(0)
    delays = [R.backoff_delay(a, 1.0, 10.0, rng) for a in range(6)]
    assert 0.5 <= delays[0] <= 1.0 and 4.0 <= delays[3] <= 8.0 and all(d <= 10.0 for d in delays)
