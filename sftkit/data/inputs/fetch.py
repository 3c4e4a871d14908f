"""Fetching input files: HTTP(S) with Range + If-Range resume, retries with backoff, atomic rename, size and sha256 checks."""
from __future__ import annotations

import http.client
import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlparse

from tqdm import tqdm

from sftkit import atomic
from sftkit.data import DataError
from sftkit.data.run.manifest import sha256_file

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


def validator_path(part: Path) -> Path:
    """Beside ``<file>.part``: the URL, size and validator (ETag or Last-Modified) its bytes came with."""
    return part.with_name(part.name + ".json")


def _validator(headers) -> str | None:
    """A strong ETag, else Last-Modified: what If-Range accepts to prove the file is unchanged."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified")


def download(url: str, dest: Path, *, retries: int, backoff_s: float, timeout_s: float,
             expected_sha256: str | None = None) -> Path:
    """Download ``url`` to ``dest`` (``dest.part`` while incomplete), resuming after a broken connection.

    A resume sends ``If-Range`` with the validator saved when the transfer started, so a file
    that changed on the server in between is fetched whole again instead of spliced; without a
    validator the partial file is discarded. A complete ``dest`` is reused when it matches
    ``expected_sha256`` (or when none is given).
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
            validator_path(part).unlink(missing_ok=True)
            raise DataError(f"{url}: sha256 {actual} does not match the expected {expected_sha256} "
                            "(from --checksums); the download was removed, fix the checksum or the source")
    atomic.promote(part, dest)
    validator_path(part).unlink(missing_ok=True)
    return dest


def _resume_offset(url: str, part: Path) -> tuple[int, dict]:
    """(bytes to resume from, request headers): 0 unless the saved validator can prove the file unchanged."""
    offset = part.stat().st_size if part.exists() else 0
    if not offset:
        return 0, {}
    try:
        saved = json.loads(validator_path(part).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = {}
    if saved.get("url") != url or not saved.get("validator") or \
            (saved.get("size") is not None and offset > saved["size"]):
        print(f"[download] {part.name}: nothing proves the remote file is the one these {offset:,} bytes came "
              "from (no ETag or Last-Modified saved); starting over", flush=True)
        part.unlink()
        return 0, {}
    return offset, {"Range": f"bytes={offset}-", "If-Range": saved["validator"]}


def _attempt(url: str, part: Path, timeout_s: float) -> None:
    offset, headers = _resume_offset(url, part)
    request = urllib.request.Request(url, headers=headers)
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
            saved = json.loads(validator_path(part).read_text(encoding="utf-8"))
            total = int(match.group(2)) if match and match.group(2) != "*" else None
            if not match or int(match.group(1)) != offset or total != saved.get("size"):
                part.unlink()
                raise _Retryable("server answered the resume with an unexpected Content-Range; starting over")
            mode = "ab"
        else:  # 200: a fresh start, or If-Range said the file changed (or the server ignores Range)
            if offset:
                print(f"[download] {part.name}: the remote file changed since the partial download (If-Range did "
                      f"not match) or the server cannot resume; starting over", flush=True)
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
            atomic.write_json(validator_path(part), {"url": url, "validator": _validator(response.headers),
                                                     "size": total})
        written = offset
        try:
            with open(part, mode, buffering=0) as fh, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                              desc=f"download {Path(urlparse(url).path).name}",
                                              leave=False) as bar:
                while block := response.read1(_CHUNK):
                    fh.write(block)
                    written += len(block)
                    bar.update(len(block))
        except (OSError, http.client.HTTPException) as exc:
            raise _Retryable(f"connection broken at byte {written}: {exc}") from None
    if total is not None and written != total:
        raise _Retryable(f"connection closed at byte {written} of {total}")
