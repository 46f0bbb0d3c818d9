"""Clients of the deployed ensemble: HTTP or gRPC, sync (`RgalignClient`) or asyncio
(`AsyncRgalignClient`), over tritonclient.

A request is a list of raw feature records (dicts, or JSON text sent as is); the answer is one
`rgalign.inference.Ranked` (intent ids and scores, best first) per record, exactly what the
in-process `rgalign.inference.Pipeline` returns. `rgalign bench` measures the server through
`AsyncRgalignClient` too. A request the server refuses (a bad feature,
``k`` out of range, a batch over the maximum, an unknown model) raises `ServeError` carrying the
server's message; so does a server that cannot be reached.

Example::

    with RgalignClient("127.0.0.1:8001", protocol="grpc") as client:
        client.rank([{"gender": "F", "tier": "gold", ...}], k=3)
        # [Ranked(intent_ids=['i012', 'i007', 'i031'], scores=[2.31, 1.87, 0.42])]

    async with AsyncRgalignClient("http://127.0.0.1:8000") as client:
        answers = await asyncio.gather(*(client.rank([r]) for r in records))
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

import numpy as np

from rgalign.artifacts.registry import ENSEMBLE
from rgalign.errors import ServeError
from rgalign.inference.postprocess import Ranked

PROTOCOLS = ("http", "grpc")
_INT32_MAX = 2**31 - 1
MODEL = ENSEMBLE  # the ensemble `rgalign deploy` writes
DEFAULT_HTTP_PORT = 8000  # Triton's default; gRPC listens on the next port (8001)
Record = Mapping[str, Any] | str | bytes


def split_url(url: str, protocol: str | None = None) -> tuple[str, str]:
    """``"grpc://host:port"`` / ``"http://host:port"`` / ``"host:port"`` -> (``host:port``,
    protocol). The scheme, when present, wins over ``protocol``; without either, HTTP."""
    address = url.strip()
    scheme = None
    if "://" in address:
        scheme, address = address.split("://", 1)
        scheme = scheme.lower()
        if scheme == "https":
            raise ServeError("https is not supported by this client; use http:// or grpc://")
        if scheme not in PROTOCOLS:
            raise ServeError(f"unknown scheme {scheme!r} in {url!r}; use http:// or grpc://")
    address = address.rstrip("/")
    if not address:
        raise ServeError(f"no host:port in url {url!r}")
    chosen = scheme or (protocol or "http").lower()
    if chosen not in PROTOCOLS:
        raise ServeError(f"unknown protocol {protocol!r}; use http or grpc")
    if scheme and protocol and protocol.lower() != scheme:
        raise ServeError(f"url {url!r} says {scheme} but protocol={protocol!r}")
    return address, chosen


def host_port(url: str, default_port: int = DEFAULT_HTTP_PORT) -> tuple[str, int]:
    """``http://h:p``, ``h:p`` or ``h`` -> (host, port), the port defaulting to ``default_port``."""
    parsed = urlparse(url if "://" in url else f"http://{url}")
    return parsed.hostname or "127.0.0.1", parsed.port or default_port


def grpc_url_for(http_url: str) -> str:
    """Triton's default layout: gRPC on the HTTP port + 1 (8000 / 8001; `rgalign serve` too)."""
    host, port = host_port(http_url)
    return f"{host}:{port + 1}"


def features_shape(dims: Sequence[int], batch: int) -> list[int]:
    """Request shape of ``features`` for ``batch`` items given the model's metadata dims (batch
    dim included): ``[B, 1]`` for dims ``[-1, 1]``, ``[B]`` for ``[-1]``."""
    return [batch, 1] if len(dims) >= 2 else [batch]


def encode_records(records: Sequence[Record], dims: Sequence[int] = (-1, 1)) -> np.ndarray:
    """Records -> BYTES (B, 1) (or (B,) for ``dims`` ``[-1]``): dicts as JSON, strings and bytes
    sent as they are."""
    items = []
    for r in records:
        if isinstance(r, bytes):
            items.append(r)
        elif isinstance(r, str):
            items.append(r.encode("utf-8"))
        else:
            items.append(json.dumps(dict(r), ensure_ascii=False).encode("utf-8"))
    return np.array(items, dtype=object).reshape(features_shape(dims, len(items)))


