"""The data manifest (``data_manifest.yaml``): where the real datasets live, and :func:`fetch` to download them.

Downloads go to ``$TAUML_DATA_DIR`` when set, else ``<tauml cache>/downloads`` (:func:`tauml.cache.cache_dir`),
through pooch, and are checked against the published checksum where there is one.  A file already in place
with the right checksum is used without touching the network; a file downloaded by hand can simply be put at
the path :func:`local_path` names.  Without network :func:`fetch` fails at once with the URL and that path.

``python -m tauml.data.manifest`` prints the manifest's ``presets:`` section from :mod:`tauml.config`.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path
from typing import Any

import yaml

from tauml.cache import cache_dir as tauml_cache_dir
from tauml.config import PRESETS
from tauml.data.schema import DataError

ENV_DATA_DIR = "TAUML_DATA_DIR"
#: The manifest in a source checkout (repository root), and where a wheel may carry a copy.
MANIFEST_PATHS: tuple[Path, ...] = (
    Path(__file__).resolve().parents[2] / "data_manifest.yaml",
    Path(__file__).resolve().parents[1] / "data_manifest.yaml",
)
HASH_ALGORITHMS: tuple[str, ...] = ("md5", "sha1", "sha256")
_FILE_KEYS = {"dataset", "url", "mirrors", "size", "hash", "hash_source", "description"}
_EXTRACTED_MARKER = ".tauml-extracted"


# ---------------------------------------------------------------------------------------------------------
# Loading and checking the manifest
# ---------------------------------------------------------------------------------------------------------


def load_manifest(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Read and check ``data_manifest.yaml`` (default: the repository's).

    Returns the parsed dict with the keys ``datasets`` (name -> description, DOI, record), ``files``
    (file name -> ``dataset``, ``url``, ``mirrors``, ``size``, ``hash``) and ``presets``.
    """
    if path is None:
        found = [p for p in MANIFEST_PATHS if p.exists()]
        if not found:
            raise DataError(
                f"data_manifest.yaml not found at {' or '.join(map(str, MANIFEST_PATHS))}; run from a source "
                "checkout of tauml or pass its path"
            )
        path = found[0]
    path = Path(path)
    try:
        manifest = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise DataError(f"cannot read the data manifest {path}: {error}") from error
    _check_manifest(manifest, path)
    return manifest


def _check_manifest(manifest: Any, path: Path) -> None:
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise DataError(f"{path} must be a mapping with a 'files:' section (file name -> url, hash, ...)")
    datasets = manifest.get("datasets") or {}
    for name, entry in manifest["files"].items():
        where = f"{path}, file {name!r}"
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise DataError(f"{where}: an entry needs at least 'url: <http(s) address>'")
        unknown = set(entry) - _FILE_KEYS
        if unknown:
            raise DataError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_FILE_KEYS)}")
        if entry.get("dataset") is not None and entry["dataset"] not in datasets:
            raise DataError(f"{where}: dataset {entry['dataset']!r} is not described under 'datasets:'")
        known_hash = entry.get("hash")
        if known_hash is not None:
            algorithm, _, digest = str(known_hash).partition(":")
            if algorithm not in HASH_ALGORITHMS or not digest or any(c not in "0123456789abcdef" for c in digest):
                raise DataError(f"{where}: hash {known_hash!r} must look like 'md5:<hex>' or 'sha256:<hex>' (or null)")


def file_names(manifest: dict[str, Any] | None = None) -> list[str]:
    """The names :func:`fetch` knows."""
    return list((manifest or load_manifest())["files"])


# ---------------------------------------------------------------------------------------------------------
# Paths and hashes
# ---------------------------------------------------------------------------------------------------------


def data_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where downloads go: ``cache_dir`` if given, else ``$TAUML_DATA_DIR``, else ``<tauml cache>/downloads``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV_DATA_DIR)
    return Path(env).expanduser() if env else tauml_cache_dir() / "downloads"


