"""`mbsearch agent`: a latency service that runs on the target device.

It receives an ONNX model over HTTP and answers with latency statistics taken exactly as a local search
takes them (timing.py): warm-up, median and IQR, re-measured while noisy, one timing at a time. It needs
numpy, onnxruntime and bottle only (no torch), so `pip install --no-deps mbsearch` plus those is enough on a
Raspberry Pi, a Jetson or a phone under Termux.

Protocol (JSON answers; `Authorization: Bearer TOKEN` on every call but /v1/health):
  GET  /v1/health                  {"ok": true}
  GET  /v1/device                  the device fingerprint (CPU, cores, runtime, providers, threads), and the
                                   precision it serves (any, fp32 or int8: its --precision)
  POST /v1/measure?warmup=&runs=&attempts=&sessions=   body: the ONNX model  ->  {"stats": {...}, "device": {...}}

Security: binds 127.0.0.1 unless told otherwise; every call needs the token (compared in constant time);
bodies over --max-model-mb are refused before they are read; only the ONNX format with standard operators
loads (no custom-operator library is ever registered) and nothing is ever unpickled. A bad request gets a
4xx with a one-line JSON reason and the agent keeps serving.
"""

from __future__ import annotations

import hmac
import json
import secrets
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import bottle

from mbsearch.device import hostlock
from mbsearch.device.timing import LatencyStats, TimingPlan, device_info, onnx_session, time_onnx_repeated

API = "v1"
MAX_INPUT_ELEMENTS = 4 * 1024 * 1024  # 4 channels at 1024x1024: the largest input an arch file allows
QUERY_LIMITS = {"warmup": (0, 1000, 10), "runs": (5, 10_000, 50), "attempts": (1, 10, 3), "sessions": (1, 10, 1)}


@dataclass(frozen=True)
class AgentConfig:
    token: str
    threads: int = 1
    provider: str = "CPUExecutionProvider"
    max_model_bytes: int = 64 * 1024 * 1024
    max_seconds: float = 120.0  # timing budget of one request; a slower model is refused, not timed for hours
    # A client silent this long mid-request (a declared body never sent, a stalled upload) gets a 408 and loses
    # its connection, not a thread. Per read, not per body: a slow but live upload is never cut.
    read_timeout: float = 15.0
    # The graphs it times: any, or only float (fp32) or only int8 (QDQ) ones, so that a device kept for one
    # deployment precision is never used to rank networks in the other.
    precision: str = "any"


def graph_precision(model: bytes) -> str:
    """int8 for a QDQ graph (ONNX Runtime's static quantization), else fp32. Read from the serialized
    operator names, since the agent has no onnx package: a float graph mbsearch exports holds none."""
    return "int8" if b"QuantizeLinear" in model else "fp32"


