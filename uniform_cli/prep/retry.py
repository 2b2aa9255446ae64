"""Which download failures `fetch` retries and when: the status words, classifying yt-dlp's errors, backoff
with jitter, and the rate limit all worker threads share.

Permanent failures (unavailable, private, age-restricted, geo-blocked, forbidden) are never retried; transient
ones (network errors, HTTP 5xx, 429, cut downloads) are retried with exponential backoff and jitter, 429
honouring Retry-After, and again on the next run.
"""

from __future__ import annotations

import email.utils
import random
import re
import threading
import time
from dataclasses import dataclass

# Status words. Permanent failures are skipped by a rerun (unless --retry-failed); the rest are retried.
PERMANENT = {"unavailable", "private", "age_restricted", "geo_blocked", "forbidden", "bad_url"}
RETRYABLE = {"rate_limited", "server_error", "network_error", "incomplete", "bot_check", "error", "timeout"}


class RateLimiter:
    """At most `rate` download starts per second across all worker threads; `pause` stops them all."""

    def __init__(self, rate: float | None):
        self.interval = 1.0 / rate if rate and rate > 0 else 0.0
        self._lock = threading.Lock()
        self._next = 0.0

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)

    def pause(self, seconds: float) -> None:
        """Nobody starts a download for `seconds` (a server said 429 / Retry-After)."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)


@dataclass(frozen=True)
class Failure:
    """A classified download failure."""

    status: str
    message: str
    retry_after: float | None = None

    @property
    def transient(self) -> bool:
        return self.status in RETRYABLE


_MESSAGE_RULES = [  # (status, pattern on the lower-cased message); first match wins
    ("private", r"private video|video is private"),
    ("age_restricted", r"confirm your age|age[- ]restricted|inappropriate for some users"),
    ("geo_blocked", r"available in your country|geo[- ]?restrict|blocked it in your country"),
    ("bot_check", r"not a bot|sign in to confirm"),
    ("rate_limited", r"http error 429|too many requests"),
    ("server_error", r"http error 5\d\d"),
    ("unavailable", r"http error (?:404|410)|video unavailable|has been removed|no longer available"
     r"|account .* terminated|does not exist|unsupported url|is not a valid url|not available"),
    ("forbidden", r"http error 403"),
    ("network_error", r"timed out|timeout|connection|reset by peer|temporary failure|unable to download"
     r"|ffmpeg exited|incomplete|eof|broken pipe|network is unreachable|name resolution|ssl"),
]


def classify_error(exc: BaseException) -> Failure:
    """Status word for a yt-dlp error, from its cause (`exc_info`: HTTP status, geo error) or its message."""
    from yt_dlp.utils import DownloadError, GeoRestrictedError

    cause = exc
    if isinstance(exc, DownloadError) and exc.exc_info and exc.exc_info[1] is not None:
        cause = exc.exc_info[1]
    seen = set()
    while cause is not None and id(cause) not in seen:  # follow ExtractorError.cause chains
        seen.add(id(cause))
        if isinstance(cause, GeoRestrictedError):
            return Failure("geo_blocked", _short(exc))
        status = getattr(cause, "status", None)
        if isinstance(status, int) and hasattr(cause, "response"):
            return _from_http(status, cause, exc)
        cause = getattr(cause, "cause", None) or cause.__cause__
    text = _short(exc).lower()
    for status, pattern in _MESSAGE_RULES:
        if re.search(pattern, text):
            return Failure(status, _short(exc))
    return Failure("error", _short(exc))


def _from_http(status: int, http_error, exc: BaseException) -> Failure:
    message = _short(exc)
    if status == 429:
        headers = getattr(getattr(http_error, "response", None), "headers", None) or {}
        return Failure("rate_limited", message, parse_retry_after(headers.get("Retry-After")))
    if status >= 500:
        return Failure("server_error", message)
    if status in (404, 410):
        return Failure("unavailable", message)
    if status in (401, 403):
        return Failure("forbidden", message + " (private or blocked; --cookies may help)")
    if status == 408:
        return Failure("network_error", message)
    return Failure("error", message)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _short(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).replace("ERROR: ", "").strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random = random.Random()) -> float:
    """Exponential backoff with full jitter: uniform in [base * 2^attempt / 2, base * 2^attempt], capped."""
    top = min(cap, base * (2**attempt))
    return rng.uniform(top / 2, top)
