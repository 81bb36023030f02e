"""A Binder launch for a school, reproduced as closely as one machine allows: build time, then each notebook's wall
time and peak memory when a student opens it first.

    python benchmarks/bench_school.py [--core 1] [--memory-gb 2] [--notebooks 00 03] [--workdir DIR]
                                      [--out results/bench_school.md] [--cold]

What it does, and how it differs from mybinder.org:

1. **A fresh environment from ``binder/`` alone.**  The working tree (``git ls-files``: what Binder would clone) is
   copied into ``WORKDIR/repo``; a new virtual environment (``python3.11``, as ``binder/runtime.txt``) gets
   ``binder/requirements.txt`` and then runs ``binder/postBuild`` in the copy, as repo2docker does.  Packages come
   from this machine's pip configuration (its index and wheel folders stand in for PyPI and PyTorch's index).
2. **One core**: every child (the install, ``postBuild``, each notebook's kernel) runs under ``taskset -c CORE``
   (Binder gives 1-2 slow cores).  ``TAUML_WORKERS=1``, as :func:`tauml.utils.parallel_workers` chooses in a 2 GB
   container.
3. **2 GB of memory** (``--memory-gb``), enforced by an **RSS watchdog**: the peak memory of each child's process
   tree is sampled every 0.2 s (the sum of the proportional set sizes, PSS, which counts pages shared between a
   kernel and its workers once, as a cgroup does); a tree that exceeds the limit is killed and the row says so.
   ``RLIMIT_AS`` (``prlimit --as``) is *not* used: it limits each process's reserved virtual memory, not the
   memory used (torch, numba and every thread's malloc arena reserve far more than they touch), and a 2 GB
   address space is both stricter than Binder's cgroup and blind to the sum over worker processes.  The table
   also gives the summed RSS, an upper bound.
4. **A fresh cache**: ``TAUML_CACHE_DIR=WORKDIR/cache``, empty before ``postBuild``; ``postBuild`` (``tauml prepare``)
   fills it, as Binder's image build does.
5. **Each notebook opened first**: before each notebook the cache is restored to what ``postBuild`` left (a copy
   kept in ``WORKDIR/cache.built``), and the notebook runs in a fresh kernel (nbclient, a kernel spec pointing at
   the fresh environment), so no notebook profits from one run before it.  ``--cold`` builds the image as
   ``postBuild`` did before ``tauml prepare`` (the generated data only, nothing trained), so each notebook trains
   what it shows; ``--notebook-timeout 900`` stops each at the 15-minute goal.

The table (markdown, ``--out``) gives the build time (with ``tauml prepare``'s per-step times), and per notebook:
the time to its first result (the first cell that shows a figure, table or number), its wall time, and its peak
memory; the goals (every notebook within 2 GB, within 3 minutes warm, within 15 minutes cold) are checked in the
last column.  Run it niced on a machine others use: ``nice -n 5 .venv/bin/python benchmarks/bench_school.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
GIB = 1024**3
GOAL_WARM_S = 180.0
GOAL_COLD_S = 900.0

# The driver a fresh-environment python runs for one notebook: executes it in a fresh kernel (the kernel spec
# named "tauml-school", which points at that python), records when the first result appeared, writes JSON.
NOTEBOOK_DRIVER = r"""
import json, sys, time
import nbformat
from nbclient import NotebookClient
path, out, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3])
nb = nbformat.read(path, as_version=4)
started = time.perf_counter()
first = {}
def on_cell_executed(cell, cell_index, execute_reply):
    if "t" not in first and any(o.get("output_type") in ("display_data", "execute_result")
                                for o in cell.get("outputs", [])):
        first["t"] = time.perf_counter() - started
        first["cell"] = cell_index
record = {"error": None}
client = NotebookClient(nb, timeout=timeout, kernel_name="tauml-school", on_cell_executed=on_cell_executed,
                        resources={"metadata": {"path": str(__import__("pathlib").Path(path).parent)}})
try:
    client.execute()
