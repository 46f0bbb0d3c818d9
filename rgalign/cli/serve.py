"""``rgalign deploy``, ``rgalign serve`` and ``rgalign query`` (SPEC §6, §9): thin; they call
`rgalign.serve.repository.deploy.deploy`, `rgalign.serve.server.run_forever` and
`rgalign.serve.client.RgalignClient`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from rgalign.artifacts.registry import ENSEMBLE
from rgalign.cli._app import app, console
from rgalign.errors import ConfigError

TOP_K_MAX = 2**31 - 1  # the ensemble's top_k input is INT32; a larger k would wrap


@app.command("deploy")
def deploy_cmd(
    export: Path = typer.Argument(..., help="Export folder (what `rgalign export --out` wrote)."),
    out: Path = typer.Option(
        Path("triton_repo"), "--out", "-o", help="Model repository to write (replaced atomically)."
    ),
    backend: str = typer.Option(
        "python", "--backend", help="python (ONNX Runtime in the python backend), onnxruntime or tensorrt."
    ),
    precision: str = typer.Option("fp32", "--precision", help="fp32, fp16 or int8 (tensorrt: fp16 or int8)."),
    instances: int = typer.Option(1, "--instances", min=1, help="Instances of each step model."),
    max_batch: int = typer.Option(16, "--max-batch", min=1, help="Largest batch a request or a dynamic batch may have."),
    queue_delay_us: int = typer.Option(
        0, "--queue-delay-us", min=0, help="Dynamic batching: longest wait for more requests (µs)."
    ),
    threads: int = typer.Option(
        0, "--threads", min=0, help="ONNX Runtime threads per model (python backend; 0: one per core)."
    ),
    top_k: int = typer.Option(0, "--top-k", min=0, help="Default k when a request has no top_k (0: the export's)."),
    trt_accelerator: bool = typer.Option(
        False, "--trt-accelerator", help="onnxruntime backend: TensorRT execution accelerator (GPU)."
    ),
    layout: str = typer.Option(
        "auto", "--layout",
        help="ensemble (four models chained by Triton) or fused (one python model running the whole "
        "pipeline); auto: fused for --backend python, ensemble otherwise.",
    ),
    max_item_bytes: int = typer.Option(
        65536, "--max-item-bytes", min=64, help="Largest JSON of one request item, in bytes (refused above: 400)."
    ),
    max_text_chars: int = typer.Option(
        4096, "--max-text-chars", min=1, help="Longest string feature value, in characters (refused above: 400)."
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace the repository of a running server and reload the server from it."
    ),
) -> None:
    """Write a Triton model repository: preprocess -> reasoner -> ranker -> postprocess, ensemble `rgalign`."""
    from rgalign.serve.repository.deploy import DeployOptions, deploy

    options = DeployOptions(
        backend=backend, precision=precision, instances=instances, max_batch=max_batch,
        queue_delay_us=queue_delay_us, threads=threads, default_top_k=top_k or None,
        tensorrt_accelerator=trt_accelerator, max_item_bytes=max_item_bytes, max_text_chars=max_text_chars,
        layout=layout,
    )  # fmt: skip
    with console.status("deploying ...") as status:
        summary = deploy(
            export, out, options, force=force,
            progress=lambda step, _state, _msg: status.update(f"writing {escape(step)} ..."),
        )  # fmt: skip
    table = Table(title=escape(str(out)), title_justify="left")
    table.add_column("model")
    table.add_column("config")
    for model in summary["models"]:
        table.add_row(model, escape(str(out / model / "config.pbtxt")))
    console.print(table)
    console.print(
        f"deployed {escape(str(export))} -> [bold]{escape(str(out))}[/] ({summary['layout']} layout, "
        f"backend {backend}, {precision}, "
        f"max batch {max_batch}, default top_k {summary['default_top_k']}) in {summary['seconds']:.1f} s; "
        f"serve it with `rgalign serve {escape(str(out))}`",
        highlight=False, soft_wrap=True,
    )
    if summary.get("reload"):
        console.print(escape(summary["reload"]), highlight=False, soft_wrap=True)


@app.command("serve")
def serve_cmd(
    repo: Path = typer.Argument(Path("triton_repo"), help="Model repository (what `rgalign deploy` wrote)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0: every interface)."),
    http_port: int = typer.Option(8000, "--http-port", min=0, max=65535, help="HTTP port (0: a free one)."),
    grpc_port: int = typer.Option(8001, "--grpc-port", min=0, max=65535, help="gRPC port (0: a free one)."),
    metrics_port: int = typer.Option(8002, "--metrics-port", min=0, max=65535, help="Metrics port (0: a free one)."),
    tritonserver: str = typer.Option(
        None, "--tritonserver", help="tritonserver binary (default: the one in the nvidia-pytriton wheel)."
    ),
    log_file: Path = typer.Option(
        None, "--log-file", help="Server log (default: REPO/tritonserver.log)."
    ),
    start_timeout: float = typer.Option(120.0, "--start-timeout", min=1, help="Seconds to wait for readiness."),
    log_verbose: int = typer.Option(0, "--log-verbose", min=0, help="Triton's --log-verbose level."),
    cache_mb: int = typer.Option(
        0, "--cache-mb", min=0, help="Triton's local response cache, in MiB (0: off); repeated requests are answered from it."
    ),
    admin_key: str = typer.Option(
        None, "--admin-key", envvar="RGALIGN_ADMIN_KEY", show_envvar=True,
        help="Key of the restricted admin APIs (header rgalign-admin); default: a random one, "
        "written to rgalign-admin.key beside the log (mode 0600).",
    ),
    drain_timeout: float = typer.Option(
        10.0, "--drain-timeout", min=0, help="Seconds SIGTERM waits for in-flight requests before stopping."
    ),
) -> None:
    """Serve a model repository with a real Triton Inference Server until Ctrl-C or SIGTERM.

    Supervised: a dead backend process is reloaded (not-ready meanwhile), SIGHUP reloads every
    model from disk, SIGTERM drains in-flight requests first. Admin APIs need the admin key."""
    from rgalign.serve.server.admin import KEY_FILE, redact, restricted_args
    from rgalign.serve.server.admin import admin_key as make_key
    from rgalign.serve.repository.deploy import check_servable
    from rgalign.serve.server import TritonServer, find_tritonserver, is_wheel_tritonserver
    from rgalign.serve.server.cache import server_args
    from rgalign.serve.server.supervisor import SupervisorOptions, serve

    if not repo.is_dir():
        raise ConfigError(f"model repository {repo} does not exist; run `rgalign deploy EXPORT --out {repo}`")
    binary = find_tritonserver(tritonserver)
    check_servable(repo, is_wheel_tritonserver(binary))
    log_path = log_file if log_file is not None else repo / "tritonserver.log"  # ignored by Triton
    key_file = log_path.parent / KEY_FILE
    key = make_key(admin_key, key_file)
    server = TritonServer(
        repo, host=host, http_port=http_port or None, grpc_port=grpc_port or None,
        metrics_port=metrics_port or None, tritonserver=tritonserver, log_file=log_path,
        log_verbose=log_verbose, model_control="explicit", extra_args=[*restricted_args(key), *server_args(cache_mb, binary)],
    )  # fmt: skip

    def ready(s: TritonServer) -> None:
        console.print(
            f"[green]ready[/] in {s.ready_seconds:.1f} s (pid {s.pid}; log {escape(str(s.log_path))})\n"
            + (f"response cache: {cache_mb} MiB\n" if cache_mb else "")
            + f"  HTTP     {s.http_url}\n  gRPC     {s.grpc_url}\n  metrics  {s.metrics_url}\n"
            f"  admin APIs need header rgalign-admin: {redact(key)} (full key in {escape(str(key_file))})\n"
            f"try: rgalign query --url {s.http_address} --features @request.json\n"
            "Ctrl-C or SIGTERM drains and stops it; SIGHUP reloads the models from disk",
            highlight=False, soft_wrap=True,
        )

    def event(e: object) -> None:
        console.print(f"[yellow]supervisor[/]: {escape(str(e))}", highlight=False, soft_wrap=True)

    console.print(f"starting tritonserver on {escape(str(repo))} ...", highlight=False)
    signum = serve(
        server, key, options=SupervisorOptions(drain_timeout_s=drain_timeout), start_timeout=start_timeout,
        on_ready=ready, on_event=event, key_file=key_file,
    )
    console.print(f"stopped (signal {signum}): server, python-backend stubs and shared memory gone", highlight=False)


def _read_features(text: str) -> list:
    """``--features``: JSON text, or ``@FILE`` holding it; an object or a list of objects."""
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read --features file {path}: {e.strerror}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--features is not valid JSON ({e.msg} at column {e.colno})") from None
    records = value if isinstance(value, list) else [value]
    if not records or not all(isinstance(r, dict) for r in records):
        raise ConfigError("--features must be a JSON object of features, or a non-empty list of them")
    return records


@app.command("query")
def query_cmd(
    url: str = typer.Option("127.0.0.1:8000", "--url", help="Server address: host:port, http://... or grpc://..."),
    features: str = typer.Option(..., "--features", "-f", help="JSON object (or list of objects), or @FILE."),
    k: int = typer.Option(3, "-k", "--top-k", min=1, max=TOP_K_MAX, help="How many intents per request."),
    protocol: str = typer.Option(None, "--protocol", help="http or grpc (default: from the url, else http)."),
    model: str = typer.Option(ENSEMBLE, "--model", help="Model to ask (the ensemble)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Ask a running server for the top-k intents of one or more requests."""
    from rgalign.serve.client import RgalignClient

    records = _read_features(features)
    t0 = time.perf_counter()
    with RgalignClient(url, protocol=protocol, model=model) as client:
        answers = client.rank(records, k=k)
    ms = (time.perf_counter() - t0) * 1e3
    if as_json:
        print(json.dumps([{"intent_ids": a.intent_ids, "scores": a.scores} for a in answers]))
        return
    table = Table(title=f"top {k} from {escape(client.url)} ({ms:.0f} ms)", title_justify="left")
    for col in ("request", "rank", "intent", "score"):
        table.add_column(col, justify="left" if col == "intent" else "right")
    for i, answer in enumerate(answers):
        for rank, (intent, score) in enumerate(zip(answer.intent_ids, answer.scores), 1):
            table.add_row(str(i) if rank == 1 else "", str(rank), escape(intent), f"{score:.4f}")
    console.print(table)
