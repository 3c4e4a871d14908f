import gzip
import hashlib

import pytest

from sftkit.data import DataError
from sftkit.data.inputs.fetch import OFFLINE_HINT, download, file_url, local_source_dir
from tests.data.range_server import RangeServer

FAST = dict(retries=3, backoff_s=0.01, timeout_s=5)


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    payload = gzip.compress(b"".join(b'{"text": "<human>: q%d\\n<bot>: a"}\n' % i for i in range(5000)), mtime=0)
    (root / "part.jsonl.gz").write_bytes(payload)
    return root, payload


def test_a_broken_transfer_resumes_with_a_range_request(served, tmp_path):
    root, payload = served
    dest = tmp_path / "raw" / "part.jsonl.gz"
    with RangeServer(root, break_once={"part.jsonl.gz"}) as server:
        download(file_url(server.url, "part.jsonl.gz"), dest, expected_sha256=hashlib.sha256(payload).hexdigest(),
                 **FAST)
    assert dest.read_bytes() == payload and not dest.with_name(dest.name + ".part").exists()
    (first, second) = server.requests
    assert first == ("part.jsonl.gz", None, 200)
    assert second == ("part.jsonl.gz", f"bytes={len(payload) // 2}-", 206)


def test_a_complete_file_is_not_fetched_again(served, tmp_path):
    root, payload = served
    dest = tmp_path / "part.jsonl.gz"
    with RangeServer(root) as server:
        download(file_url(server.url, "part.jsonl.gz"), dest, **FAST)
        download(file_url(server.url, "part.jsonl.gz"), dest, **FAST)
    assert len(server.requests) == 1


def test_checksum_mismatch_removes_the_download(served, tmp_path):
    root, _ = served
    dest = tmp_path / "part.jsonl.gz"
    with RangeServer(root) as server, pytest.raises(DataError, match="does not match the expected"):
        download(file_url(server.url, "part.jsonl.gz"), dest, expected_sha256="0" * 64, **FAST)
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()


def test_missing_file_is_not_retried(served, tmp_path):
    root, _ = served
    with RangeServer(root) as server, pytest.raises(DataError, match="HTTP 404"):
        download(file_url(server.url, "nope.jsonl"), tmp_path / "nope.jsonl", **FAST)
    assert len(server.requests) == 1


def test_unreachable_source_says_how_to_run_offline(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DataError) as error:
        download(f"http://127.0.0.1:{port}/x.jsonl", tmp_path / "x.jsonl", **FAST)
    assert "after 3 attempt(s)" in str(error.value) and OFFLINE_HINT in str(error.value)


def test_local_sources():
    assert local_source_dir("https://example.org/data/") is None
    assert str(local_source_dir("file:///srv/oig")) == "/srv/oig"
    assert str(local_source_dir("data/sample")) == "data/sample"


def test_resume_proves_the_file_unchanged_with_if_range(served, tmp_path):
    root, payload = served
    dest = tmp_path / "raw" / "part.jsonl.gz"
    with RangeServer(root, break_once={"part.jsonl.gz"}) as server:
        download(file_url(server.url, "part.jsonl.gz"), dest, **FAST)
    assert dest.read_bytes() == payload
    assert server.if_range[0] is None and server.if_range[1].startswith('"')  # the ETag of the first response


def test_a_file_changed_between_attempts_is_fetched_whole_not_spliced(served, tmp_path, capsys):
    root, payload = served
    dest = tmp_path / "raw" / "part.jsonl.gz"
    with RangeServer(root, break_once={"part.jsonl.gz"}) as server:
        with pytest.raises(DataError):
            download(file_url(server.url, "part.jsonl.gz"), dest, **dict(FAST, retries=1))
        assert dest.with_name(dest.name + ".part").stat().st_size == len(payload) // 2
        changed = bytes(b ^ 0xFF for b in payload)  # same size, other bytes
        (root / "part.jsonl.gz").write_bytes(changed)
        download(file_url(server.url, "part.jsonl.gz"), dest, **FAST)
    assert dest.read_bytes() == changed
    assert server.requests[-1] == ("part.jsonl.gz", None, 200)  # If-Range did not match: the whole new file
    assert "remote file changed" in capsys.readouterr().out


def test_without_a_validator_a_partial_file_is_not_trusted(served, tmp_path, capsys):
    root, payload = served
    dest = tmp_path / "raw" / "part.jsonl.gz"
    with RangeServer(root, break_once={"part.jsonl.gz"}, validators=False) as server:
        download(file_url(server.url, "part.jsonl.gz"), dest, **FAST)
    assert dest.read_bytes() == payload
    assert [r[1:] for r in server.requests] == [(None, 200), (None, 200)]
    assert "starting over" in capsys.readouterr().out