def _module(protocol: str, aio: bool) -> Any:
    if protocol == "grpc":
        import tritonclient.grpc as module

        if aio:
            import tritonclient.grpc.aio as aio_module

            return module, aio_module
    else:
        import tritonclient.http as module

        if aio:
            import tritonclient.http.aio as aio_module

            return module, aio_module
    return module, module


def _inputs(module: Any, records: Sequence[Record], k: int | None, dims: Sequence[int]) -> list[Any]:
    features = encode_records(records, dims)
    inputs = [module.InferInput("features", list(features.shape), "BYTES")]
    inputs[0].set_data_from_numpy(features)
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ServeError(f"k must be an integer, got {k!r}")
        if not 1 <= int(k) <= _INT32_MAX:
            raise ServeError(f"k must be between 1 and {_INT32_MAX} (top_k is INT32), got {k}")
        top_k = np.full((len(records), 1), int(k), dtype=np.int32)
        inputs.append(module.InferInput("top_k", list(top_k.shape), "INT32"))
        inputs[1].set_data_from_numpy(top_k)
    return inputs


def _ranked(result: Any) -> list[Ranked]:
    ids = result.as_numpy("intent_ids")
    scores = result.as_numpy("scores")
    return [
        Ranked([i.decode("utf-8") if isinstance(i, bytes) else str(i) for i in row_ids],
               [float(s) for s in row_scores])
        for row_ids, row_scores in zip(ids, scores)
    ]  # fmt: skip


def _error(e: Exception, model: str, url: str) -> ServeError:
    """One line: the server's message (or the connection failure) and where it happened."""
    from tritonclient.utils import InferenceServerException

    if isinstance(e, InferenceServerException):
        message = e.message() or str(e)
        status = e.status()
        where = f"{model} at {url}" + (f" ({status})" if status else "")
        return ServeError(f"{where}: {message}")
    from http.client import HTTPException

    if isinstance(e, HTTPException):
        return ServeError(
            f"{url} did not answer in HTTP ({type(e).__name__}: {e}); is that the gRPC port? "
            "use grpc://host:port for gRPC"
        )
    return ServeError(f"cannot reach the Triton server at {url}: {type(e).__name__}: {e}")


def _client_errors() -> tuple[type[BaseException], ...]:
    """What tritonclient raises: the server's refusals, connection failures (OSError), and a
    reply that is not HTTP (an HTTP client aimed at the gRPC port: `http.client.HTTPException`
    from the blocking client, ``aiohttp.ClientError`` from the asyncio one)."""
    from http.client import HTTPException

    from tritonclient.utils import InferenceServerException

    errors: list[type[BaseException]] = [InferenceServerException, OSError, HTTPException]
    try:
        from aiohttp import ClientError

        errors.append(ClientError)
    except ImportError:
        pass
    return tuple(errors)