class _Refused(Exception):
    """A request the agent will not serve: becomes a 4xx with this message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def make_app(config: AgentConfig, device: dict[str, Any]) -> bottle.Bottle:
    """The agent as a WSGI app answering for `device`. One timing at a time, whatever the number of clients."""
    app = bottle.Bottle(catchall=True)
    timing_lock = threading.Lock()

    def answer(status: int, body: dict[str, Any]) -> str:
        bottle.response.status = status
        bottle.response.content_type = "application/json"
        return json.dumps(body)

    def guarded(handler):
        def wrapper(*args: Any, **kwargs: Any) -> str:
            try:
                _check_token(bottle.request, config.token)
                return answer(200, handler(*args, **kwargs))
            except _Refused as refused:
                _drain(bottle.request, config.max_model_bytes)
                return answer(refused.status, {"error": str(refused)})

        return wrapper

    @app.get(f"/{API}/health")
    def health() -> str:
        return answer(200, {"ok": True, "api": API})

    @app.get(f"/{API}/device")
    @guarded
    def device_route() -> dict[str, Any]:
        # max_seconds lets a client bound its wait for an answer (it is not part of the fingerprint)
        return device | {"max_seconds": config.max_seconds, "precision": config.precision}

    @app.post(f"/{API}/measure")
    @guarded
    def measure_route() -> dict[str, Any]:
        # The body is read before the query is judged: a client still sending would otherwise lose the
        # answer to a reset connection.
        model = _read_body(bottle.request, config.max_model_bytes)
        settings = {name: _query_int(bottle.request, name, *limits) for name, limits in QUERY_LIMITS.items()}
        if config.precision != "any" and (sent := graph_precision(model)) != config.precision:
            raise _Refused(
                422,
                f"this agent times {config.precision} graphs only (its --precision) and this is an {sent} graph; "
                "start an agent with --precision any or the study's precision",
            )
        with timing_lock, hostlock.timing():
            stats = _time_model(model, config, TimingPlan(**settings))
        return {"stats": asdict(stats), "device": device}

    def error_page(error: bottle.HTTPError) -> str:
        # bottle's own errors (404, 405, 500) as one JSON line, never an HTML page or a traceback
        bottle.response.content_type = "application/json"
        return json.dumps({"error": f"{error.status_line}: {bottle.request.method} {bottle.request.path}"})

    app.default_error_handler = error_page
    return app


def _time_model(model: bytes, config: AgentConfig, plan: TimingPlan) -> LatencyStats:
    """Time a model sent to the agent by `plan`, refused where one run says it would take over the agent's
    --max-seconds, or where it fails when run."""
    session = _load(model, config)
    shape = _input_shape(session)
    first = _first_run(session, shape, config.max_seconds)
    expected = first * (plan.warmup + plan.runs) * plan.sessions * plan.attempts
    if expected > config.max_seconds:
        raise _Refused(
            422,
            f"one run takes {first:.2f} s: timing would take ~{expected:.0f} s, over this agent's "
            f"--max-seconds {config.max_seconds:g}; ask for fewer runs or raise the limit",
        )
    try:
        return time_onnx_repeated(lambda: _load(model, config), shape, "agent", config.threads, plan)
    except _Refused:
        raise
    except Exception as exc:  # ORT's own errors when a loaded model fails to run (memory, shapes)
        raise _Refused(422, f"the model fails when run: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _first_run(session: Any, shape: tuple[int, ...], max_seconds: float) -> float:
    """Seconds of one run, stopped by ONNX Runtime's terminate flag when it outlasts `max_seconds`: a model
    that never ends (a Loop of 10^12 iterations) is refused, and the timing lock is released."""
    import numpy as np
    import onnxruntime as ort

    options = ort.RunOptions()
    timer = threading.Timer(max_seconds, lambda: setattr(options, "terminate", True))
    timer.daemon = True
    feed = {session.get_inputs()[0].name: np.zeros(shape, dtype=np.float32)}
    start = time.perf_counter()
    timer.start()
    try:
        session.run(None, feed, options)
    except Exception as exc:
        if options.terminate:
            raise _Refused(
                422, f"one run did not finish within this agent's --max-seconds {max_seconds:g}; stopped, not timed"
            ) from None
        raise _Refused(422, f"the model fails when run: {_first_line(exc)}") from None
    finally:
        timer.cancel()
    return time.perf_counter() - start


def _check_token(request: bottle.BaseRequest, token: str) -> None:
    given = request.get_header("Authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise _Refused(401, "missing or wrong token: send 'Authorization: Bearer TOKEN' (printed at agent start)")


def _query_int(request: bottle.BaseRequest, name: str, low: int, high: int, default: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise _Refused(400, f"{name}={text[:20]!r}: not an integer") from None
    if not low <= value <= high:
        raise _Refused(400, f"{name}={value}: must be from {low} to {high}")
    return value


def _read_body(request: bottle.BaseRequest, limit: int) -> bytes:
    """The body, refused by its declared length before a byte is read when it is too big."""
    length = _content_length(request)
    if length < 0:
        raise _Refused(411, "no Content-Length: send the ONNX model as the request body with its length")
    if length > limit:
        raise _Refused(413, f"model of {length:,} bytes is over this agent's limit of {limit:,} (--max-model-mb)")
    if length == 0:
        raise _Refused(400, "empty body: send the ONNX model as the request body")
    stream = request.environ["wsgi.input"]
    request.environ["mbsearch.body_read"] = True
    chunks, left = [], length
    while left > 0:
        try:
            chunk = stream.read(min(left, 1 << 20))
        except OSError:  # the read timeout: a client that stopped sending
            raise _Refused(408, f"body stopped after {length - left:,} of {length:,} bytes") from None
        if not chunk:
            raise _Refused(400, f"body ended after {length - left:,} of {length:,} bytes")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _drain(request: bottle.BaseRequest, limit: int) -> None:
    """Read what is left of a refused request's body (when within the limit), so that the client, still
    sending, gets the answer rather than a reset connection."""
    length = _content_length(request, strict=False)
    if request.environ.get("mbsearch.body_read") or not 0 < length <= limit:
        return
    stream, left = request.environ["wsgi.input"], length
    try:
        while left > 0 and (chunk := stream.read(min(left, 1 << 20))):
            left -= len(chunk)
    except OSError:
        return


def _content_length(request: bottle.BaseRequest, strict: bool = True) -> int:
    """The declared body length, -1 when absent; a malformed one is the client's fault (400), not a 500."""
    text = request.environ.get("CONTENT_LENGTH") or ""
    if not text:
        return -1
    if not text.isdigit() or len(text) > 18:
        if strict:
            raise _Refused(400, f"Content-Length {text[:20]!r} is not a whole number of bytes")
        return -1
    return int(text)


