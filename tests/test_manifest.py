"""The data manifest and fetch, against files served on localhost (no internet needed)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import socket
import tarfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from tauml.data.manifest import (
    ENV_DATA_DIR,
    data_dir,
    fetch,
    file_hash,
    load_manifest,
    local_path,
    presets_section,
    presets_yaml,
)
from tauml.data.schema import DataError

FUURE_FILES = [f"{s}_{split}.parquet" for s in ("z", "zh", "qq") for split in ("train", "test")]
JETCLASS_FILES = [f"JetClass_Pythia_train_100M_part{i}.tar" for i in range(10)] + [
    "JetClass_Pythia_val_5M.tar", "JetClass_Pythia_test_20M.tar"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """An HTTP server on localhost serving a folder; yields (base URL, folder)."""
    root = tmp_path_factory.mktemp("served")
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


def _closed_port_url(name: str) -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"  # nothing listens there any more: connection refused


def _serve(root: Path, name: str, payload: bytes) -> str:
    (root / name).write_bytes(payload)
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def _manifest(**files) -> dict:
    return {"datasets": {"test": {"title": "test files"}}, "files": {k: {"dataset": "test", **v}
                                                                      for k, v in files.items()}}


# ---------------------------------------------------------------------------------------------------------
# The repository's manifest
# ---------------------------------------------------------------------------------------------------------


def test_repository_manifest_lists_the_real_datasets():
    manifest = load_manifest()
    files = manifest["files"]
    assert set(FUURE_FILES) | set(JETCLASS_FILES) <= set(files)
    for name in FUURE_FILES:
        assert files[name]["url"] == f"https://zenodo.org/records/12664634/files/{name}?download=1"
        assert files[name]["hash"] is None  # not published: never invented
        assert files[name]["dataset"] == "fuure_380"
    assert files["qq_train.parquet"]["size"] == "1.9G" and files["z_test.parquet"]["size"] == "97M"
    # the MD5s published in jet-universe/particle_transformer's get_datasets.py
    assert files["JetClass_Pythia_val_5M.tar"]["hash"] == "md5:7235ccb577ed85023ea3ab4d5e6160cf"
    assert files["JetClass_Pythia_train_100M_part0.tar"]["hash"] == "md5:de4fd2dca2e68ab3c85d5cfd3bcc65c3"
    assert len({files[n]["hash"] for n in JETCLASS_FILES}) == len(JETCLASS_FILES)
    for name in JETCLASS_FILES:
        assert files[name]["url"].startswith("https://zenodo.org/records/6619768/files/" + name)
    assert manifest["datasets"]["fuure_380"]["doi"] == "10.5281/zenodo.12664634"
    assert manifest["datasets"]["fuure_380"]["badge_doi"] == "10.5281/zenodo.13881061"
    assert manifest["datasets"]["jetclass"]["doi"] == "10.5281/zenodo.6619768"


def test_manifest_presets_match_the_config():
    manifest = load_manifest()
    assert manifest["presets"] == presets_section(), (
        "data_manifest.yaml's presets: section is out of date; replace it with `python -m tauml.data.manifest`")
    assert yaml.safe_load(presets_yaml())["presets"] == presets_section()
    assert presets_section()["demo"]["ee_sqrt_s_gev"] == 380.0


def test_malformed_manifests(tmp_path):
    bad_hash = tmp_path / "bad_hash.yaml"
    bad_hash.write_text(yaml.safe_dump(_manifest(a={"url": "http://x/a", "hash": "md5:XYZ"})))
    with pytest.raises(DataError, match="hash"):
        load_manifest(bad_hash)
    unknown_key = tmp_path / "unknown_key.yaml"
    unknown_key.write_text(yaml.safe_dump(_manifest(a={"url": "http://x/a", "sha": "1"})))
    with pytest.raises(DataError, match="unknown key"):
        load_manifest(unknown_key)
    with pytest.raises(DataError, match="cannot read"):
        load_manifest(tmp_path / "absent.yaml")


# ---------------------------------------------------------------------------------------------------------
# fetch
# ---------------------------------------------------------------------------------------------------------


def test_fetch_downloads_verifies_and_reuses(server, tmp_path):
    url, root = server
    payload = b"jets " * 1000
    digest = _serve(root, "sample.parquet", payload)
    manifest = _manifest(**{"sample.parquet": {"url": f"{url}/sample.parquet", "hash": digest}})
    path = fetch("sample.parquet", cache_dir=tmp_path, progress=False, manifest=manifest)
    assert path == local_path("sample.parquet", tmp_path) and path.read_bytes() == payload
    assert file_hash(path) == digest
    assert file_hash(path, "md5") == "md5:" + hashlib.md5(payload).hexdigest()

    # present with the right hash: used without network (the URL now points nowhere)
    offline = _manifest(**{"sample.parquet": {"url": _closed_port_url("sample.parquet"), "hash": digest}})
    assert fetch("sample.parquet", cache_dir=tmp_path, progress=False, manifest=offline) == path

    # present with the wrong content: refused, naming both hashes and the fix
    path.write_bytes(b"truncated")
    found = file_hash(path)
    with pytest.raises(DataError, match="Delete it") as error:
        fetch("sample.parquet", cache_dir=tmp_path, progress=False, manifest=offline)
    assert digest in str(error.value) and found in str(error.value)


def test_fetch_refuses_a_download_with_the_wrong_hash(server, tmp_path):
    url, root = server
    _serve(root, "changed.parquet", b"a different version")
    wrong = "sha256:" + "0" * 64
    manifest = _manifest(**{"changed.parquet": {"url": f"{url}/changed.parquet", "hash": wrong}})
    with pytest.raises(DataError, match="does not match the published checksum") as error:
        fetch("changed.parquet", cache_dir=tmp_path, progress=False, manifest=manifest)
    assert "0" * 64 in str(error.value)
    assert not local_path("changed.parquet", tmp_path).exists()  # nothing half-verified is kept


def test_fetch_offline_fails_fast_with_the_manual_route(tmp_path):
    target = local_path("z_test.parquet", tmp_path)
    manifest = _manifest(**{"z_test.parquet": {"url": _closed_port_url("z_test.parquet"), "hash": None}})
    start = time.perf_counter()
    with pytest.raises(DataError, match="no network") as error:
        fetch("z_test.parquet", cache_dir=tmp_path, progress=False, timeout=5, manifest=manifest)
    assert time.perf_counter() - start < 5
    message = str(error.value)
    assert manifest["files"]["z_test.parquet"]["url"] in message and str(target) in message


def test_fetch_uses_mirrors_and_the_data_dir_variable(server, tmp_path, monkeypatch):
    url, root = server
    digest = _serve(root, "mirrored.tar.part", b"x" * 100)
    manifest = _manifest(**{"mirrored.tar.part": {"url": _closed_port_url("mirrored.tar.part"),
                                                  "mirrors": [f"{url}/mirrored.tar.part"], "hash": digest}})
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path / "data"))
    assert data_dir() == tmp_path / "data"
    path = fetch("mirrored.tar.part", progress=False, manifest=manifest)
    assert path == tmp_path / "data" / "mirrored.tar.part" and file_hash(path) == digest


def test_fetch_unknown_name_lists_the_known_ones():
    with pytest.raises(DataError, match=r"no file 'z_tets\.parquet'.*z_test\.parquet"):
        fetch("z_tets.parquet", progress=False)


def test_fetch_extracts_a_tar_once(server, tmp_path):
    url, root = server
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in (("val_5M/HToBB_120.root", b"root bytes"), ("val_5M/TTBar_120.root", b"more")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    digest = _serve(root, "JetClass_tiny.tar", buffer.getvalue())
    manifest = _manifest(**{"JetClass_tiny.tar": {"url": f"{url}/JetClass_tiny.tar", "hash": digest}})
    folder = fetch("JetClass_tiny.tar", cache_dir=tmp_path, progress=False, extract=True, manifest=manifest)
    assert folder == tmp_path / "JetClass_tiny"
    assert (folder / "val_5M" / "HToBB_120.root").read_bytes() == b"root bytes"
    (folder / "val_5M" / "TTBar_120.root").unlink()
    again = fetch("JetClass_tiny.tar", cache_dir=tmp_path, progress=False, extract=True, manifest=manifest)
    assert again == folder and not (folder / "val_5M" / "TTBar_120.root").exists()  # not unpacked twice
    with pytest.raises(DataError, match="not a tar archive"):
        digest_text = _serve(root, "plain.txt", b"plain")
        fetch("plain.txt", cache_dir=tmp_path, progress=False, extract=True,
              manifest=_manifest(**{"plain.txt": {"url": f"{url}/plain.txt", "hash": digest_text}}))
