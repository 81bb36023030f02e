"""Scans of fine-tuning runs: the unfreeze-epoch and GPT-block ablations and the training-set-size scan.

A scan is a list of :class:`~tauml.config.FinetuneConfig` *points* (built by :func:`unfreeze_points`,
:func:`block_points`, :func:`train_size_points`, or :func:`build_scan` from a preset), run one by one by
:func:`run_scan` into a :class:`ScanStore`: one JSON file per finished point, written the moment the point
finishes.  Running a scan again computes only the points the store lacks, so

* rerunning a finished scan costs nothing,
* an interrupted scan continues where it stopped,
* a scan is widened (more seeds, more training sizes) by running the larger list: only new points run.

:func:`summarize` turns the stored points into mean ± standard deviation over seeds, and :func:`data_efficiency`
into the number of labelled jets each strategy needs to reach a reference performance (docs/studies.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from tauml import __version__
from tauml.cache import cache_path, plain, write_json
from tauml.config import (
    BASELINES,
    STRATEGIES,
    TASKS,
    ConfigError,
    FinetuneConfig,
    Preset,
    ScanConfig,
    config_hash,
    get_preset,
    identity_dict,
    to_dict,
)
from tauml.evaluation.metrics import mean_std_over_runs
from tauml.evaluation.tasks import METRIC_HIGHER_IS_BETTER
from tauml.pipeline import model_key
from tauml.pipeline.finetuning import finetune, finetune_many, resolve
from tauml.utils import progress as progress_bar

#: What :func:`build_scan` can build.
SCAN_KINDS: tuple[str, ...] = ("unfreeze", "blocks", "train_size")
#: Supervised baselines that a training-size scan may hold next to the three strategies.
BASELINE_STRATEGIES: tuple[str, ...] = BASELINES
#: Bump when the layout of a stored point changes; points of another version are recomputed.
SCAN_FORMAT_VERSION = 1
SCAN_FORMAT = "tauml-scan-point"
#: Settings that do not change what a point computes and are left out of its name.
_NOT_IN_KEY: tuple[str, ...] = ("device",)

RunFunction = Callable[[FinetuneConfig], Any]


# ----------------------------------------------------------------------------------------------------------
# The store
# ----------------------------------------------------------------------------------------------------------


def preset_key(preset: Preset | str) -> str:
    """The name of a preset's scan store: ``<name>-<hash>``.

    The hash is :func:`tauml.pipeline.model_key`: everything a fine-tuning point depends on besides its own
    :class:`FinetuneConfig` (generation, features, tokenizer, GPT, pretraining, head, baselines, and the data
    and model format versions); it leaves out ``scan`` and ``finetune``, so that widening a scan or changing
    the base fine-tuning settings keeps the points already computed (each point carries its full fine-tuning
    configuration).
    """

    preset = get_preset(preset)
    return f"{preset.name}-{model_key(preset)}"


def point_identity(config: FinetuneConfig) -> dict[str, Any]:
    """The settings that define a point: ``to_dict(config)`` without those that do not change the result
    (``device``), as plain JSON types (tuples become lists)."""
    data = json.loads(json.dumps(identity_dict(config)))
    for name in _NOT_IN_KEY:
        data.pop(name, None)
    return data


class ScanStore:
    """Finished scan points, one JSON file each in ``root``, named by ``config_hash(preset_key, point)``.

    A file holds ``config`` (``to_dict`` of the point), ``metrics`` (the run's physics metrics),
    ``history`` (per-epoch lists) and its ``summary`` (epochs, best epoch, best and final losses),
    ``reference`` (the task's no-learning reference on the same test jets, when the run gives one),
    ``seconds`` (the training time the result reports, else the wall time of the call), ``call_seconds``,
    ``n_parameters`` and ``n_trainable_parameters`` (when given), ``tauml_version`` and ``finished`` (UTC).  Files are written
    atomically: a reader never sees half a point, and an interrupted write leaves no file.

    ``ScanStore.for_preset(preset)`` opens the default store ``cache_path("scans", preset_key(preset))``,
    which also remembers the preset, so that :func:`run_scan` can run the real fine-tuning.
    """

    def __init__(self, root: str | Path, preset_key: str = "", preset: Preset | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.preset_key = preset_key
        self.preset = preset

    @classmethod
    def for_preset(cls, preset: Preset | str, root: str | Path | None = None) -> ScanStore:
        """The store of ``preset`` (a :class:`Preset` or its name), by default in tauml's cache."""
        preset = get_preset(preset)
        key = preset_key(preset)
        return cls(cache_path("scans", key) if root is None else root, preset_key=key, preset=preset)

    def __repr__(self) -> str:
        return f"ScanStore({str(self.root)!r}, preset_key={self.preset_key!r}, points={len(self)})"

    def key(self, config: FinetuneConfig) -> str:
        """The file stem of a point: the hash of the preset key and the point's settings (without device)."""
        return config_hash(self.preset_key, point_identity(config))

    def path(self, config: FinetuneConfig) -> Path:
        return self.root / f"{self.key(config)}.json"

    def get(self, config: FinetuneConfig) -> dict[str, Any] | None:
        """The stored record of ``config``, or None when the point has not finished (or was stored by another
        format version, which is then recomputed)."""
        path = self.path(config)
        if not path.exists():
            return None
        record = _read_record(path)
        if record.get("format_version") != SCAN_FORMAT_VERSION:
            return None
        if record.get("config_identity") != point_identity(config):
            raise ConfigError(
                f"{path} holds another point than the one asked for (a hash collision or an edited file); "
                f"delete it to recompute the point"
            )
        return record

    def __contains__(self, config: object) -> bool:
        return dataclasses.is_dataclass(config) and not isinstance(config, type) and self.get(config) is not None

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*.json"))

    def put(self, config: FinetuneConfig, result: Any, seconds: float | None = None) -> dict[str, Any]:
        """Store the result of one finished point and return the stored record.

        ``result`` is a dict (e.g. ``FinetuneResult.to_dict()``) or an object with ``to_dict()``; it must have
        ``metrics`` (a dict of numbers) and may have ``history`` (dict of per-epoch lists) and ``best_epoch``.
        """

        data = _result_dict(result)
        history = {str(k): [plain(x) for x in v] for k, v in (data.get("history") or {}).items()}
        trained = data.get("seconds")  # a result loaded from finetune's own cache took its original time
        record = {
            "format": SCAN_FORMAT,
            "format_version": SCAN_FORMAT_VERSION,
            "key": self.key(config),
            "preset_key": self.preset_key,
            "config": to_dict(config),
            "config_identity": point_identity(config),
            "metrics": {str(k): plain(v) for k, v in data["metrics"].items()},
            "reference": {str(k): plain(v) for k, v in (data.get("reference") or {}).items()},
            "history": history,
            "summary": history_summary(history, data.get("best_epoch")),
            "seconds": float(trained) if trained else (None if seconds is None else float(seconds)),
            "call_seconds": None if seconds is None else float(seconds),
            "n_parameters": data.get("n_parameters"),
            "n_trainable_parameters": data.get("n_trainable_parameters"),
            "tauml_version": __version__,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(self.path(config), record)
        return json.loads(json.dumps(record))  # the same plain types a later get() returns

    def points(self) -> list[dict[str, Any]]:
        """Every stored point of the current format, ordered by task, strategy, train size, settings, seed."""
        records = [_read_record(path) for path in sorted(self.root.glob("*.json"))]
        records = [r for r in records if r.get("format_version") == SCAN_FORMAT_VERSION]
        return sorted(records, key=_record_order)


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read the scan point {path} ({err}); delete it to recompute the point") from err
    if not isinstance(record, dict) or record.get("format") != SCAN_FORMAT:
        raise ConfigError(f"{path} is not a tauml scan point; move it out of the scan store {path.parent}")
    return record


def _record_order(record: Mapping[str, Any]) -> tuple[Any, ...]:
    config = record["config"]
    return (_rank(config.get("task"), TASKS), _rank(config.get("strategy"), STRATEGIES + BASELINE_STRATEGIES),
            config.get("train_size", 0), json.dumps(config, sort_keys=True))


def _rank(value: Any, order: Sequence[str]) -> tuple[int, str]:
    return (order.index(value), "") if value in order else (len(order), str(value))


def _result_dict(result: Any) -> dict[str, Any]:
    data = result.to_dict() if hasattr(result, "to_dict") else result
    if not isinstance(data, Mapping):
        raise TypeError(f"a scan run must return a dict or an object with to_dict(), got {type(result).__name__}")
    if not isinstance(data.get("metrics"), Mapping):
        raise ValueError("the result of a scan point has no 'metrics' dict; the run function must return one")
    return dict(data)


def history_summary(history: Mapping[str, Sequence[float]], best_epoch: int | None = None) -> dict[str, Any]:
    """What a point's training history comes to: epochs run, best epoch (0-based; the one of lowest validation
    loss unless given), the best and final validation loss and the final training loss (None when absent)."""
    val = [float(v) for v in history.get("val_loss", [])]
    train = [float(v) for v in history.get("train_loss", [])]
    finite = [(v, i) for i, v in enumerate(val) if math.isfinite(v)]
    if best_epoch is None and finite:
        best_epoch = min(finite)[1]
    best_val = val[best_epoch] if best_epoch is not None and 0 <= best_epoch < len(val) else None
    return {
        "epochs": max(len(val), len(train)),
        "best_epoch": best_epoch,
        "best_val_loss": best_val,
        "final_val_loss": val[-1] if val else None,
        "final_train_loss": train[-1] if train else None,
    }


# ----------------------------------------------------------------------------------------------------------
# Points
# ----------------------------------------------------------------------------------------------------------


def _dedupe(configs: Iterable[FinetuneConfig]) -> list[FinetuneConfig]:
    seen, out = set(), []
    for config in configs:
        if config not in seen:
            seen.add(config)
            out.append(config)
    return out


def _check_seeds(scan: ScanConfig) -> None:
    if not scan.seeds:
        raise ConfigError("scan.seeds is empty: give at least one seed, e.g. seeds=(1, 2, 3)")


def unfreeze_points(base: FinetuneConfig, scan: ScanConfig) -> list[FinetuneConfig]:
    """The unfreeze-epoch ablation: ``fine_tuning`` at ``scan.ablation_train_size`` jets with the backbone
    unfrozen at epoch round(f x base.epochs) for each f in ``scan.unfreeze_fractions``, times ``scan.seeds``.

    f = 0 trains the backbone from the first epoch; f = 1 gives unfreeze_epoch = epochs, i.e. the backbone is
    never unfrozen, which is the fixed backbone (the core paper: "unfreezing at epoch 100 is equivalent to the
    fixed backbone").  Fractions that round to the same epoch give one point.  Order: seed, then fraction.
    """
    _check_seeds(scan)
    if not scan.unfreeze_fractions:
        raise ConfigError("scan.unfreeze_fractions is empty: give fractions in [0, 1], e.g. (0, 0.5, 1)")
    for fraction in scan.unfreeze_fractions:
        if not 0.0 <= fraction <= 1.0:
            raise ConfigError(f"unfreeze fraction {fraction} must lie in [0, 1] (1 = never unfrozen)")
    epochs = [math.floor(f * base.epochs + 0.5) for f in scan.unfreeze_fractions]
    return _dedupe(
        dataclasses.replace(base, strategy="fine_tuning", unfreeze_epoch=epoch,
                            train_size=scan.ablation_train_size, seed=seed)
        for seed in scan.seeds for epoch in epochs
    )


def block_points(base: FinetuneConfig, scan: ScanConfig, n_blocks_pretrained: int) -> list[FinetuneConfig]:
    """The GPT-block ablation: the first 1, 2, ..., ``n_blocks_pretrained`` pretrained blocks, with the
    strategy and unfreeze epoch of ``base`` (``fine_tuning`` unless changed), at ``scan.ablation_train_size``
    jets, times ``scan.seeds``.  ``n_gpt_blocks`` is written out (k, never 0) so each point names its depth."""
    _check_seeds(scan)
    if n_blocks_pretrained < 1:
        raise ConfigError(f"n_blocks_pretrained={n_blocks_pretrained} must be at least 1 (the backbone's n_layer)")
    if base.strategy not in STRATEGIES:
        raise ConfigError(f"a GPT-block scan needs a GPT strategy ({', '.join(STRATEGIES)}), not {base.strategy!r}")
    return _dedupe(
        dataclasses.replace(base, n_gpt_blocks=k, train_size=scan.ablation_train_size, seed=seed)
        for seed in scan.seeds for k in range(1, n_blocks_pretrained + 1)
    )


def train_size_points(base: FinetuneConfig, scan: ScanConfig,
                      strategies: Sequence[str] = STRATEGIES) -> list[FinetuneConfig]:
    """The data-efficiency scan: every strategy at every ``scan.train_sizes`` jets, times ``scan.seeds``.

    Ordered seed first, then size (ascending), then strategy, so that an interrupted scan already holds whole
    curves of the first seeds.  ``strategies`` may include the baselines ``part`` and ``deepset``.
    """
    _check_seeds(scan)
    known = STRATEGIES + BASELINE_STRATEGIES
    for strategy in strategies:
        if strategy not in known:
            raise ConfigError(f"unknown strategy {strategy!r}; choose from {', '.join(known)}")
    if not scan.train_sizes or any(int(n) < 1 for n in scan.train_sizes):
        raise ConfigError(f"scan.train_sizes={scan.train_sizes} must be positive numbers of jets")
    return _dedupe(
        dataclasses.replace(base, strategy=strategy, train_size=int(size), seed=seed)
        for seed in scan.seeds for size in sorted(scan.train_sizes) for strategy in strategies
    )


def build_scan(preset: Preset | str, kind: str, task: str, base: FinetuneConfig | None = None,
               scan: ScanConfig | None = None, strategies: Sequence[str] = STRATEGIES,
               n_blocks_pretrained: int | None = None) -> list[FinetuneConfig]:
    """The points of one scan of ``preset`` for ``task``: ``kind`` is ``"unfreeze"``, ``"blocks"`` or
    ``"train_size"``.  ``base`` and ``scan`` default to the preset's ``finetune`` and ``scan`` settings,
    ``n_blocks_pretrained`` to its ``gpt.n_layer``; ``strategies`` is used by the training-size scan.

    The points are resolved as fine-tuning resolves them (``tauml.pipeline.finetuning.resolve``: n_gpt_blocks 0
    becomes the preset's block count, an unfreeze epoch that does not apply becomes 0), so that equal trainings
    have equal points and run once, e.g. the block scan's deepest point and the training-size scan's
    fine-tuning point at the ablation size."""
    preset = get_preset(preset)
    if kind not in SCAN_KINDS:
        raise ConfigError(f"unknown scan kind {kind!r}; choose from {', '.join(SCAN_KINDS)}")
    if task not in TASKS:
        raise ConfigError(f"task={task!r}; choose from {', '.join(TASKS)}")
    base = dataclasses.replace(base or preset.finetune, task=task)
    scan = scan or preset.scan
    if kind == "unfreeze":
        points = unfreeze_points(base, scan)
    elif kind == "blocks":
        points = block_points(base, scan, n_blocks_pretrained or preset.gpt.n_layer)
    else:
        points = train_size_points(base, scan, strategies)

    return _dedupe(resolve(preset, config) for config in points)


# ----------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------


def _default_run(preset: Preset | None, progress: bool) -> RunFunction:
    if preset is None:
        raise ConfigError(
            "run_scan has no run function and the store knows no preset: pass run=..., or open the store with "
            "ScanStore.for_preset(preset) to run tauml.pipeline.finetune"
        )

    def run(config: FinetuneConfig) -> Any:
        return finetune(preset, config, progress=progress)

    return run


def run_scan(points: Sequence[FinetuneConfig], store: ScanStore, run: RunFunction | None = None,
             progress: bool = True, workers: int | None = None) -> list[dict[str, Any]]:
    """Run the points missing from ``store``, storing each as soon as it finishes; return every point's record
    in the order of ``points``.

    ``run(config)`` trains one point and returns a dict or an object with ``to_dict()`` holding ``metrics``
    (and ``history``, ``best_epoch``); by default it is ``tauml.pipeline.finetune`` with the store's
    preset, run in ``workers`` parallel processes (default: the usable cores; ``workers=1`` runs here).  An exception in ``run`` stops the scan; the points finished before it stay stored, and calling
    ``run_scan`` again continues with the others.
    """

    points = list(points)
    for config in points:
        if not dataclasses.is_dataclass(config) or isinstance(config, type):
            raise TypeError(f"scan points must be FinetuneConfig (or another settings dataclass, e.g. the joint "
                            f"analysis's JointConfig), got {type(config).__name__}")
    records: dict[str, dict[str, Any]] = {}
    missing = []
    for config in points:
        key = store.key(config)
        if key in records:
            continue
        record = store.get(config)
        if record is None:
            if config not in missing:
                missing.append(config)
        else:
            records[key] = record
    if missing and run is None and store.preset is not None and workers != 1:
        # the default run in parallel worker processes; each point is stored as soon as it finishes

        def put(config: FinetuneConfig, result: Any) -> None:
            records[store.key(config)] = store.put(config, result, seconds=getattr(result, "seconds", 0.0))

        finetune_many(store.preset, missing, workers=workers, progress=progress, on_result=put)
        return [records[store.key(config)] for config in points]
    if missing and run is None:
        run = _default_run(store.preset, progress)
    bar = progress_bar(total=len(points), desc="scan points", **({} if progress else {"disable": True}))
    bar.update(len(points) - sum(1 for c in points if c in missing))
    try:
        for config in missing:
            if isinstance(config, FinetuneConfig):
                bar.set_postfix_str(f"{config.task} {config.strategy} n={config.train_size} "
                                    f"unfreeze={config.unfreeze_epoch} blocks={config.n_gpt_blocks or 'all'} "
                                    f"seed={config.seed}")
            else:
                bar.set_postfix_str(" ".join(str(v) for v in dataclasses.astuple(config)[:6]))
            start = time.perf_counter()
            result = run(config)
            records[store.key(config)] = store.put(config, result, seconds=time.perf_counter() - start)
            bar.update(sum(1 for c in points if c == config))
    finally:
        bar.close()
    return [records[store.key(config)] for config in points]


# ----------------------------------------------------------------------------------------------------------
# Summaries
# ----------------------------------------------------------------------------------------------------------


def select(records: Iterable[Mapping[str, Any]], **settings: Any) -> list[dict[str, Any]]:
    """The records whose configuration has every given setting, e.g. ``select(records, task="reg",
    train_size=2000)``; a sequence value matches any of its entries (``strategy=("from_scratch", "fine_tuning")``)."""
    out = []
    for record in records:
        config = record["config"]
        for name, wanted in settings.items():
            if name not in config:
                raise KeyError(f"a scan point has no setting {name!r}; settings: {', '.join(sorted(config))}")
            options = wanted if isinstance(wanted, (list, tuple, set, frozenset)) else (wanted,)
            if config[name] not in options:
                break
        else:
            out.append(dict(record))
    return out


def metric_value(record: Mapping[str, Any], metric: str) -> float | None:
    """A point's value of ``metric``: from its ``metrics``, else from its history ``summary``
    (``best_val_loss``, ``final_train_loss`` ...); None when it has neither."""
    for part in ("metrics", "summary"):
        value = (record.get(part) or {}).get(metric)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"metric {metric!r} of a scan point is {type(value).__name__}, not a number; "
                                f"summarise a numeric metric")
            return float(value)
    return None


def reference_value(results: Iterable[Mapping[str, Any]], metric: str) -> float | None:
    """The mean no-learning reference of ``metric`` stored with the points (e.g. the reco-jet ``resolution``
    of the regression, the counting ``accuracy`` of the decay modes); None when no point has one.  For the
    horizontal line of :func:`tauml.plots.scans.plot_train_size_scan`."""
    values = [float(v) for r in results if isinstance(v := (r.get("reference") or {}).get(metric), (int, float))]
    return float(np.mean(values)) if values else None


def summarize(results: Iterable[Mapping[str, Any]], by: str, metric: str) -> list[dict[str, Any]]:
    """Mean and standard deviation (ddof = 0, as :func:`tauml.evaluation.metrics.mean_std_over_runs`) of ``metric`` over
    seeds, for each task, strategy and value of the setting ``by`` (e.g. ``"unfreeze_epoch"``,
    ``"n_gpt_blocks"``, ``"train_size"``).

    Returns rows ``{"task", "strategy", by, "metric", "mean", "std", "n", "seeds", "values"}`` ordered by task,
    strategy and value.  Records without the metric (e.g. another task's) are left out; identical points are
    counted once.  Records of one row must differ only in their seed: if they differ in another setting (two
    scans mixed), a ``ValueError`` names it; pick one scan with :func:`select` first.
    """
    results = list(results)
    groups: dict[tuple[Any, Any, Any], dict[str, tuple[dict[str, Any], float]]] = {}
    for record in results:
        config = record["config"]
        if by not in config:
            raise KeyError(f"scan points have no setting {by!r}; choose from {', '.join(sorted(config))}")
        value = metric_value(record, metric)
        if value is None:
            continue
        identity = {k: v for k, v in config.items() if k not in _NOT_IN_KEY}
        group = groups.setdefault((config["task"], config["strategy"], config[by]), {})
        group[json.dumps(identity, sort_keys=True)] = (identity, value)
    if not groups:
        available = sorted({m for r in results for m in (r.get("metrics") or {})})
        raise KeyError(f"no scan point has the metric {metric!r}; stored metrics: {', '.join(available) or 'none'}")
    rows = []
    for (task, strategy, value), members in groups.items():
        configs = [identity for identity, _ in members.values()]
        _check_only_seed_differs(configs, by, task, strategy, value)
        pairs = sorted((config["seed"], v) for config, v in members.values())
        mean, std = _mean_std([v for _, v in pairs])
        rows.append({"task": task, "strategy": strategy, by: value, "metric": metric, "mean": mean, "std": std,
                     "n": len(pairs), "seeds": [s for s, _ in pairs], "values": [v for _, v in pairs]})
    return sorted(rows, key=lambda r: (_rank(r["task"], TASKS), _rank(r["strategy"], STRATEGIES + BASELINE_STRATEGIES),
                                       r[by]))


def _mean_std(values: Sequence[float]) -> tuple[float, float]:

    return mean_std_over_runs(values)


def _check_only_seed_differs(configs: list[dict[str, Any]], by: str, task: str, strategy: str, value: Any) -> None:
    names = set().union(*configs) - {"seed", by}
    differing = sorted(n for n in names if len({json.dumps(c.get(n)) for c in configs}) > 1)
    if differing:
        example = differing[0]
        values = sorted({json.dumps(c.get(example)) for c in configs})
        raise ValueError(
            f"the points at task={task}, strategy={strategy}, {by}={value} differ in {', '.join(differing)} "
            f"(e.g. {example}: {', '.join(values)}), not only in their seed: several scans are mixed; "
            f"pick one with select(records, {example}=...)"
        )


def data_efficiency(results: Iterable[Mapping[str, Any]], metric: str, reference_strategy: str = "from_scratch",
                    higher_is_better: bool | None = None) -> list[dict[str, Any]]:
    """How many labelled jets each strategy needs to reach the reference strategy's performance.

    Definition (docs/studies.md), per task: the *target* is the mean ``metric`` of ``reference_strategy`` at its
    largest training size.  For every strategy, n_needed is the smallest training size at which its mean
    metric reaches the target, found by linear interpolation of the mean metric against ln(train_size)
    between neighbouring scanned sizes (the first crossing, scanning sizes upwards).  The data efficiency is
    n_needed(reference) / n_needed(strategy), the ratio of paper 002 ("the ratio of the required dataset
    size to reach a performance level as compared to that of the baseline"); the reference has 1.

    Nothing is extrapolated.  A strategy whose smallest scanned size already reaches the target needs at
    most that size (``status="at_or_below_smallest"``), one that never reaches it needs more than its largest
    size (``"beyond_largest"``, ``train_size_needed = inf``).  Then ``efficiency`` is None and
    ``efficiency_range = (low, high)`` holds what the scan allows (exact values have low = high).

    Returns one row per task and strategy: ``task, strategy, metric, higher_is_better, reference_strategy,
    target, train_size_needed, train_size_range, status, efficiency, efficiency_range, note``.
    """
    if higher_is_better is None:
        if metric not in METRIC_HIGHER_IS_BETTER:
            raise ConfigError(f"metric {metric!r} has no known direction: pass higher_is_better=True or False")
        higher_is_better = METRIC_HIGHER_IS_BETTER[metric]
    sign = 1.0 if higher_is_better else -1.0
    rows = summarize(results, by="train_size", metric=metric)
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for row in rows:
            if row["task"] == task:
                sizes, means = curves.get(row["strategy"], ([], []))
                curves[row["strategy"]] = ([*sizes, row["train_size"]], [*means, row["mean"]])
        if reference_strategy not in curves:
            raise ValueError(f"task {task}: no points of the reference strategy {reference_strategy!r}; "
                             f"strategies: {', '.join(curves)}")
        curves = {s: (np.asarray(n, float), np.asarray(m, float)) for s, (n, m) in curves.items()}
        ref_sizes, ref_means = curves[reference_strategy]
        target = float(ref_means[np.argmax(ref_sizes)])
        needed = {s: _size_needed(n, sign * m, sign * target) for s, (n, m) in curves.items()}
        ref_low, ref_high, _ = needed[reference_strategy]
        for strategy, (low, high, status) in needed.items():
            if strategy == reference_strategy:  # by definition, however its own curve was sampled
                eff_low = eff_high = 1.0
                exact = True
            else:
                eff_low, eff_high = _ratio(ref_low, high), _ratio(ref_high, low)
                exact = status == "reached" and needed[reference_strategy][2] == "reached"
            out.append({
                "task": task, "strategy": strategy, "metric": metric, "higher_is_better": higher_is_better,
                "reference_strategy": reference_strategy, "target": target,
                "train_size_needed": high if status != "beyond_largest" else math.inf,
                "train_size_range": (low, high), "status": status,
                "efficiency": eff_low if exact else None, "efficiency_range": (eff_low, eff_high),
                "note": _efficiency_note(status, low, high, eff_low, eff_high, exact, strategy == reference_strategy),
            })
    return out


def _size_needed(sizes: np.ndarray, scores: np.ndarray, target: float) -> tuple[float, float, str]:
    """(low, high, status) of the training size at which ``scores`` (larger = better) first reach ``target``."""
    order = np.argsort(sizes)
    sizes, scores = sizes[order], scores[order]
    finite = np.isfinite(scores)
    sizes, scores = sizes[finite], scores[finite]
    if len(sizes) == 0:
        return math.inf, math.inf, "beyond_largest"
    if scores[0] >= target:
        return 0.0, float(sizes[0]), "at_or_below_smallest"
    logs = np.log(sizes)
    for i in range(1, len(sizes)):
        if scores[i] >= target:
            t = (target - scores[i - 1]) / (scores[i] - scores[i - 1])
            n = float(np.exp(logs[i - 1] + t * (logs[i] - logs[i - 1])))
            return n, n, "reached"
    return float(sizes[-1]), math.inf, "beyond_largest"


def _ratio(numerator: float, denominator: float) -> float:
    if denominator == 0.0:
        return math.inf if numerator > 0 else math.nan
    if math.isinf(denominator):
        return 0.0 if math.isfinite(numerator) else math.nan
    return numerator / denominator


def _efficiency_note(status: str, low: float, high: float, eff_low: float, eff_high: float, exact: bool,
                     is_reference: bool) -> str:
    if is_reference:
        where = f"{high:.4g} jets" if status == "reached" else f"at most {high:.4g} jets (its smallest size)"
        return f"the reference: efficiency 1 by definition; reaches its own target with {where}"
    if status == "at_or_below_smallest":
        return (f"reaches the target already at the smallest scanned size {high:.4g}: needs at most that many "
                f"jets, efficiency >= {eff_low:.3g}")
    if status == "beyond_largest":
        return (f"does not reach the target within the scanned sizes (up to {low:.4g} jets): needs more, "
                f"efficiency < {eff_high:.3g}")
    if not exact:
        return (f"needs {high:.4g} jets; the reference reaches its own target at or below its smallest size, so the "
                f"efficiency lies in [{eff_low:.3g}, {eff_high:.3g}]")
    return f"needs {high:.4g} jets, efficiency {eff_low:.3g}"
