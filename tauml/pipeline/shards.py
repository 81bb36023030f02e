"""Token shards (and feature shards) of many files, built once into the cache, per file, optionally on a dask cluster.

:func:`token_shards` turns a tuple of jet files (what :func:`tauml.pipeline.pp_files` names, or any JetClass /
Fu(tau)ure files) into one verified token shard per file (:mod:`tauml.data.shards`): each file is read in chunks
(:func:`tauml.data.chunks.iter_jet_chunks`), its features built per chunk in float32 and tokenized by the preset's
frozen tokenizer, and the sequences written without padding under
``<cache>/shards/<hash of (tokenizer, its SHA-256, the file's path, size and modification time, features)>``.

* Reuse: a shard whose entry verifies (sizes, digests, built from this tokenizer) is not built again, so an
  interrupted run resumes file by file, and a changed file or tokenizer gets a new shard.
* Many files on many cores: ``scheduler="local"`` runs the files on a ``dask.distributed.LocalCluster`` (one
  single-threaded worker per usable core), a ``"tcp://host:port"`` address on that dask scheduler (an
  HTCondor or Slurm dask deployment unchanged; the workers must see the files and the cache folder), and
  ``None`` (the default; ``TAUML_DASK_SCHEDULER`` overrides it) in this process.  A progress bar counts the files.

:func:`feature_shards` does the same without a tokenizer: the float32 constituent features of each file, for the
streamed tokenizer training (``TokenizerConfig.streaming``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from tauml.cache import building, cache_path, clear_entry
from tauml.config import FeatureConfig, Preset, config_hash, get_preset
from tauml.data.chunks import CHUNK_JETS, iter_jet_chunks
from tauml.data.schema import DataError
from tauml.data.shards import (
    SHARD_FORMAT,
    TokenShard,
    open_shard,
    shard_problem,
    write_feature_shard,
    write_shard,
)
from tauml.utils import dask_client, dask_scheduler
from tauml.utils import progress as progress_bar


def file_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies an input file in a cache key: absolute path, size and modification time (ns)."""
    path = Path(path).expanduser().resolve()
    try:
        stat = path.stat()
    except OSError as err:
        raise DataError(f"input file {path} cannot be read ({err}); check the path") from err
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def shard_dir(tokenizer_key: str, tokenizer_sha256: str, file: str | os.PathLike[str], features: FeatureConfig,
              max_constituents: int) -> Path:
    """The cache folder of one file's token shard (named only)."""
    key = config_hash(tokenizer_key, tokenizer_sha256, file_identity(file), features, max_constituents, SHARD_FORMAT)
    return cache_path("shards", key, create=False)


@lru_cache(maxsize=2)
def _frozen_tokenizer(path: str, sha256: str):
    from tauml.models.checkpoints import load_tokenizer

    return load_tokenizer(path)


def build_file_shard(file: str, folder: str, tokenizer_path: str, tokenizer_sha256: str, features: FeatureConfig,
                     max_constituents: int, chunk_jets: int = CHUNK_JETS) -> int:
    """Build (or verify and keep) the token shard of one file in ``folder``; the number of jets.  Runs in a dask
    worker as well as here: everything it needs is in its arguments."""
    import torch

    built_from = {"tokenizer_sha256": tokenizer_sha256, "source": file_identity(file)}
    with building(folder) as path:
        problem = shard_problem(path, {"tokenizer_sha256": tokenizer_sha256})
        if problem is None:
            return len(open_shard(path))
        if any(p.name != ".lock" for p in path.iterdir()):
            clear_entry(path, problem)
        tokenizer = _frozen_tokenizer(tokenizer_path, tokenizer_sha256)
        with torch.inference_mode():
            chunks = (tokenizer.tokenize(a.features, a.mask)
                      for a in iter_jet_chunks(file, max_constituents, chunk_jets, features))
            entry = write_shard(path, ((t.numpy(), m.numpy()) for t, m in chunks), tokenizer.vocab_size,
                                max_constituents + 2, built_from=built_from, source=str(file))
    return entry["n_jets"]