def _load(model: bytes, config: AgentConfig) -> Any:
    try:
        return onnx_session(model, config.threads, [config.provider])
    except Exception as exc:  # ORT raises its own exception types for every malformed or foreign model
        reason = _first_line(exc)
        raise _Refused(422, f"not an ONNX model with standard operators that ONNX Runtime loads: {reason}") from None


def _input_shape(session: Any) -> tuple[int, ...]:
    """The one float image input, at batch 1; symbolic dimensions other than the batch are refused."""
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 4:
        raise _Refused(422, "the model must take one float input of shape (1, C, H, W)")
    _batch, *rest = inputs[0].shape  # the batch may be symbolic: it is timed at 1
    if not all(isinstance(dim, int) and dim > 0 for dim in rest):
        raise _Refused(422, f"input shape {inputs[0].shape}: C, H and W must be fixed numbers")
    shape = (1, *rest)
    if shape[1] * shape[2] * shape[3] > MAX_INPUT_ELEMENTS:
        raise _Refused(422, f"input shape {shape} is over the agent's limit of {MAX_INPUT_ELEMENTS:,} values")
    return shape


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """One thread per connection (a waiting client never blocks health or auth checks); timing is
    serialised by the app's lock."""

    daemon_threads = True


class _RequestLog(WSGIRequestHandler):
    """One line per request on stderr, the agent's log."""

    def log_message(self, format: str, *args: Any) -> None:
        print(f"{self.address_string()} {format % args}", file=sys.stderr, flush=True)

    def handle(self) -> None:
        """wsgiref reads the request line outside any handler: a client that connects and sends nothing
        within the read timeout (a port scanner, a keep-alive pool) would print a traceback to the log.
        It is an expected event: one line."""
        try:
            super().handle()
        except TimeoutError:
            self.log_message("closed an idle connection: no request within %s s", self.timeout)
        except ConnectionError as exc:
            self.log_message("connection lost before the request was read (%s)", type(exc).__name__)


def serve(host: str, port: int, config: AgentConfig, announce: Any = print, token_chosen: bool = False) -> None:
    """Serve until interrupted. `announce` gets the startup lines (address, device, and the token where it
    was generated here: a token the user chose is never printed, so it stays out of service logs)."""
    server_class = _ThreadingServer
    if ":" in host:
        server_class = type("_ThreadingServer6", (_ThreadingServer,), {"address_family": socket.AF_INET6})
    device = device_info(config.threads, [config.provider])
    # the socket timeout of each connection (StreamRequestHandler.timeout): a half-sent body frees its thread
    handler = type("_TimedRequestLog", (_RequestLog,), {"timeout": config.read_timeout})
    server = make_server(host, port, make_app(config, device), server_class=server_class, handler_class=handler)
    bound_port = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    announce(f"mbsearch agent on http://{shown}:{bound_port}/ ({time.strftime('%Y-%m-%d %H:%M:%S')})")
    announce(
        f"device {device['fingerprint']}: {device['cpu']}, {device['cores']} core(s), {device['runtime']}, "
        f"{config.provider}, {config.threads} thread(s), {config.precision} graph(s)"
    )
    announce("token (yours, from --token or MBSEARCH_AGENT_TOKEN)" if token_chosen else f"token {config.token}")
    try:
        server.serve_forever()
    finally:
        server.server_close()


def new_token() -> str:
    return secrets.token_urlsafe(24)


@dataclass
class LocalAgent:
    """An agent process on this machine (tests, benchmarks, or "what would one core do")."""

    process: Any
    url: str
    token: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


def start_local_agent(
    threads: int = 1,
    cpus: str | None = None,
    port: int = 0,
    token: str | None = None,
    env: dict | None = None,
    precision: str = "any",
) -> LocalAgent:
    """Start `mbsearch agent` in a subprocess on 127.0.0.1, pinned to `cpus` with taskset when given
    (another core count stands in for another device), and wait until it serves."""
    import os
    import shutil
    import subprocess

    token = token or new_token()
    command = [sys.executable, "-m", "mbsearch", "agent", "--port", str(port), "--threads", str(threads)]
    command += ["--precision", precision]
    if cpus is not None:
        taskset = shutil.which("taskset")
        if taskset is None:
            raise RuntimeError("taskset is not installed (Debian package util-linux)")
        command = [taskset, "-c", cpus, *command]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=(env or os.environ) | {"MBSEARCH_AGENT_TOKEN": token},
    )
    assert process.stdout is not None
    url = None
    for line in process.stdout:
        if line.startswith("mbsearch agent on "):
            url = line.split()[3].rstrip("/")
        if line.startswith("token "):
            break
    if url is None:
        process.kill()
        raise RuntimeError(f"the agent did not start (exit code {process.wait()})")
    return LocalAgent(process, url, token)
