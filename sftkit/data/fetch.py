"""Fetching input files: HTTP(S) with Range resume, retries with backoff, atomic rename, size and sha256 checks."""
from __future__ import annotations

import http.client
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlparse

from tqdm import tqdm

from sftkit.data import DataError
from sftkit.data.manifest import sha256_file

OFFLINE_HINT = "to run offline, point --source at the bundled sample: --source=data/sample"
_CHUNK = 1 << 20


class _Retryable(Exception):
    """A failed attempt worth trying again (the partial file is kept for a Range resume)."""


def is_url(source: str) -> bool:
    return urlparse(source).scheme in ("http", "https")


def local_source_dir(source: str) -> Path | None:
    """The directory of a ``file://`` or plain-path source, or None for an HTTP(S) source."""
    if is_url(source):
        return None
    parsed = urlparse(source)
    return Path(parsed.path if parsed.scheme == "file" else source)


def file_url(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + quote(name)


def download(url: str, dest: Path, *, retries: int, backoff_s: float, timeout_s: float,
             expected_sha256: str | None = None) -> Path:
    """Download ``url`` to ``dest`` (``dest.part`` while incomplete), resuming after a broken connection.

    A complete ``dest`` is reused when it matches ``expected_sha256`` (or when none is given).
    """
    dest = Path(dest)
    if dest.is_file() and (expected_sha256 is None or sha256_file(dest) == expected_sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error = ""
    for attempt in range(max(1, retries)):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            _attempt(url, part, timeout_s)
            break
        except _Retryable as exc:
            last_error = str(exc)
    else:
        raise DataError(f"cannot download {url} after {max(1, retries)} attempt(s): {last_error}. "
                        f"Check the network and --source; {OFFLINE_HINT}")
    if expected_sha256 is not None:
        actual = sha256_file(part)
        if actual != expected_sha256:
            part.unlink()
            raise DataError(f"{url}: sha256 {actual} does not match the expected {expected_sha256} "
                            "(from --checksums); the download was removed, fix the checksum or the source")
    os.replace(part, dest)
    return dest


def _attempt(url: str, part: Path, timeout_s: float) -> None:
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the partial file is stale or already whole: start over
            part.unlink()
            raise _Retryable(f"HTTP 416 resuming at byte {offset}") from None
        if exc.code in (400, 401, 403, 404, 410):
            raise DataError(f"cannot download {url}: HTTP {exc.code} {exc.reason}. Check --source and "
                            f"--files; {OFFLINE_HINT}") from None
        raise _Retryable(f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Retryable(str(getattr(exc, "reason", exc))) from None
    with response:
        if response.status == 206:
            match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                part.unlink()
                raise _Retryable("server answered the Range request with an unexpected Content-Range")
            total = int(match.group(2)) if match.group(2) != "*" else None
            mode = "ab"
        else:  # 200: the server ignored Range (or there was nothing to resume)
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
        written = offset
        try:
            with open(part, mode) as fh, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                              desc=f"download {Path(urlparse(url).path).name}",
                                              leave=False) as bar:
                while block := response.read(_CHUNK):
                    fh.write(block)
                    written += len(block)
                    bar.update(len(block))
        except (OSError, http.client.HTTPException) as exc:
            raise _Retryable(f"connection broken at byte {written}: {exc}") from None
    if total is not None and written != total:
        raise _Retryable(f"connection closed at byte {written} of {total}")
