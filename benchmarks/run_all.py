"""Run every ``benchmarks/bench_*.py``, then write one JSON of results and a Markdown table per machine.

    .venv/bin/python benchmarks/run_all.py                    # CPU, full sizes (make bench)
    .venv/bin/python benchmarks/run_all.py --quick            # small sizes, a few minutes on 2 CPU cores
    .venv/bin/python benchmarks/run_all.py --device cuda      # on a GPU machine (make bench-gpu)
    .venv/bin/python benchmarks/run_all.py --only ingestion ctvit --out /tmp/bench
    .venv/bin/python benchmarks/run_all.py --quick --threads 1   # a CPU shared with other work (see below)

Each benchmark runs as ``python benchmarks/bench_NAME.py --json FILE --device D [--quick ...]`` in its own
process (isolated peak-RSS figures; each script also isolates its own cases; ``QUICK_ARGS`` adds a few options
to ``--quick``, ``CUDA_ARGS`` a few to a full run on a GPU). ``--threads N`` sets OMP_NUM_THREADS for every benchmark process: on a CPU that other jobs
are using, 2 torch threads on 2 cores wait for each other at every operation and small-model timings grow
tenfold or more, so 1 thread gives the steadier figures there. A benchmark that exits non-zero, times
out, writes no JSON, or is not found is recorded as failed with its error, and the others still run; the exit
status is 1 when anything failed. Writes ``OUT/<slug>.json`` (machine, run, per-benchmark status, records),
``OUT/<slug>.md`` (the table) and ``OUT/<slug>.log`` (each script's own printed tables); the slug names the
device (``cpu-<cpu model>-<cores>c`` or ``cuda-<gpu name>``), with ``-quick`` for quick runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
# pipeline order; other bench_*.py follow by name
ORDER = ("ingestion", "ctvit", "maskgit", "sampling_cache", "superres", "generation")
RECORD_KEYS = ("benchmark", "stage", "shape", "seconds", "throughput", "throughput_unit", "peak_rss_mib",
               "peak_gpu_mib", "status", "error", "notes")
SCHEMA_VERSION = 1
# extra arguments with --quick, so a quick run takes minutes on 2 shared CPU cores (sizes stay each script's --quick)
QUICK_ARGS = {"superres": ["--repeats", "1"]}
# extra arguments on a GPU: what only a GPU can answer (does torch.compile pay for generation?)
CUDA_ARGS = {"generation": ["--compile", "--large"]}


def discover(bench_dir: Path = BENCH_DIR) -> dict[str, Path]:
    """``{name: script}`` for every ``bench_<name>.py``, in pipeline order."""
    found = {path.stem.removeprefix("bench_"): path for path in sorted(Path(bench_dir).glob("bench_*.py"))}
    rank = {name: i for i, name in enumerate(ORDER)}
    return dict(sorted(found.items(), key=lambda item: (rank.get(item[0], len(ORDER)), item[0])))


def failed_record(name: str, error: str) -> dict:
    out = dict.fromkeys(RECORD_KEYS)
    out.update(benchmark=name, stage="(benchmark did not complete)", status="failed", error=error, notes="")
    return out


def _last_lines(text: str, n: int = 3) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return " / ".join(lines[-n:]) if lines else ""


def run_one(name: str, script: Path, quick: bool, device: str, timeout: float | None,
            threads: int | None = None) -> tuple[list[dict], dict]:
    """Run one script in a subprocess; (records, status). Never raises for a failing benchmark."""
    env = dict(os.environ)
    if threads:  # torch's default thread count and bench_generation's both follow OMP_NUM_THREADS
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as scratch:
        out_json = Path(scratch) / "records.json"
        cmd = [sys.executable, str(script), "--json", str(out_json), "--device", device]
        cmd += ["--quick", *QUICK_ARGS.get(name, [])] if quick else []
        cmd += CUDA_ARGS.get(name, []) if str(device).startswith("cuda") and not quick else []
        status: dict[str, Any] = {"command": shlex.join(["python", _display(script), *cmd[4:]])}
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as exc:
            status.update(wall_seconds=time.perf_counter() - start, returncode=None, status="failed",
                          error=f"timed out after {timeout:.0f} s", output=_text(exc.stdout))
            return [failed_record(name, status["error"])], status
        status.update(wall_seconds=time.perf_counter() - start, returncode=proc.returncode, output=proc.stdout)
        records: list[dict] = []
        error = None
        if proc.returncode:
            error = f"exit {proc.returncode}: {_last_lines(proc.stderr) or _last_lines(proc.stdout)}"
        elif not out_json.is_file():
            error = "the script wrote no JSON records (does it accept --json?)"
        else:
            try:
                records = json.loads(out_json.read_text())
            except json.JSONDecodeError as exc:
                error = f"unreadable JSON records: {exc}"
        if error:
            status.update(status="failed", error=error, stderr_tail=(proc.stderr or "")[-4000:])
            return [failed_record(name, error)], status
        records = [_complete(name, r) for r in records]
        bad = [r for r in records if r["status"] not in ("ok", "skipped")]  # skipped: e.g. needs a trained run
        skipped = bool(records) and all(r["status"] == "skipped" for r in records)
        status.update(status="failed" if bad or not records else ("skipped" if skipped else "ok"),
                      error=f"{len(bad)} case(s) failed" if bad else (None if records else "no records"))
        return records or [failed_record(name, "the script returned no records")], status


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")


def _complete(name: str, rec: dict) -> dict:
    out = dict.fromkeys(RECORD_KEYS)
    out.update(rec)
    out["benchmark"] = out["benchmark"] or name
    out["status"] = out["status"] or ("failed" if out.get("error") else "ok")
    return out


# --- machine ------------------------------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _cuda_info() -> dict:
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
        if proc.returncode == 0 and proc.stdout.strip():
            name, memory, driver = (part.strip() for part in proc.stdout.strip().splitlines()[0].split(","))
            return {"cuda_device": name, "cuda_memory": memory, "cuda_driver": driver}
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return {"cuda_device": props.name, "cuda_memory": f"{props.total_memory / 2**30:.0f} GiB"}
    except Exception:  # noqa: BLE001 - machine info is best effort
        pass
    return {"cuda_device": None}


def _cuda_problem() -> str | None:
    """Why CUDA cannot be used here, or None."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return (f"torch {torch.__version__} sees no CUDA device (a CPU-only build, or no GPU/driver); "
                "install a CUDA build of torch into the venv")
    return None