def token_shards(preset: str | Preset, files: Sequence[str | os.PathLike[str]], progress: bool = True,
                 scheduler: str | None = None, chunk_jets: int = CHUNK_JETS) -> list[TokenShard]:
    """The verified token shards of ``files`` under the preset's tokenizer (trained first where it is not cached;
    shards built where missing), in file order.

    ``scheduler``: None (this process; ``TAUML_DASK_SCHEDULER`` overrides it), ``"local"`` (a LocalCluster over
    the usable cores), ``"local:N"`` (N worker processes; ``"local:N:threads"`` N threads), or the address of a
    dask scheduler.
    """
    from tauml import pipeline  # (the cached tokenizer; this module is part of the pipeline)

    p = get_preset(preset)
    pipeline.tokenizer(p, progress=progress)
    return build_shards(files, pipeline.tokenizer_dir(p) / pipeline.TOKENIZER_FILE, pipeline.tokenizer_key(p),
                        pipeline.tokenizer_digest(p), p.features, p.features.max_constituents_jetclass,
                        progress=progress, scheduler=scheduler, chunk_jets=chunk_jets)


def build_shards(files: Sequence[str | os.PathLike[str]], tokenizer_path: str | os.PathLike[str], tokenizer_key: str,
                 tokenizer_sha256: str, features: FeatureConfig, max_constituents: int, progress: bool = True,
                 scheduler: str | None = None, chunk_jets: int = CHUNK_JETS) -> list[TokenShard]:
    """:func:`token_shards` for a given tokenizer file (its cache key and SHA-256 name the shards)."""
    folders = [str(shard_dir(tokenizer_key, tokenizer_sha256, f, features, max_constituents)) for f in files]
    return _build_all(files, folders, build_file_shard, {"tokenizer_sha256": tokenizer_sha256},
                      (str(tokenizer_path), tokenizer_sha256, features, max_constituents, chunk_jets),
                      progress, scheduler, "token shards")


def feature_shard_dir(file: str | os.PathLike[str], features: FeatureConfig, max_constituents: int) -> Path:
    """The cache folder of one file's feature shard (named only)."""
    key = config_hash("features", file_identity(file), features, max_constituents, SHARD_FORMAT)
    return cache_path("shards", key, create=False)


def build_file_feature_shard(file: str, folder: str, features: FeatureConfig, max_constituents: int,
                             chunk_jets: int = CHUNK_JETS) -> int:
    """Build (or verify and keep) the feature shard of one file in ``folder`` (float32 constituent features, read
    and built chunk by chunk); the number of jets.  Runs in a dask worker as well as here."""
    built_from = {"source": file_identity(file)}
    with building(folder) as path:
        problem = shard_problem(path, built_from)
        if problem is None:
            return len(open_shard(path))
        if any(p.name != ".lock" for p in path.iterdir()):
            clear_entry(path, problem)
        chunks = ((a.features, a.mask) for a in iter_jet_chunks(file, max_constituents, chunk_jets, features))
        entry = write_feature_shard(path, chunks, max_constituents, built_from=built_from, source=str(file))
    return entry["n_jets"]


def feature_shards(files: Sequence[str | os.PathLike[str]], features: FeatureConfig, max_constituents: int,
                   progress: bool = True, scheduler: str | None = None,
                   chunk_jets: int = CHUNK_JETS) -> list[TokenShard]:
    """The verified feature shards of ``files`` (built where missing, on ``scheduler`` as :func:`token_shards`), in
    file order: what the streamed tokenizer training reads (:func:`tauml.pipeline.tokenizer` with
    ``TokenizerConfig.streaming``)."""
    folders = [str(feature_shard_dir(f, features, max_constituents)) for f in files]
    return _build_all(files, folders, build_file_feature_shard, {},
                      (features, max_constituents, chunk_jets), progress, scheduler, "feature shards")


def _build_all(files: Sequence[str | os.PathLike[str]], folders: list[str], build_one: Any,
               built_from: dict[str, Any], args: tuple, progress: bool, scheduler: str | None,
               desc: str) -> list[TokenShard]:
    """``build_one(file, folder, *args)`` for every file whose shard is missing or damaged, here or on dask; then
    every shard, verified."""
    if not files:
        raise DataError("no input files to tokenize")
    todo = [i for i, folder in enumerate(folders) if shard_problem(folder, built_from) is not None]
    scheduler = dask_scheduler(scheduler)
    bar = progress_bar(total=len(files), initial=len(files) - len(todo), desc=desc, unit="file",
                       **({} if progress else {"disable": True}))
    try:
        if todo and scheduler:
            with dask_client(scheduler) as client:
                from dask.distributed import as_completed

                futures = [client.submit(build_one, str(files[i]), folders[i], *args, pure=False) for i in todo]
                for future in as_completed(futures):
                    future.result()  # a failed file raises here, naming it
                    bar.update(1)
        else:
            for i in todo:
                build_one(str(files[i]), folders[i], *args)
                bar.update(1)
    finally:
        bar.close()
    return [open_shard(folder, built_from) for folder in folders]
