"""NVIDIA's perf_analyzer as the served-load engine: find or install it, feed it valid requests,
run it, and parse what it prints.

Where it comes from (measured here, SPEC §6): PyPI's ``perf-analyzer`` needs glibc 2.38 and the
tritonclient wheels after 2.51 dropped the binary, but the tritonclient **2.51.0** wheel
(manylinux1) still carries ``tritonclient-2.51.0.data/data/bin/perf_analyzer``, which runs on
glibc 2.36 given ``libb64.so.0d`` and ``libcudart.so.12``. The nvidia-pytriton wheel ships both in
``nvidia_pytriton.libs/`` under hashed names, so `install` downloads the pinned wheel with pip
(``pip download --no-deps``: nothing is installed in the environment; the client library stays
the venv's tritonclient), extracts the binary into rgalign's cache folder, and copies the two libraries under their
plain names into a ``libs/`` folder beside it that `environment` adds to ``LD_LIBRARY_PATH``
(copies, so that deleting the venv that installed it breaks nothing; `environment` repairs a
folder that lacks them).

    ~/.cache/rgalign/perf_analyzer-2.51.0/bin/perf_analyzer
    ~/.cache/rgalign/perf_analyzer-2.51.0/libs/libb64.so.0d   (a copy of nvidia_pytriton.libs/libb64-*.so.0d)

What it is fed: ``--input-data FILE`` of ``{"data": [{"features": {"content": [JSON], "shape":
[1]}}, ...]}``, one raw request (batch 1) per entry, cycled (`input_data`); it stops at the first
failed request, so every entry must be valid. What it reports (`run`): the CSV of ``-f``, with
``--verbose-csv`` the server-side split (queue, compute input / infer / output, cache hit / miss),
and on stdout the same per composing model of an ensemble (`parse_stdout`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rgalign.errors import ConfigError

VERSION = "2.51.0"
WHEEL_REQUIREMENT = f"tritonclient=={VERSION}"  # the last wheel carrying the binary
_MEMBER = f"tritonclient-{VERSION}.data/data/bin/perf_analyzer"
# plain name the binary asks for -> glob of the hashed file in nvidia_pytriton.libs
_LIBS = {"libb64.so.0d": "libb64-*.so.0d", "libcudart.so.12": "libcudart-*.so.12*"}
ENV_VAR = "RGALIGN_PERF_ANALYZER"  # a binary to use instead of the installed one


def install_dir() -> Path:
    """``$RGALIGN_CACHE_DIR`` (or ``~/.cache/rgalign``) ``/perf_analyzer-2.51.0``."""
    from rgalign.serve.server import default_workdir

    return default_workdir().parent / f"perf_analyzer-{VERSION}"


def _pytriton_libs() -> Path | None:
    try:
        from rgalign.serve.server.binary import wheel_dirs

        libs = wheel_dirs()[1]
    except Exception:  # noqa: BLE001 - no pytriton: no libraries to lend
        return None
    return libs if libs.is_dir() else None


def _link_libs(libs_dir: Path) -> list[str]:
    """Copies of the nvidia-pytriton libraries under their plain names in ``libs_dir``; returns
    the names it could not find in the wheel.

    Copies, not symlinks: the install folder is shared by every venv of the user, and a link into
    one venv breaks when that venv is deleted (a CI clone, a removed worktree). Both files are
    small (13 kB and 0.7 MB). Each is written to a temporary name and renamed, so a run that reads
    the folder meanwhile sees the old file or the new one."""
    source = _pytriton_libs()
    missing = []
    libs_dir.mkdir(parents=True, exist_ok=True)
    for plain, pattern in _LIBS.items():
        found = sorted(source.glob(pattern)) if source else []
        if not found:
            missing.append(plain)
            continue
        tmp = libs_dir / f".{plain}.{os.getpid()}.tmp"
        shutil.copyfile(found[0], tmp)
        os.replace(tmp, libs_dir / plain)
    return missing


def _libs_usable(libs_dir: Path) -> bool:
    return all((libs_dir / plain).is_file() for plain in _LIBS)  # is_file follows (broken) links


def install(wheel: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Install perf_analyzer 2.51.0 into `install_dir` (once; ``force`` redoes it) and return
    the binary. ``wheel``: a downloaded tritonclient-2.51.0 wheel; default: ``pip download`` it.

    Raises ConfigError saying what failed (no network to PyPI, no nvidia-pytriton)."""
    target = install_dir()
    binary = target / "bin" / "perf_analyzer"
    if binary.is_file() and not force:
        _link_libs(target / "libs")  # the venv (and its hashed libs) may have changed
        return binary
    with tempfile.TemporaryDirectory(prefix="rgalign-pa-") as tmp:
        if wheel is None:
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL_REQUIREMENT,
                   "--only-binary=:all:", "--platform", "manylinux1_x86_64", "-d", tmp]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            wheels = sorted(Path(tmp).glob("tritonclient-*.whl"))
            if proc.returncode != 0 or not wheels:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
                raise ConfigError(
                    f"cannot download {WHEEL_REQUIREMENT} with pip ({tail[0][:300]}); pass the wheel "
                    "file with --wheel, or benchmark with rgalign's own client"
                )
            wheel = wheels[0]
        staging = Path(tmp) / "install"
        (staging / "bin").mkdir(parents=True)
        try:
            with zipfile.ZipFile(wheel) as z, z.open(_MEMBER) as src, open(staging / "bin" / "perf_analyzer", "wb") as dst:
                shutil.copyfileobj(src, dst)
        except (KeyError, zipfile.BadZipFile, OSError) as e:
            raise ConfigError(f"{wheel}: no {_MEMBER} in it ({e}); it must be the tritonclient {VERSION} wheel") from None
        (staging / "bin" / "perf_analyzer").chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        missing = _link_libs(staging / "libs")
        if missing:
            raise ConfigError(
                f"perf_analyzer needs {', '.join(missing)}, which the nvidia-pytriton wheel provides: "
                "run `pip install -e .[serve]` first"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    return binary


def find() -> tuple[Path | None, str]:
    """(binary, where it was found) or (None, why not): ``$RGALIGN_PERF_ANALYZER``, then the
    installed copy (`install`), then ``perf_analyzer`` on ``PATH`` or beside the interpreter."""
    given = os.environ.get(ENV_VAR)
    if given:
        path = Path(given)
        return (path, f"${ENV_VAR}") if path.is_file() else (None, f"${ENV_VAR}={given} is not a file")
    installed = install_dir() / "bin" / "perf_analyzer"
    if installed.is_file():
        return installed, f"rgalign's install ({installed.parent.parent})"
    for cand, where in ((shutil.which("perf_analyzer"), "PATH"), (Path(sys.executable).parent / "perf_analyzer", "the venv")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return Path(cand), where
    return None, (
        f"perf_analyzer is not installed: run `rgalign install-perf-analyzer` (extracts it from the "
        f"tritonclient {VERSION} wheel; `make install` does it), or set ${ENV_VAR}"
    )


def environment(binary: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment to run ``binary`` in: ``libs/`` beside its ``bin/`` (the plain-named
    copies, restored when missing or dangling) and the nvidia-pytriton libraries on ``LD_LIBRARY_PATH``."""
    env = dict(os.environ if base is None else base)
    libs = Path(binary).parent.parent / "libs"
    if libs.is_dir() and not _libs_usable(libs):
        _link_libs(libs)  # e.g. links left by an older rgalign into a venv since deleted
    paths = [str(p) for p in (Path(binary).parent.parent / "libs", _pytriton_libs()) if p and p.is_dir()]
    if env.get("LD_LIBRARY_PATH"):
        paths.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(paths)
    return env


def version(binary: Path) -> str:
    """``perf_analyzer --version``'s version; ConfigError with its output when it does not run
    (a missing library, a glibc too old)."""
    try:
        proc = subprocess.run([os.fspath(binary), "--version"], env=environment(binary),
                              capture_output=True, text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConfigError(f"{binary} does not run: {e}") from None
    m = re.search(r"Perf Analyzer Version (\S+)", proc.stdout + proc.stderr)
    if proc.returncode != 0 or not m:
        text = (proc.stderr or proc.stdout).strip().splitlines()
        raise ConfigError(f"{binary} does not run: {' | '.join(text[-2:])[:300] or f'exit {proc.returncode}'}")
    return m.group(1)


def available() -> tuple[Path | None, str]:
    """(binary, "perf_analyzer VERSION from WHERE") when it is found and runs, else (None, why)."""
    binary, where = find()
    if binary is None:
        return None, where
    try:
        return binary, f"perf_analyzer {version(binary)} from {where}"
    except ConfigError as e:
        return None, str(e)


# ---- input -------------------------------------------------------------------------------------


def input_data(records: Sequence[Mapping[str, Any]], n: int | None = None, repeated: float = 0.0,
               hot: int = 8, seed: int = 0, tag: str | None = None) -> dict[str, Any]:
    """perf_analyzer's ``--input-data`` object: ``n`` requests (default: one per record), each
    one JSON object of raw features (batch 1).

    ``repeated`` (0..1): that fraction of the entries repeat one of ``hot`` requests (a user who
    reopens the chat). ``tag`` makes the others unique: each gets a ``request_id`` key
    ``f"{tag}{i}"``, which the model ignores (unknown keys are not features), so with ``n`` above
    the requests a run sends, a response cache hits on the repeated fraction only; give each run
    its own tag, or a server that cached one run's requests answers the next run's from it.
    Without ``tag`` the records are cycled as they are."""
    if not records:
        raise ConfigError("no records to build perf_analyzer's input from")
    if not 0.0 <= repeated <= 1.0:
        raise ConfigError(f"repeated must be in 0..1, got {repeated}")
    n = n or len(records)
    rng = random.Random(seed)
    pool = [dict(records[i % len(records)]) for i in range(max(1, hot))]
    entries = []
    for i in range(n):
        if rng.random() < repeated:
            record = pool[rng.randrange(len(pool))]
        else:
            record = records[i % len(records)]
            if tag is not None:
                record = {**record, "request_id": f"{tag}{i}"}
        entries.append({"features": {"content": [json.dumps(record)], "shape": [1]}})
    return {"data": entries}


# ---- running and parsing -----------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """How one perf_analyzer measurement runs. ``interval_ms``: each measurement window (the
    default 2 s holds ~500 requests at c=1 here); ``stability``: % spread between 3 windows it
    accepts (20, not its default 10: the machine is shared and noisy); ``max_trials``: windows
    before it gives up on stability (`run` then measures once more accepting any spread, and
    labels the figures ``stable: false``)."""

    interval_ms: int = 2000
    stability: int = 20
    max_trials: int = 6
    percentile: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 300.0
    request_count: int = 0  # > 0: perf_analyzer's --request-count (see `run` on its rate)

    @classmethod
    def quick(cls) -> Settings:
        return cls(interval_ms=1000, max_trials=4, timeout_s=120.0)


def command(binary: Path, url: str, model: str, protocol: str, concurrency: int, data_file: Path,
            csv_file: Path, settings: Settings) -> list[str]:
    cmd = [
        os.fspath(binary), "-m", model, "-u", url, "-i", protocol, "--input-data", os.fspath(data_file),
        "--concurrency-range", f"{concurrency}:{concurrency}", "--measurement-interval", str(settings.interval_ms),
        "-s", str(settings.stability), "-r", str(settings.max_trials), "-f", os.fspath(csv_file), "--verbose-csv",
    ]  # fmt: skip
    if settings.request_count > 0:
        cmd += ["--request-count", str(settings.request_count)]
    if settings.percentile:
        cmd.append(f"--percentile={settings.percentile}")
    for key, value in settings.headers.items():
        cmd += ["-H", f"{key}:{value}"]
    return cmd


_US = 1e-3  # perf_analyzer prints microseconds; rgalign reports milliseconds
_CSV_MS = {
    "p50 latency": "p50_ms", "p90 latency": "p90_ms", "p95 latency": "p95_ms", "p99 latency": "p99_ms",
    "Avg latency": "avg_ms", "Client Send": "client_send_ms", "Network+Server Send/Recv": "network_ms",
    "Server Queue": "server_queue_ms", "Server Compute Input": "server_compute_input_ms",
    "Server Compute Infer": "server_compute_infer_ms", "Server Compute Output": "server_compute_output_ms",
    "Server Cache Hit": "server_cache_hit_ms", "Server Cache Miss": "server_cache_miss_ms",
    "Client Recv": "client_recv_ms",
}  # fmt: skip


def parse_csv(text: str) -> list[dict[str, Any]]:
    """The ``-f`` CSV (one row per concurrency; microseconds) -> rows with ``concurrency``,
    ``throughput`` (infer/s), latencies in ms (``p50_ms`` ... ``p99_ms``) and, with
    ``--verbose-csv``, the server-side split (``server_queue_ms``, ``server_compute_infer_ms``, ...)."""
    rows = []
    for r in csv.DictReader(io.StringIO(text)):
        if not r.get("Concurrency"):
            continue
        row: dict[str, Any] = {"concurrency": int(r["Concurrency"]), "throughput": float(r["Inferences/Second"])}
        for col, key in _CSV_MS.items():
            if r.get(col) not in (None, ""):
                row[key] = round(float(r[col]) * _US, 4)
        rows.append(row)
    if not rows:
        raise ConfigError(f"perf_analyzer's CSV has no rows: {text[:200]!r}")
    return rows


_UNSTABLE = "Failed to obtain stable measurement"
_ANY_SPREAD = 1000  # % between windows: accepts any measurement
_MODEL = re.compile(r"^\s*(\S+), version: (\S+)\s*$")
_REQ = re.compile(r"Avg request latency: (\d+) usec(?: \((.*)\))?")
_PART = re.compile(r"([a-z][a-z /]*?) (\d+) usec")
_COUNT = re.compile(r"^\s*(Inference|Execution|Cache hit|Cache miss|Successful request) count: (\d+)")
_CONC = re.compile(r"^Request concurrency: (\d+)")


def _key(name: str) -> str:
    """``"cache hit/miss"`` -> ``"cache_hit_miss_ms"``."""
    return name.strip().replace("/", "_").replace(" ", "_") + "_ms"


def parse_stdout(text: str) -> dict[int, dict[str, Any]]:
    """perf_analyzer's report -> per concurrency: ``server`` (the model asked) and ``composing``
    (per step model of an ensemble), each with request counts and ``request_ms`` split into
    ``overhead_ms``, ``queue_ms``, ``compute_input_ms``, ``compute_infer_ms``,
    ``compute_output_ms`` (and ``cache_hit_miss_ms``) as Triton's statistics give them."""
    out: dict[int, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    target: dict[str, Any] | None = None
    for line in text.splitlines():
        m = _CONC.match(line)
        if m:
            current = out.setdefault(int(m.group(1)), {"server": {}, "composing": {}})
            target = None
            continue
        if current is None:
            continue
        if line.strip() == "Server:":
            target = current["server"]
            continue
        m = _MODEL.match(line)
        if m and "Composing" not in line:
            target = current["composing"].setdefault(m.group(1), {})
            continue
        m = _COUNT.match(line)
        if m and target is not None:
            target[m.group(1).lower().replace(" ", "_") + "_count"] = int(m.group(2))
            continue
        m = _REQ.search(line)
        if m and target is not None:
            target["request_ms"] = round(int(m.group(1)) * _US, 4)
            for name, us in _PART.findall(m.group(2) or ""):
                target[_key(name)] = round(int(us) * _US, 4)
            continue
        if "Average Cache Miss Latency" in line and target is not None:
            for name, us in _PART.findall(line.split("(", 1)[1] if "(" in line else ""):
                target.setdefault(_key(name), round(int(us) * _US, 4))
    return out


def _retagged(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with every unique request (one carrying a ``request_id``, see `input_data`) made
    new: a retry must not be answered from the response cache the first attempt filled."""
    entries = []
    for entry in data["data"]:
        content = entry["features"]["content"]
        record = json.loads(content[0]) if isinstance(content, list) and content else None
        if isinstance(record, dict) and "request_id" in record:
            record["request_id"] = f"{record['request_id']}-retry"
            entry = {"features": {**entry["features"], "content": [json.dumps(record)]}}
        entries.append(entry)
    return {**data, "data": entries}


def run(binary: Path, url: str, records: Sequence[Mapping[str, Any]] | Mapping[str, Any], *,
        model: str = "rgalign", protocol: str = "http", concurrency: int = 1,
        settings: Settings | None = None) -> dict[str, Any]:
    """One perf_analyzer measurement of ``model`` at ``url`` (``host:port`` of the protocol's
    endpoint) at ``concurrency``: the CSV row merged with the stdout's server breakdown, plus
    ``command`` (data file as ``INPUT``) and ``source``. ``records``: raw requests, or an
    `input_data` object. Raises ConfigError with its last lines when it fails (a failed request
    stops it)."""
    settings = settings or Settings()
    data = records if isinstance(records, Mapping) else input_data(records)
    with tempfile.TemporaryDirectory(prefix="rgalign-pa-") as tmp:
        data_file, csv_file = Path(tmp) / "input.json", Path(tmp) / "out.csv"
        data_file.write_text(json.dumps(data), encoding="utf-8")
        cmd = command(binary, url, model, protocol, concurrency, data_file, csv_file, settings)
        try:
            proc = subprocess.run(cmd, env=environment(binary), capture_output=True, text=True,
                                  timeout=settings.timeout_s)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise ConfigError(f"perf_analyzer did not finish within {settings.timeout_s:.0f} s") from None
        stable = True
        if proc.returncode != 0 and _UNSTABLE in proc.stdout + proc.stderr and settings.stability < _ANY_SPREAD:
            # a busy machine: accept any spread between windows, labelled unstable, rather than
            # no figure at all (--request-count skips the check too, but 2.51 then reports the
            # count per second of its window, not the requests' real rate)
            stable = False
            data_file.write_text(json.dumps(_retagged(data)), encoding="utf-8")
            cmd = command(binary, url, model, protocol, concurrency, data_file, csv_file,
                          replace(settings, stability=_ANY_SPREAD, max_trials=10))
            proc = subprocess.run(cmd, env=environment(binary), capture_output=True, text=True,
                                  timeout=settings.timeout_s)  # fmt: skip
        if proc.returncode != 0 or not csv_file.is_file():
            tail = [x for x in (proc.stdout + proc.stderr).strip().splitlines() if x.strip()][-3:]
            raise ConfigError(f"perf_analyzer failed (exit {proc.returncode}): {' | '.join(tail)[:500]}")
        rows = parse_csv(csv_file.read_text(encoding="utf-8"))
    row = rows[-1]
    breakdown = parse_stdout(proc.stdout).get(row["concurrency"], {})
    shown = ["INPUT" if part == os.fspath(data_file) else ("OUT.csv" if part == os.fspath(csv_file) else part)
             for part in cmd]  # fmt: skip
    return {
        **row,
        "protocol": protocol,
        "stable": stable and _UNSTABLE not in proc.stdout + proc.stderr,
        "server": breakdown.get("server", {}),
        "composing": breakdown.get("composing", {}),
        "source": "perf_analyzer",
        "command": " ".join(shown[1:]),
    }


def bench(url: str, grpc_url: str, records: Sequence[Mapping[str, Any]], concurrencies: Sequence[int],
          quick: bool, model: str = "rgalign") -> dict[str, Any]:
    """`rgalign bench --url`'s served figures from perf_analyzer, in the shape of its own client's
    (``{"http": {"status", "url", "levels": [...]}, "grpc": {...}}``), or ``status`` SKIPPED with
    the reason when the binary is missing or does not run."""
    binary, about = available()
    if binary is None:
        return {"status": "SKIPPED", "reason": about, "source": "perf_analyzer"}
    settings = Settings.quick() if quick else Settings()
    data = input_data(records[:64])
    out: dict[str, Any] = {"status": "OK", "source": "perf_analyzer", "binary": os.fspath(binary), "about": about,
                           "model": model, "request": "batch 1: one JSON object of raw features per request"}
    for protocol, u in (("http", url), ("grpc", grpc_url)):
        levels = []
        for c in concurrencies:
            try:
                levels.append({"status": "OK", **run(binary, u, data, model=model, protocol=protocol,
                                                      concurrency=c, settings=settings)})
            except ConfigError as e:
                levels.append({"concurrency": c, "status": "FAIL", "reason": str(e)})
        ok = any(lv["status"] == "OK" for lv in levels)
        out[protocol] = {"status": "OK" if ok else "FAIL", "url": u, "levels": levels,
                         **({} if ok else {"reason": levels[0].get("reason") if levels else "no levels"})}
    if all(out[p]["status"] != "OK" for p in ("http", "grpc")):
        out["status"] = "FAIL"
        out["reason"] = out["http"].get("reason")
    return out