def machine_info(device: str) -> dict:
    """What the figures depend on: CPU, cores, RAM, GPU, library versions, commit, date."""
    cpuinfo = _read("/proc/cpuinfo")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.M)
    quota = _read("/sys/fs/cgroup/cpu.max").split()
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "cpu_model": model.group(1).strip() if model else (platform.processor() or platform.machine()),
        "cpu_count": os.cpu_count(),
        "cpu_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_quota": (float(quota[0]) / float(quota[1]) if len(quota) == 2 and quota[0] != "max" else None),
        "ram_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "device": device,
    }
    try:
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(), torch_cuda=torch.version.cuda)
    except ImportError:
        info["torch"] = None
    for module in ("numpy", "pydicom"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    info.update(_cuda_info() if device.startswith("cuda") else {"cuda_device": None})
    commit = _git("rev-parse", "HEAD")
    info.update(git_commit=commit, git_dirty=bool(_git("status", "--porcelain", "--untracked-files=no")) if commit
                else None, date=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    info["load_average_start"] = " ".join(_read("/proc/loadavg").split()[:3]) or None
    return info


def slugify(text: str) -> str:
    text = re.sub(r"\((r|tm)\)|\bcpu\b|\bprocessor\b|@.*$", " ", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


def machine_slug(info: dict, quick: bool) -> str:
    if info.get("cuda_device"):
        slug = f"cuda-{slugify(info['cuda_device'])}"
    else:
        slug = f"cpu-{slugify(info['cpu_model'])}-{info['cpu_usable']}c"
    return slug + ("-quick" if quick else "")


def describe_machine(info: dict) -> str:
    cores = f"{info['cpu_usable']} usable CPU cores" + (
        f" (of {info['cpu_count']})" if info["cpu_count"] != info["cpu_usable"] else "")
    gpu = f"GPU {info['cuda_device']} ({info.get('cuda_memory', '?')})" if info.get("cuda_device") else "no GPU used"
    ram = f"{info['ram_gib']:.0f} GiB RAM" if info.get("ram_gib") else "RAM unknown"
    return f"{info['cpu_model']}, {cores}, {ram}, {gpu}; torch {info.get('torch')}, Python {info['python']}"


# --- Markdown -----------------------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.{digits}g}" if value < 1 else f"{value:.2f}"


def _cell(text: Any) -> str:
    return str(text if text not in (None, "") else "–").replace("|", "\\|").replace("\n", " ")


def to_markdown(result: dict) -> str:
    info, run = result["machine"], result["run"]
    commit = (info.get("git_commit") or "unknown")[:10] + (" (uncommitted changes)" if info.get("git_dirty") else "")
    lines = [
        f"# Benchmarks on {describe_machine(info)}",
        "",
        f"`{run['command']}` ({'quick' if run['quick'] else 'full'} sizes, device {run['device']}, "
        f"{run.get('threads')} CPU thread(s) per process), "
        f"commit {commit}, {info['date']}, {run['wall_seconds']:.0f} s in all; load average at start "
        f"{info.get('load_average_start')}. Machine details and every figure: `{run['json']}`.",
        "",
        "Time is one measured unit of the stage (see each script's docstring: a training step, a whole volume, "
        "one pass over the cohort); peak RSS is that process's peak resident memory, peak GPU "
        "`torch.cuda.max_memory_allocated`. EXTRAPOLATED figures are marked in the notes.",
        "",
    ]
    floors = [r for r in result["results"] if r.get("ratio_to_floor") is not None]
    if floors:
        lines += ["## Ingestion against the pydicom floor", ""]
        for r in floors:
            lines.append(f"- {r['stage']} ({r['shape']}): **{_num(r['throughput'])} slices/s**, "
                         f"{r['ratio_to_floor']:.2f}× a bare `pydicom.dcmread` + rescale of the same files "
                         f"({_num(r['floor_slices_per_s'])} slices/s)")
        lines.append("")
    lines += [
        "## Results",
        "",
        "| Benchmark | Stage | Shape | Time (s) | Throughput | Peak RSS (MiB) | Peak GPU (MiB) | Notes |",
        "|---|---|---|--:|--:|--:|--:|---|",
    ]
    for r in result["results"]:
        if r["status"] != "ok":
            lines.append(f"| {_cell(r['benchmark'])} | {_cell(r['stage'])} | {_cell(r['shape'])} | {r['status']} "
                         f"| | | | {_cell(r['error'] or r.get('notes'))} |")
            continue
        rate = f"{_num(r['throughput'])} {r['throughput_unit']}" if r.get("throughput") is not None else None
        lines.append(
            f"| {_cell(r['benchmark'])} | {_cell(r['stage'])} | {_cell(r['shape'])} | {_cell(_num(r['seconds']))} | "
            f"{_cell(rate)} | {_cell(_num(r['peak_rss_mib']) if r.get('peak_rss_mib') else None)} | "
            f"{_cell(_num(r['peak_gpu_mib']) if r.get('peak_gpu_mib') else None)} | {_cell(r.get('notes'))} |")
    lines += ["", "## Benchmarks run", "", "| Benchmark | Status | Wall (s) | Command |", "|---|---|--:|---|"]
    for name, status in result["benchmarks"].items():
        state = status["status"] + (f": {status['error']}" if status.get("error") else "")
        wall = _num(status.get("wall_seconds")) if status.get("wall_seconds") is not None else None
        lines.append(f"| {_cell(name)} | {_cell(state)} | {_cell(wall)} | `{_cell(status.get('command'))}` |")
    return "\n".join(lines) + "\n"


# --- main ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes / few repeats (each script's --quick)")
    parser.add_argument("--device", default=os.environ.get("DEVICE", "cpu"),
                        help="cpu or cuda (default $DEVICE, else cpu)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="results folder")
    parser.add_argument("--only", nargs="+", metavar="NAME", default=None,
                        help="run only these benchmarks (names: the NAME of bench_NAME.py)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per benchmark process (OMP_NUM_THREADS; default: torch's, all cores); "
                        "1 is least disturbed on a machine shared with other work")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark before it counts as failed")
    parser.add_argument("--bench-dir", type=Path, default=BENCH_DIR, help=argparse.SUPPRESS)  # tests
    args = parser.parse_args(argv)
    if args.device.startswith("cuda"):
        problem = _cuda_problem()
        if problem:
            print(f"--device {args.device}: {problem}", file=sys.stderr)
            return 2
        os.environ.setdefault("DEVICE", args.device)

    available = discover(args.bench_dir)
    names = list(dict.fromkeys(args.only)) if args.only else list(available)
    info = machine_info(args.device)
    slug = machine_slug(info, args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, md_path, log_path = (args.out / f"{slug}{suffix}" for suffix in (".json", ".md", ".log"))
    command = shlex.join(["python", "benchmarks/run_all.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"{describe_machine(info)}\nresults → {json_path}\n", flush=True)

    started = time.perf_counter()
    records: list[dict] = []
    statuses: dict[str, dict] = {}
    log: list[str] = []
    for name in names:
        script = available.get(name)
        if script is None:
            error = f"no benchmark named {name!r} (known: {', '.join(available) or 'none'})"
            print(f"[{name}] failed: {error}", flush=True)
            statuses[name] = {"status": "failed", "error": error, "wall_seconds": None, "command": None}
            records.append(failed_record(name, error))
            continue
        print(f"[{name}] running {script.name} …", flush=True)
        recs, status = run_one(name, script, args.quick, args.device, args.timeout, args.threads)
        output = status.pop("output", "")
        print(output.rstrip() + "\n" if output.strip() else "", end="")
        log += [f"===== {name}: {status.get('command')} ({status['status']}, {status['wall_seconds']:.1f} s)",
                output.rstrip(), ""]
        if status.get("stderr_tail"):
            log += ["----- stderr (tail)", status["stderr_tail"].rstrip(), ""]
        print(f"[{name}] {status['status']} in {status['wall_seconds']:.1f} s"
              + (f": {status['error']}" if status.get("error") else ""), flush=True)
        statuses[name] = status
        records += recs

    info["load_average_end"] = " ".join(_read("/proc/loadavg").split()[:3]) or None
    result = {
        "schema_version": SCHEMA_VERSION,
        "machine": info,
        "run": {"command": command, "quick": args.quick, "device": args.device, "only": args.only,
                "threads": args.threads or info.get("torch_threads"),
                "wall_seconds": time.perf_counter() - started, "slug": slug,
                "json": _display(json_path), "markdown": _display(md_path)},
        "benchmarks": statuses,
        "results": records,
    }
    json_path.write_text(json.dumps(result, indent=1, ensure_ascii=False, default=str) + "\n")
    md_path.write_text(to_markdown(result))
    log_path.write_text("\n".join(log) + "\n")
    failed = [name for name, status in statuses.items() if status["status"] not in ("ok", "skipped")]
    print(f"\nwrote {json_path}, {md_path} and {log_path} in {result['run']['wall_seconds']:.0f} s"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _display(path: Path) -> str:
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