class _Client:
    """What both clients share: the address, the model, the timeout, and how a request is built."""

    def __init__(self, url: str, protocol: str | None, model: str, timeout: float | None, aio: bool) -> None:
        self.address, self.protocol = split_url(url, protocol)
        self.url = f"{self.protocol}://{self.address}"
        self.model = model
        self.timeout = timeout
        self._module, self._aio = _module(self.protocol, aio=aio)
        self.features_dims: list[int] = [-1, 1]  # the ensemble's; `describe` reads the server's
        self.output_names = ["intent_ids", "scores"]

    def _request(self, records: Sequence[Record], k: int | None) -> tuple[list[Any], dict[str, Any]]:
        """(inputs, keyword arguments of ``infer``) of one request for ``records``."""
        kwargs: dict[str, Any] = {"outputs": [self._module.InferRequestedOutput(n) for n in self.output_names]}
        if self.protocol == "grpc" and self.timeout is not None:
            kwargs["client_timeout"] = self.timeout
        return _inputs(self._module, records, k, self.features_dims), kwargs

    def _use_metadata(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        inputs = {i["name"]: i for i in meta.get("inputs", [])}
        if "features" not in inputs:
            raise ServeError(f"model {self.model!r} has no input 'features' (it has {', '.join(inputs) or 'none'})")
        self.features_dims = [int(d) for d in inputs["features"].get("shape", [-1, 1])]
        names = [o["name"] for o in meta.get("outputs", [])]
        self.output_names = [n for n in ("intent_ids", "scores") if n in names] or names
        return {"features_dims": self.features_dims, "outputs": self.output_names}


class RgalignClient(_Client):
    """A blocking client of the ``rgalign`` ensemble (``protocol`` "http" or "grpc"; a
    ``grpc://`` or ``http://`` url decides by itself). ``timeout`` seconds per request (None:
    the library's default). Close it (or use ``with``) before stopping a server: an open HTTP
    connection holds Triton's shutdown for its whole exit timeout."""

    def __init__(
        self, url: str, protocol: str | None = None, model: str = MODEL, timeout: float | None = 30.0
    ) -> None:
        super().__init__(url, protocol, model, timeout, aio=False)
        try:
            if self.protocol == "http":
                kwargs = {}
                if timeout is not None:
                    kwargs = {"connection_timeout": timeout, "network_timeout": timeout}
                self._client = self._module.InferenceServerClient(self.address, **kwargs)
            else:
                self._client = self._module.InferenceServerClient(self.address)
        except _client_errors() as e:
            raise _error(e, self.model, self.url) from None

    def rank(self, records: Sequence[Record], k: int | None = None) -> list[Ranked]:
        """Top-``k`` intents per record (``k`` None: the deployment's default) in one request."""
        records = list(records)
        if not records:
            return []
        inputs, kwargs = self._request(records, k)
        try:
            result = self._client.infer(self.model, inputs, **kwargs)
        except _client_errors() as e:
            raise _error(e, self.model, self.url) from None
        return _ranked(result)

    def is_ready(self) -> bool:
        """Whether the server answers and the model is ready (never raises)."""
        try:
            return bool(self._client.is_server_ready() and self._client.is_model_ready(self.model))
        except Exception:  # noqa: BLE001 - not ready, whatever the reason
            return False

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RgalignClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRgalignClient(_Client):
    """The asyncio twin of `RgalignClient` (tritonclient's ``http.aio`` / ``grpc.aio``)."""

    def __init__(
        self, url: str, protocol: str | None = None, model: str = MODEL, timeout: float | None = 30.0
    ) -> None:
        super().__init__(url, protocol, model, timeout, aio=True)
        if self.protocol == "http" and timeout is not None:
            self._client = self._aio.InferenceServerClient(self.address, conn_timeout=timeout)
        else:
            self._client = self._aio.InferenceServerClient(self.address)

    async def rank(self, records: Sequence[Record], k: int | None = None) -> list[Ranked]:
        records = list(records)
        if not records:
            return []
        inputs, kwargs = self._request(records, k)
        try:
            result = await self._client.infer(self.model, inputs, **kwargs)
        except _client_errors() as e:
            raise _error(e, self.model, self.url) from None
        return _ranked(result)

    async def describe(self) -> dict[str, Any]:
        """Check that the server and the model are ready and adopt the model's ``features`` dims
        and outputs from its metadata; returns them. `ServeError` when not ready."""
        if not await self._client.is_server_ready():
            raise ServeError(f"server at {self.url} is not ready")
        if not await self._client.is_model_ready(self.model):
            raise ServeError(f"model {self.model!r} is not ready at {self.url}")
        if self.protocol == "http":
            meta = await self._client.get_model_metadata(self.model)
        else:
            meta = await self._client.get_model_metadata(self.model, as_json=True)
        return self._use_metadata(meta)

    async def is_ready(self) -> bool:
        try:
            return bool(
                await self._client.is_server_ready() and await self._client.is_model_ready(self.model)
            )
        except Exception:  # noqa: BLE001 - not ready, whatever the reason
            return False

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> AsyncRgalignClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