except Exception as exc:  # the row reports it
    record["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
record["wall_s"] = time.perf_counter() - started
record["first_result_s"] = first.get("t")
record["first_result_cell"] = first.get("cell")
json.dump(record, open(out, "w"))
"""


@dataclass
class Measured:
    """One child's run: wall time, peak memory of its process tree, how it ended."""

    wall_s: float = 0.0
    peak_pss: int = 0
    peak_rss: int = 0
    returncode: int | None = None
    killed_for_memory: bool = False
    log: str = ""
    extra: dict = field(default_factory=dict)


def tree_memory(root: psutil.Process, skip_root: bool) -> tuple[int, int]:
    """(summed PSS, summed RSS) in bytes of ``root``'s process tree (``skip_root``: without the root itself)."""
    try:
        procs = root.children(recursive=True) + ([] if skip_root else [root])
    except psutil.Error:
        return 0, 0
    pss = rss = 0
    for proc in procs:
        try:
            text = Path(f"/proc/{proc.pid}/smaps_rollup").read_text()
            rss += proc.memory_info().rss
        except (OSError, psutil.Error):
            continue
        match = re.search(r"^Pss:\s+(\d+) kB", text, re.MULTILINE)
        pss += int(match.group(1)) * 1024 if match else 0
    return pss, rss


def run_watched(cmd: list[str], *, cwd: Path, env: dict[str, str], core: int, memory_limit: int, log: Path,
                skip_root: bool = False, timeout_s: float | None = None) -> Measured:
    """Run ``cmd`` on one core, sampling its tree's memory and killing the tree above ``memory_limit`` bytes."""
    measured = Measured(log=str(log))
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(["taskset", "-c", str(core), *cmd], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        root = psutil.Process(proc.pid)
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                pss, rss = tree_memory(root, skip_root)
                measured.peak_pss = max(measured.peak_pss, pss)
                measured.peak_rss = max(measured.peak_rss, rss)
                if pss > memory_limit:
                    measured.killed_for_memory = True
                    os.killpg(proc.pid, signal.SIGKILL)
                    return
                stop.wait(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            measured.extra["timed_out"] = True
        stop.set()
        watcher.join()
    measured.returncode = proc.returncode
    measured.wall_s = time.perf_counter() - started
    return measured


def copy_working_tree(target: Path) -> None:
    """Copy what a clone of this working tree holds (tracked and untracked-but-not-ignored files) to ``target``."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, names):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def minutes(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def gib(n: int) -> str:
    return f"{n / GIB:.2f} GB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--core", type=int, default=1, help="the one CPU core every child runs on (taskset)")
    parser.add_argument("--memory-gb", type=float, default=2.0, help="the memory limit of each process tree")
    parser.add_argument("--notebooks", nargs="*", default=None,
                        help="notebook numbers or names (default: every notebooks/NN_*.ipynb, in order)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temporary folder (kept)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench_school.md")
    parser.add_argument("--cold", action="store_true",
                        help="build only the data (tauml prepare --steps data): each notebook trains what it shows")
    parser.add_argument("--reuse-build", action="store_true",
                        help="reuse the environment and cache.built already in --workdir (skip install and build)")
    parser.add_argument("--notebook-timeout", type=int, default=3600, help="seconds per notebook")
    args = parser.parse_args()

    if shutil.which("taskset") is None:
        sys.exit("bench_school needs taskset (util-linux) to run on one core")
    if args.core not in os.sched_getaffinity(0):
        sys.exit(f"core {args.core} is not available here (available: {sorted(os.sched_getaffinity(0))})")
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="tauml-school-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    repo, venv, cache, built = workdir / "repo", workdir / "venv", workdir / "cache", workdir / "cache.built"
    limit = int(args.memory_gb * GIB)
    kernels = workdir / "jupyter" / "kernels" / "tauml-school"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "TAUML_CACHE_DIR")}
    env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", TAUML_CACHE_DIR=str(cache), TAUML_WORKERS="1",
               TAUML_PROGRESS="0", JUPYTER_PATH=str(workdir / "jupyter"), MPLBACKEND="Agg",
               PYTHONUNBUFFERED="1")
    rows: list[str] = []
    build_lines: list[str] = []
    print(f"bench_school: work folder {workdir}, core {args.core}, memory limit {args.memory_gb:g} GB", flush=True)

    if not args.reuse_build:
        shutil.rmtree(repo, ignore_errors=True)
        copy_working_tree(repo)
        shutil.rmtree(venv, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(built, ignore_errors=True)
        runtime = (repo / "binder" / "runtime.txt").read_text().strip()  # e.g. python-3.11
        python = shutil.which(runtime.replace("-", "")) or sys.exit(f"no {runtime} interpreter on this machine")
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        install = run_watched([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "-r",
                               "binder/requirements.txt"], cwd=repo, env=env, core=args.core, memory_limit=limit,
                              log=workdir / "requirements.log")
        print(f"requirements.txt: {minutes(install.wall_s)} (rc {install.returncode})", flush=True)
        if install.returncode != 0:
            sys.exit(f"installing binder/requirements.txt failed: see {install.log}")
        build_lines.append(f"| `pip install -r binder/requirements.txt` | {minutes(install.wall_s)} | "
                           f"{gib(install.peak_pss)} | |")
        if args.cold:
            # postBuild as it was before `tauml prepare`: the package and the generated data, nothing trained
            script = workdir / "postBuild.cold"
            postbuild = (repo / "binder" / "postBuild").read_text()
            script.write_text(postbuild.replace("tauml prepare --preset demo",
                                                "tauml prepare --preset demo --steps data"))
            post = run_watched(["bash", str(script)], cwd=repo, env=env, core=args.core, memory_limit=limit,
                               log=workdir / "postBuild.log")
            what = "`binder/postBuild` with `tauml prepare --steps data` (the data only, nothing trained)"
        else:
            post = run_watched(["bash", "binder/postBuild"], cwd=repo, env=env, core=args.core, memory_limit=limit,
                               log=workdir / "postBuild.log")
            what = "`binder/postBuild` (install tauml, `tauml prepare --preset demo`)"
        status = ("killed: over the memory limit" if post.killed_for_memory else
                  f"failed (rc {post.returncode}), see {post.log}" if post.returncode else "ok")
        print(f"postBuild: {minutes(post.wall_s)}, peak {gib(post.peak_pss)}: {status}", flush=True)
        build_lines.append(f"| {what} | {minutes(post.wall_s)} | {gib(post.peak_pss)} | {status} |")
        current = None
        for line in Path(post.log).read_text().splitlines():  # tauml prepare's per-step lines
            step = re.match(r"\[\d+/\d+\] (\w+) ", line)
            if step:
                current = step.group(1)
            took = re.search(r" — (\d+ (?:min \d+ )?s)$", line)
            if took and step is None and current is not None:
                build_lines.append(f"| &nbsp;&nbsp;prepare step `{current}` | {took.group(1)} | | |")
                current = None
        if post.returncode != 0:
            write_table(args, workdir, build_lines, rows)
            sys.exit(f"postBuild failed: see {post.log}")
        shutil.copytree(cache, built, symlinks=True)
    kernels.mkdir(parents=True, exist_ok=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(venv / "bin" / "python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "tauml school (fresh environment)", "language": "python"}))
    (workdir / "driver.py").write_text(NOTEBOOK_DRIVER)

    available = sorted(p.name for p in (repo / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    chosen = available if not args.notebooks else [
        n for want in args.notebooks for n in available if n == want or n.startswith(f"{want}_") or n == f"{want}.ipynb"]
    goal = GOAL_COLD_S if args.cold else GOAL_WARM_S
    for name in chosen:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.copytree(built, cache, symlinks=True)
        result_file = workdir / f"{name}.json"
        result_file.unlink(missing_ok=True)
        run = run_watched([str(venv / "bin" / "python"), str(workdir / "driver.py"), str(repo / "notebooks" / name),
                           str(result_file), str(args.notebook_timeout)], cwd=repo / "notebooks", env=env,
                          core=args.core, memory_limit=limit, log=workdir / f"{name}.log", skip_root=True,
                          timeout_s=args.notebook_timeout)
        record = json.loads(result_file.read_text()) if result_file.exists() else {}
        wall = record.get("wall_s", run.wall_s)
        problems = []
        if run.killed_for_memory:
            problems.append(f"killed above {args.memory_gb:g} GB")
        if record.get("error"):
            problems.append(f"error: {record['error']}")
        if run.extra.get("timed_out"):
            problems.append(f"stopped at the {args.notebook_timeout / 60:.0f}-min limit (still training; see "
                            f"{Path(run.log).name} for the step)")
        elif not record and not run.killed_for_memory:
            problems.append(f"no result (rc {run.returncode}), see {run.log}")
        if wall > goal:
            problems.append(f"over {goal / 60:.0f} min")
        if run.peak_pss > limit:
            problems.append(f"over {args.memory_gb:g} GB")
        verdict = "; ".join(problems) or "meets the goals"
        print(f"{name}: {minutes(wall)}, first result after {minutes(record.get('first_result_s'))}, peak "
              f"{gib(run.peak_pss)} (RSS sum {gib(run.peak_rss)}): {verdict}", flush=True)
        rows.append(f"| `{name}` | {minutes(record.get('first_result_s'))} | {minutes(wall)} | {gib(run.peak_pss)} | "
                    f"{gib(run.peak_rss)} | {verdict} |")
        write_table(args, workdir, build_lines, rows)
    write_table(args, workdir, build_lines, rows)
    print(f"table: {args.out}")


def write_table(args: argparse.Namespace, workdir: Path, build_lines: list[str], rows: list[str]) -> None:
    """Write (and rewrite, as rows arrive) the markdown table to ``args.out``."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    mode = "cold (the data only, nothing trained)" if args.cold else "warm (each notebook first, after `postBuild`)"
    built = "the environment and cache.built already in" if args.reuse_build else "a fresh environment and cache in"
    text = [f"bench_school: one core ({cpu}, `taskset -c {args.core}`), {args.memory_gb:g} GB per process tree "
            f"(PSS watchdog), {built} {workdir}; notebooks {mode}; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", ""]
    if build_lines:
        text += ["| build | time | peak memory (PSS) | status |", "|---|---|---|---|", *build_lines, ""]
    text += ["| notebook | first result | wall time | peak memory (PSS) | peak RSS (summed) | goals |",
             "|---|---|---|---|---|---|", *rows, ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(text))


if __name__ == "__main__":
    main()