def local_path(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The path where :func:`fetch` keeps ``name`` (and where a file downloaded by hand should be put)."""
    return data_dir(cache_dir) / name


def file_hash(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """The checksum of a file as ``"<algorithm>:<hex digest>"`` (the form the manifest uses)."""
    if algorithm not in HASH_ALGORITHMS:
        raise DataError(f"algorithm={algorithm!r}; choose from {', '.join(HASH_ALGORITHMS)}")
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"{algorithm}:{digest.hexdigest()}"


def _check_hash(path: Path, expected: str | None, url: str) -> None:
    if expected is None:
        return
    found = file_hash(path, expected.split(":", 1)[0])
    if found != expected:
        raise DataError(
            f"{path} has checksum {found}, but the manifest expects {expected}: the file is incomplete or a "
            f"different version. Delete it and run fetch again, or download {url} by hand to that path."
        )


# ---------------------------------------------------------------------------------------------------------
# Fetching
# ---------------------------------------------------------------------------------------------------------


def fetch(
    name: str,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    timeout: float = 30.0,
    extract: bool = False,
    manifest: dict[str, Any] | str | os.PathLike[str] | None = None,
) -> Path:
    """Download the manifest file ``name`` (once) and return its local path.

    A file already at :func:`local_path` is checked against the manifest's checksum and used without network
    access.  ``timeout``: seconds to wait for the server before giving up (no retries).  ``extract``: unpack a
    ``.tar`` archive next to it (once) and return the folder instead.  ``manifest``: a loaded manifest or the
    path of one (default: the repository's ``data_manifest.yaml``).
    """
    if not isinstance(manifest, dict):
        manifest = load_manifest(manifest)
    files = manifest["files"]
    if name not in files:
        raise DataError(f"no file {name!r} in the data manifest; known: {', '.join(files)}")
    entry = files[name]
    expected = entry.get("hash")
    target = local_path(name, cache_dir)
    if target.exists():
        _check_hash(target, expected, entry["url"])
    else:
        _download(name, entry, target, progress, timeout)
    return _extract(target) if extract else target


def _download(name: str, entry: dict[str, Any], target: Path, progress: bool, timeout: float) -> None:
    import pooch  # (local: only for downloads)
    import requests

    target.parent.mkdir(parents=True, exist_ok=True)
    urls = [entry["url"], *(entry.get("mirrors") or [])]
    failures = []
    for url in urls:
        downloader = pooch.HTTPDownloader(progressbar=progress, timeout=timeout)
        try:
            pooch.retrieve(url, known_hash=entry.get("hash"), fname=name, path=target.parent, downloader=downloader)
            return
        except ValueError as error:  # pooch: the downloaded file's hash does not match
            raise DataError(
                f"the download of {name} from {url} does not match the published checksum ({error}). The server "
                f"may be serving a different version; nothing was kept. Try again later, or download it by hand "
                f"and put it at {target}."
            ) from error
        except (requests.RequestException, OSError) as error:
            failures.append(f"{url}: {type(error).__name__}: {str(error)[:200]}")
    raise DataError(
        f"could not download {name} (no network?). Tried:\n  " + "\n  ".join(failures)
        + f"\nDownload it by hand from {entry['url']} and put it at {target}"
        + (" (its checksum is checked on first use)." if entry.get("hash") else
           "; no checksum is published for it, so compare `tauml fetch --print-hash` with the record page.")
    )


def _extract(archive: Path) -> Path:
    if not tarfile.is_tarfile(archive):
        raise DataError(f"{archive} is not a tar archive; fetch it with extract=False")
    folder = archive.parent / archive.name.split(".")[0]
    if (folder / _EXTRACTED_MARKER).exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
    except (tarfile.TarError, OSError) as error:
        raise DataError(f"could not unpack {archive} into {folder}: {error}; delete both and fetch again") from error
    (folder / _EXTRACTED_MARKER).write_text(f"unpacked from {archive.name}\n")
    return folder


# ---------------------------------------------------------------------------------------------------------
# The presets section
# ---------------------------------------------------------------------------------------------------------


def presets_section() -> dict[str, dict[str, Any]]:
    """The generator settings of each preset in :mod:`tauml.config`, as the manifest records them."""
    section = {}
    for name, preset in PRESETS.items():
        generation = preset.generation
        section[name] = {
            "ee_sqrt_s_gev": float(generation.ee_sqrt_s),
            "pp_sqrt_s_gev": float(generation.pp_sqrt_s),
            "seed": int(generation.seed),
            "test_fraction": float(generation.test_fraction),
            "events": {sample: int(n) for sample, n in generation.events.items()},
        }
    return section


def presets_yaml() -> str:
    """The ``presets:`` section of ``data_manifest.yaml`` as text, to paste when a preset changes."""
    return yaml.safe_dump({"presets": presets_section()}, sort_keys=False, default_flow_style=False)


if __name__ == "__main__":  # pragma: no cover - a printing helper
    print(presets_yaml(), end="")
