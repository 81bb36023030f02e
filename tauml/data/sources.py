"""Where a preset's data come from: generated events, or the released files on disk.

A data source (:attr:`tauml.config.Preset.data`, ``--data`` on the command line) is one of

* ``"generated"``: the preset's own generated events (``tauml generate``; the ``demo`` default);
* ``"files"``: the files ``tauml fetch`` stored (``$TAUML_DATA_DIR``, else ``<tauml cache>/downloads``,
  :func:`tauml.data.manifest.data_dir`), the ``paper`` default;
* a folder, a file or a glob (``"~/data/fuure"``, ``"/data/JetClass/val_5M/*.root"``), or several of them
  joined by ``os.pathsep`` (``":"`` on Linux), e.g. a Fu(tau)ure folder and a JetClass folder.

:func:`resolve` turns a source into the files per sample and split, by their released names:

* **Fu(tau)ure** (e+e- tau jets, Zenodo record 12664634): ``{z,zh,qq}_{train,test}.parquet``, any number of files
  per sample and split (``z_train.parquet``, ``z_train_0.parquet``, ``z_train_1.parquet``, ...);
* **JetClass** (pp jets, Zenodo record 6619768): ``<Sample>_<NNN>.root`` (or ``.parquet``) with ``<Sample>`` one of
  the ten JetClass classes (``TTBar_000.root``, ``ZJetsToNuNu_012.root``), inside the released ``train_*``,
  ``val_*`` and ``test_*`` folders (the split is the nearest such folder) or in a flat folder (no split).

Other files are ignored (the generated ``*_events.parquet`` too).  :meth:`DataFiles.check` validates the layout
and the schemas cheaply (parquet footers, one ROOT file per sample), and :meth:`DataFiles.identity` is what
names every result built from the files in the cache: paths, sizes and modification times, so a changed,
added or removed file gives new cache keys and never a stale model.  Reading is done by the real readers
(:mod:`tauml.data.readers`).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.parquet as pq

from tauml.config import EE_SAMPLES, PP_SAMPLES
from tauml.data.schema import (
    FUURE_REQUIRED,
    JETCLASS_REQUIRED,
    JETCLASS_SAMPLE_LABELS,
    JETCLASS_TREE,
    DataError,
)

GENERATED = "generated"
FETCHED = "files"

FUURE_SPLITS: tuple[str, ...] = ("train", "test")
JETCLASS_SPLITS: tuple[str, ...] = ("train", "val", "test")
#: ``z_train.parquet``, ``zh_test_3.parquet``, ...
FUURE_NAME = re.compile(r"^(?P<sample>z|zh|qq)_(?P<split>train|test)(?:_(?P<number>\d+))?\.parquet$")
#: ``TTBar_000.root``, ``ZJetsToNuNu_012.parquet``, ...
JETCLASS_NAME = re.compile(r"^(?P<sample>[A-Za-z0-9]+)_(?P<number>\d+)\.(?:root|parquet)$")
#: The released JetClass folders: ``train_100M``, ``val_5M``, ``test_20M`` (also plain ``train``, ``val``, ``test``).
SPLIT_FOLDER = re.compile(r"^(?P<split>train|val|test)(?:_.*)?$")

FUURE_LAYOUT = ("Fu(tau)ure: {z,zh,qq}_{train,test}.parquet (or several per sample and split: z_train_0.parquet, "
                "z_train_1.parquet, ...)")
JETCLASS_LAYOUT = ("JetClass: <Sample>_<NNN>.root per class (e.g. ZJetsToNuNu_000.root, TTBar_012.root), in the "
                   "released train_100M/ val_5M/ test_20M/ folders or in one flat folder")


class NoDataFiles(DataError):
    """A source that holds no Fu(tau)ure and no JetClass file (the message names the expected layouts)."""


def _glob_chars(text: str) -> bool:
    return any(c in text for c in "*?[")


@dataclass
class DataFiles:
    """The data files of one source, by sample and split.

    ``fuure[(sample, split)]``: the Fu(tau)ure files of ``z``/``zh``/``qq`` and ``train``/``test``, in name order.
    ``jetclass[(sample, split)]``: the JetClass files of a class and ``train``/``val``/``test``, or ``""`` for
    files in no split folder, in number order.  ``root``: the folder the files were found in (their common
    folder), for messages.  ``source``: the source as given.  ``generated_key``: for a folder that ``tauml
    generate`` wrote (:func:`generated_dataset_key`), the key of that generated dataset, so that it names the same
    cached results as the generated data it is (else None).
    """

    source: str
    root: Path
    fuure: dict[tuple[str, str], tuple[Path, ...]] = field(default_factory=dict)
    jetclass: dict[tuple[str, str], tuple[Path, ...]] = field(default_factory=dict)
    generated_key: str | None = None

    # -- what a step asks for ----------------------------------------------------------------------------

    def fuure_files(self, sample: str, split: str = "train") -> tuple[Path, ...]:
        """The Fu(tau)ure files of ``sample`` (z, zh, qq) and ``split`` (train, test); a missing pair raises
        :class:`DataError` naming the expected file names and the fix."""
        if sample not in EE_SAMPLES or split not in FUURE_SPLITS:
            raise DataError(f"no Fu(tau)ure sample {sample!r} / split {split!r}: samples are {', '.join(EE_SAMPLES)}, "
                            f"splits {', '.join(FUURE_SPLITS)}")
        files = self.fuure.get((sample, split))
        if not files and self.source == GENERATED:
            raise DataError(f"sample {sample!r} was not generated in {self.root} (no {sample}_{split}.parquet): add it "
                            f"to the preset's generation events, e.g. {{{sample!r}: 5000}}")
        if not files:
            raise DataError(
                f"data {self.source!r} has no Fu(tau)ure file for sample {sample!r}, split {split!r}: expected "
                f"{sample}_{split}.parquet (or {sample}_{split}_0.parquet, ...) under {self.root}. "
                f"{self._found()}Fix: download it (`tauml fetch {sample}_{split}.parquet`) and put it in that folder, "
                "or add the folder holding it to --data (folders joined by ':'), or use --data generated"
            )
        return files

    def jetclass_files(self, sample: str) -> tuple[Path, ...]:
        """The JetClass files of class ``sample`` used for tokenizer training and pretraining: those of the
        ``train_*`` folders when there are any, else every file of the class (flat folder, or ``val_*`` /
        ``test_*`` only), in split then number order."""
        if sample not in JETCLASS_SAMPLE_LABELS:
            raise DataError(f"unknown JetClass sample {sample!r}; choose from {', '.join(JETCLASS_SAMPLE_LABELS)}")
        train = self.jetclass.get((sample, "train"))
        if train:
            return train
        files = tuple(f for split in ("", "val", "test") for f in self.jetclass.get((sample, split), ()))
        if not files and self.source == GENERATED:
            raise DataError(f"sample {sample!r} was not generated in {self.root} (no {sample}_*.root): add it to the "
                            f"preset's generation events, e.g. {{{sample!r}: 5000}}")
        if not files:
            raise DataError(
                f"data {self.source!r} has no JetClass file of class {sample!r}: expected {sample}_000.root, "
                f"{sample}_001.root, ... under {self.root} (in a train_*/val_*/test_* folder or flat). "
                f"{self._found()}Fix: `tauml fetch JetClass_Pythia_val_5M.tar --extract` (the smallest part, "
                "docs/data.md) and give its folder, or use --data generated"
            )
        return files

    def _found(self) -> str:
        parts = []
        if self.fuure:
            parts.append("Fu(tau)ure " + ", ".join(f"{s}_{p}" for s, p in sorted(self.fuure)))
        if self.jetclass:
            classes = sorted({s for s, _ in self.jetclass})
            parts.append("JetClass " + ", ".join(classes))
        return f"Found: {'; '.join(parts)}. " if parts else "Found no data files. "

    # -- validation ------------------------------------------------------------------------------------------

    def missing(self, ee: bool = True, pp: bool = True, pp_samples: tuple[str, ...] = PP_SAMPLES) -> list[str]:
        """The expected file names of what is missing for a whole study (empty when complete)."""
        gaps = []
        if ee:
            gaps += [f"{s}_{p}.parquet" for s in EE_SAMPLES for p in FUURE_SPLITS if not self.fuure.get((s, p))]
        if pp:
            gaps += [f"{s}_NNN.root" for s in pp_samples if not any(self.jetclass.get((s, p))
                                                                   for p in ("", *JETCLASS_SPLITS))]
        return gaps

    def check(self, ee: bool = True, pp: bool = True, pp_samples: tuple[str, ...] = PP_SAMPLES) -> DataFiles:
        """Check the schemas cheaply: every Fu(tau)ure file's parquet footer has the columns tauml needs, the
        first JetClass file of each class has the tree and branches; raises :class:`DataError` naming the file,
        what is missing and the fix.  Returns ``self``."""
        if ee:
            for files in self.fuure.values():
                for path in files:
                    _check_fuure_schema(path)
        if pp:
            for (sample, _split), files in sorted(self.jetclass.items()):
                if sample in pp_samples and files:
                    _check_jetclass_schema(files[0])
        return self

    # -- identity ----------------------------------------------------------------------------------------

    def all_files(self, ee: bool = True, pp: bool = True) -> list[Path]:
        files = []
        if ee:
            files += [f for key in sorted(self.fuure) for f in self.fuure[key]]
        if pp:
            files += [f for key in sorted(self.jetclass) for f in self.jetclass[key]]
        return files

    def identity(self, ee: bool = True, pp: bool = True, hashes: bool = False) -> list[list[Any]]:
        """What identifies the files: ``[path, size in bytes, modification time in ns]`` per file (absolute
        paths, sorted by sample and split); with ``hashes`` also the SHA-256 (reads every byte: slow for the
        released files, so the cache keys do not use it)."""
        return file_identity(self.all_files(ee, pp), hashes)

    @property
    def manifest(self) -> dict[str, Any]:
        """Jets and bytes per sample (read from the files' metadata), in the form of a generated dataset's
        manifest (``events`` is None: the released files do not say)."""
        samples: dict[str, dict[str, Any]] = {}
        for (sample, split), files in sorted(self.fuure.items()):
            entry = samples.setdefault(sample, {"events": None, "jets": 0, "bytes": 0})
            for path in files:
                jets = _parquet_rows(path)
                entry["jets"] += jets
                entry[f"jets_{split}"] = entry.get(f"jets_{split}", 0) + jets
                entry["bytes"] += path.stat().st_size
        for (sample, _split), files in sorted(self.jetclass.items()):
            entry = samples.setdefault(sample, {"events": None, "jets": 0, "bytes": 0})
            for path in files:
                entry["jets"] += jetclass_entries(path)
                entry["bytes"] += path.stat().st_size
        return {"source": self.source, "root": str(self.root), "samples": samples}

    @classmethod
    def from_generated(cls, data: Any) -> DataFiles:
        """The files of a generated dataset (:class:`tauml.data.generate.GeneratedData`)."""
        found = cls(source=GENERATED, root=Path(data.root))
        for name in data.manifest.get("config", {}).get("events", {}):
            if name in EE_SAMPLES:
                for split in FUURE_SPLITS:
                    path = Path(data.root) / "fuure" / f"{name}_{split}.parquet"
                    if path.exists():
                        found.fuure[(name, split)] = (path,)
            else:
                files = tuple(sorted((Path(data.root) / "jetclass").glob(f"{name}_*.root")))
                if files:
                    found.jetclass[(name, "")] = files
        return found


def file_identity(paths: Iterable[str | os.PathLike[str]], hashes: bool = False) -> list[list[Any]]:
    """``[absolute path, size in bytes, modification time in ns]`` of each file (with ``hashes`` also its SHA-256)."""
    rows = []
    for path in paths:
        stat = os.stat(path)
        row: list[Any] = [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]
        if hashes:
            from tauml.cache import file_digest

            row.append(file_digest(path))
        rows.append(row)
    return rows


def parquet_rows(path: str | os.PathLike[str]) -> int:
    """The number of jets (rows) of a parquet file, from its footer (nothing else is read)."""
    return _parquet_rows(Path(path))


def _parquet_rows(path: Path) -> int:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pyarrow.ArrowException, OSError) as error:
        raise DataError(f"{path} is not a readable parquet file ({error}); it may be truncated by an interrupted "
                        "download. Delete it and fetch it again.") from error


def jetclass_entries(path: str | os.PathLike[str]) -> int:
    """The number of jets in a JetClass file, from its metadata (ROOT: the tree's entries; parquet: rows);
    remembered per path, size and modification time."""
    stat = os.stat(path)
    return _jetclass_entries(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=4096)
def _jetclass_entries(name: str, size: int, mtime_ns: int) -> int:
    path = Path(name)
    if path.suffix == ".parquet":
        return _parquet_rows(path)
    import uproot  # (local: start-up speed)

    try:
        with uproot.open(path) as file:
            return int(file[JETCLASS_TREE].num_entries)
    except Exception as error:  # uproot raises many types for damaged or foreign files
        raise DataError(f"JetClass file {path} has no readable TTree '{JETCLASS_TREE}' ({type(error).__name__}: "
                        f"{error}); is it a JetClass file? Delete it and download it again.") from error


def _check_fuure_schema(path: Path) -> None:
    try:
        names = set(pq.read_schema(path).names)
    except (pyarrow.ArrowException, OSError) as error:
        raise DataError(f"Fu(tau)ure file {path} is not a readable parquet file ({error}); it may be truncated by "
                        "an interrupted download. Delete it and fetch it again (tauml fetch "
                        f"{path.name}).") from error
    missing = [c for c in FUURE_REQUIRED if c not in names]
    if missing:
        raise DataError(
            f"{path} is named like a Fu(tau)ure file but lacks the column(s) {', '.join(missing)} (it has "
            f"{', '.join(sorted(names)[:20])}{' ...' if len(names) > 20 else ''}). Expected the Fu(tau)ure schema "
            "(docs/data.md): fetch the released file (tauml fetch NAME) or rename this file so that it is not "
            "taken for one"
        )


def _check_jetclass_schema(path: Path) -> None:
    if path.suffix == ".parquet":
        try:
            names = set(pq.read_schema(path).names)
        except (pyarrow.ArrowException, OSError) as error:
            raise DataError(f"JetClass file {path} is not a readable parquet file ({error}); delete it and download "
                            "it again.") from error
    else:
        import uproot  # (local: start-up speed)

        try:
            with uproot.open(path) as file:
                if JETCLASS_TREE not in file:
                    raise DataError(f"{path} is named like a JetClass file but has no TTree '{JETCLASS_TREE}' (it "
                                    f"holds {', '.join(file.keys()) or 'nothing'}); give the released JetClass files")
                names = set(file[JETCLASS_TREE].keys(recursive=False))
        except DataError:
            raise
        except Exception as error:
            raise DataError(f"JetClass file {path} is not a readable ROOT file ({type(error).__name__}: {error}); it "
                            "may be truncated by an interrupted download. Delete it and download it again.") from error
    missing = [b for b in JETCLASS_REQUIRED if b not in names]
    if missing:
        raise DataError(
            f"{path} is named like a JetClass file but lacks the branch(es) {', '.join(missing)} tauml needs. "
            "Expected the JetClass schema (docs/data.md): give the released files or rename this one"
        )


# ---------------------------------------------------------------------------------------------------------
# Resolving a source
# ---------------------------------------------------------------------------------------------------------


def is_file_source(source: str) -> bool:
    """Whether ``source`` names files (``"files"``, a path or a glob), not ``"generated"``."""
    return source != GENERATED


def _split_of(path: Path, base: Path) -> str:
    """The JetClass split of ``path``: the nearest ``train_*``/``val_*``/``test_*`` folder below ``base``."""
    try:
        parts = path.parent.relative_to(base).parts
    except ValueError:
        parts = path.parent.parts[-1:]
    if path.parent == base:
        parts = (base.name,)
    for name in reversed(parts):
        match = SPLIT_FOLDER.match(name)
        if match:
            return match["split"]
    return ""


def _walk(folder: Path) -> list[Path]:
    found = []
    for here, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(here) / f for f in sorted(files)]
    return found


def resolve(source: str, fetched_dir: str | os.PathLike[str] | None = None) -> DataFiles:
    """The files of a file source: ``"files"`` (what ``tauml fetch`` stored, in ``fetched_dir`` or
    :func:`tauml.data.manifest.data_dir`), a folder, a file, a glob, or several joined by ``os.pathsep``.

    Raises :class:`DataError` for a source that names nothing, a folder without any Fu(tau)ure or JetClass file
    (naming the expected layouts and what was found), and a file found twice (same sample, split and number).
    Cheap: names and ``stat`` only; :meth:`DataFiles.check` reads the schemas.
    """
    if source == GENERATED:
        raise ValueError("resolve() is for file sources; the generated data come from pipeline.dataset")
    if source == FETCHED:
        from tauml.data.manifest import data_dir  # (local: the manifest module reads yaml)

        base = Path(fetched_dir) if fetched_dir is not None else data_dir()
        roots = [(base, _walk(base) if base.is_dir() else [])]
    else:
        roots = []
        for part in source.split(os.pathsep):
            part = os.path.expanduser(part)
            if _glob_chars(part):
                matches = [Path(m) for m in sorted(glob.glob(part, recursive=True))]
                if not matches:
                    raise DataError(f"--data {part!r}: the pattern matches no file. Give a folder, a file or a glob "
                                    f"of data files in the released layouts ({FUURE_LAYOUT}; {JETCLASS_LAYOUT})")
                base = Path(os.path.commonpath([os.path.abspath(m) for m in matches]))
                base = base if base.is_dir() else base.parent
                files: list[Path] = []
                for m in matches:
                    files += _walk(m) if m.is_dir() else [m]
                roots.append((base, files))
            else:
                path = Path(part)
                if not path.exists():
                    raise DataError(f"--data {part!r} does not exist. Give a folder, a file or a glob of data files "
                                    f"in the released layouts ({FUURE_LAYOUT}; {JETCLASS_LAYOUT}), 'files' for what "
                                    "`tauml fetch` stored, or 'generated'")
                roots.append((path if path.is_dir() else path.parent, _walk(path) if path.is_dir() else [path]))
    found = _classify(source, roots)
    if source != FETCHED and os.pathsep not in source and not _glob_chars(source):
        found.generated_key = generated_dataset_key(os.path.expanduser(source))
    return found


def generated_dataset_key(folder: str | os.PathLike[str]) -> str | None:
    """The key of the generated dataset in ``folder`` (:func:`tauml.pipeline.data_key` of its generation settings)
    when ``tauml generate`` wrote it there, or it is a copy of one: its ``manifest.json`` names the settings and
    vouches for every data file (size, modification time, else SHA-256: :func:`tauml.cache.entry_problem`).  None
    for any other folder, or when a file differs from what the manifest recorded (then it is other data)."""
    from tauml.cache import DATA_FORMAT_VERSION, CacheError, entry_problem, read_json
    from tauml.config import ConfigError, GenerationConfig, config_hash, from_dict

    manifest = Path(folder) / "manifest.json"  # tauml.data.generate.MANIFEST
    if not manifest.is_file():
        return None
    try:
        entry = read_json(manifest)
        if not (isinstance(entry, dict) and entry.get("format_version") == DATA_FORMAT_VERSION and entry.get("files")):
            return None
        key = config_hash(from_dict(GenerationConfig, entry["config"]), DATA_FORMAT_VERSION)
    except (CacheError, ConfigError, KeyError, TypeError, ValueError):
        return None
    if key != entry.get("hash") or entry_problem(manifest) is not None:
        return None
    return key


def _classify(source: str, roots: list[tuple[Path, list[Path]]]) -> DataFiles:
    fuure: dict[tuple[str, str], list[tuple[int, Path]]] = {}
    jetclass: dict[tuple[str, str], list[tuple[int, Path]]] = {}
    seen: dict[tuple[str, str, str, int], Path] = {}
    others: list[Path] = []
    for base, files in roots:
        base = Path(os.path.abspath(base))
        for file in files:
            file = Path(os.path.abspath(file))  # not resolve(): a link keeps its own (released) name
            match = FUURE_NAME.match(file.name)
            if match:
                number = int(match["number"]) if match["number"] is not None else -1
                key = ("fuure", match["sample"], match["split"], number)
                fuure.setdefault((match["sample"], match["split"]), []).append((number, file))
            else:
                match = JETCLASS_NAME.match(file.name)
                if not (match and match["sample"] in JETCLASS_SAMPLE_LABELS):
                    others.append(file)
                    continue
                split = _split_of(file, base)
                number = int(match["number"])
                key = ("jetclass", match["sample"], split, number)
                jetclass.setdefault((match["sample"], split), []).append((number, file))
            if key in seen and seen[key] != file:
                raise DataError(
                    f"--data {source!r} holds the same file twice: {seen[key]} and {file} (same sample, split and "
                    "number). Keep one of them (a second copy, or a .root and a .parquet of the same file?)"
                )
            seen[key] = file
    root = Path(os.path.commonpath([os.path.abspath(b) for b, _ in roots])) if roots else Path(".")
    if not fuure and not jetclass:
        tars = [f.name for f in others if f.name.endswith(".tar")]
        hint = (f" The folder holds the archive(s) {', '.join(tars[:3])}: unpack them with `tauml fetch NAME "
                "--extract`." if tars else "")
        shown = ", ".join(f.name for f in others[:8]) + (" ..." if len(others) > 8 else "")
        where = "what `tauml fetch` stored, " if source == FETCHED else ""
        raise NoDataFiles(
            f"--data {source!r}: no data files in {where}{root}"
            f"{' (it holds ' + shown + ')' if others else ' (it is empty or does not exist)'}. Expected the released "
            f"layouts: {FUURE_LAYOUT}; {JETCLASS_LAYOUT}.{hint} Fix: `tauml fetch z_train.parquet` (and the other "
            "names of `tauml fetch --list`), or give the folder that holds the files, or --data generated"
        )
    return DataFiles(
        source=source, root=root,
        fuure={k: tuple(f for _, f in sorted(v)) for k, v in sorted(fuure.items())},
        jetclass={k: tuple(f for _, f in sorted(v)) for k, v in sorted(jetclass.items())},
    )
