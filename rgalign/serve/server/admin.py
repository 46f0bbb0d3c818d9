"""The server's admin surface: which Triton APIs are restricted, the key that opens them, and a
small HTTP client for the model-control calls the supervisor makes.

By default `rgalign serve` restricts every API a client of the ensemble does not need, on HTTP
and gRPC alike (Triton's ``--http-restricted-api`` / ``--grpc-restricted-protocol``):
``model-repository`` (load / unload), ``shared-memory`` (registering a ``/dev/shm`` region and
asking a model to write there aborted the server, issue 16), ``statistics``, ``trace`` and
``logging``. ``health``, ``metadata``, ``inference`` and ``model-config`` stay public
(perf_analyzer reads the model config). A restricted HTTP call without the header
``rgalign-admin: <key>`` gets 403 ``This API is restricted, expecting header 'rgalign-admin'``;
over gRPC the metadata key is ``triton-grpc-protocol-rgalign-admin`` (UNAVAILABLE without it).

The key: ``--admin-key`` or ``$RGALIGN_ADMIN_KEY`` when given, else a random one per run,
written with mode 0600 to ``rgalign-admin.key`` beside the server log (the supervisor needs it
for load / unload, an operator for statistics). It is never logged in full.

Example::

    key = admin_key(None, Path("triton_repo/rgalign-admin.key"))
    server = TritonServer(repo, model_control="explicit", extra_args=restricted_args(key))
    AdminClient(server.http_url, key).unload("reasoner")
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from rgalign.errors import ConfigError, ServeError

ADMIN_HEADER = "rgalign-admin"
# Over gRPC, Triton expects the key's metadata under this name (measured: "This protocol is
# restricted, expecting header 'triton-grpc-protocol-rgalign-admin'").
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"
KEY_ENV = "RGALIGN_ADMIN_KEY"
KEY_FILE = "rgalign-admin.key"
# Triton's names for the API groups (the same names for HTTP APIs and gRPC protocols).
RESTRICTED = ("model-repository", "shared-memory", "statistics", "trace", "logging")
PUBLIC = ("health", "metadata", "inference", "model-config")
_KEY_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def restricted_args(key: str, apis: tuple[str, ...] = RESTRICTED) -> list[str]:
    """The tritonserver flags restricting ``apis`` to requests carrying ``rgalign-admin: key``.
    Triton's format puts a colon between the API list and ``key=value``."""
    check_key(key)
    spec = f"{','.join(apis)}:{ADMIN_HEADER}={key}"
    return [f"--http-restricted-api={spec}", f"--grpc-restricted-protocol={spec}"]


def check_key(key: str) -> str:
    if len(key) < 8 or not set(key) <= _KEY_CHARS:
        raise ConfigError(
            "the admin key must be at least 8 characters of letters, digits, '-', '_' or '.' "
            "(it travels in an HTTP header and on the server's command line)"
        )
    return key


def admin_key(explicit: str | None, key_file: Path) -> str:
    """The admin key: ``explicit``, else ``$RGALIGN_ADMIN_KEY``, else a new random key; it is
    written to ``key_file`` (mode 0600) in every case, so an operator finds the live one there."""
    key = check_key(explicit or os.environ.get(KEY_ENV) or secrets.token_urlsafe(24))
    key_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = key_file.with_name(f".{key_file.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.replace(tmp, key_file)
    return key


def redact(key: str) -> str:
    """What logs show of a key: its first 4 characters."""
    return f"{key[:4]}..." if key else "(none)"


class AdminClient:
    """Model control and readiness over Triton's HTTP API, with the admin header. Every call is
    bounded by ``timeout`` seconds; failures are ServeError with Triton's one-line reason."""

    def __init__(self, http_url: str, key: str | None, timeout: float = 30.0) -> None:
        self.http_url = http_url.rstrip("/")
        self.key = key
        self.timeout = timeout

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
        req = urllib.request.Request(f"{self.http_url}{path}", data=data, method=method)
        if self.key:
            req.add_header(ADMIN_HEADER, self.key)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                text = r.read()
                return r.status, json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                message = json.loads(text).get("error", text)
            except (ValueError, AttributeError):
                message = text
            return e.code, message
        except (urllib.error.URLError, OSError) as e:
            raise ServeError(f"{method} {self.http_url}{path}: {getattr(e, 'reason', e)}") from None

    def _ok(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        code, value = self._call(method, path, body)
        if code != 200:
            raise ServeError(f"{method} {path}: HTTP {code}: {value}")
        return value

    def load(self, model: str) -> None:
        self._ok("POST", f"/v2/repository/models/{model}/load")

    def unload(self, model: str) -> None:
        self._ok("POST", f"/v2/repository/models/{model}/unload")

    def index(self) -> list[dict[str, Any]]:
        """``[{name, version, state, reason}]`` of the repository's models."""
        return list(self._ok("POST", "/v2/repository/index") or [])

    def model_ready(self, model: str, timeout: float = 2.0) -> bool:
        try:
            code, _ = self._call("GET", f"/v2/models/{model}/ready", timeout=timeout)
        except ServeError:
            return False
        return code == 200

    def server_ready(self, timeout: float = 2.0) -> bool:
        try:
            code, _ = self._call("GET", "/v2/health/ready", timeout=timeout)
        except ServeError:
            return False
        return code == 200
