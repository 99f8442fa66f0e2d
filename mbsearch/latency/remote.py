"""A device running `mbsearch agent`, as a latency target: `--target http://HOST:PORT`.

The model is exported here and sent as ONNX; the agent times it and answers with statistics. A lost or
restarting agent is retried with backoff; when it stays away the trial fails with the reason, and no
latency is ever invented. The agent's device fingerprint is read once and checked on every answer, so a
study never mixes latencies of two devices under one URL.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Annotated, Any, Literal

import pydantic
from pydantic import ConfigDict, Field, StringConstraints
from torch import nn

from mbsearch.architecture.arch import Arch
from mbsearch.device.timing import LatencyStats
from mbsearch.errors import BadInput, RuntimeFailure
from mbsearch.latency.targets import Prepared, exported
from mbsearch.urls import check_target_url

TOKEN_ENV = "MBSEARCH_TARGET_TOKEN"
# Waits between tries when the agent does not answer: about half a minute in all before a trial fails,
# long enough for an agent restart, short enough that a dead one is noticed.
BACKOFF_SECONDS = (1.0, 2.0, 4.0, 8.0, 16.0)
CONNECT_TIMEOUT = 10.0
# The agent refuses a model whose timing would exceed its --max-seconds, and times one model at a time, so
# an answer is due within a few of its timings (other workers may queue ahead): the wait is bounded by that,
# never by a fixed quarter of an hour, and a silent agent is not retried as if it were down.
QUEUED_TIMINGS = 3
ANSWER_MARGIN_SECONDS = 30.0
DEFAULT_AGENT_MAX_SECONDS = 120.0  # an agent that does not say its limit (older versions) has this default

# Every field an agent sends is shown in terminals and reports: no control characters (escape sequences)
_Text = Annotated[str, StringConstraints(max_length=200, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$")]


class DeviceAnswer(pydantic.BaseModel):
    """`GET /v1/device`: the device fingerprint's fields, validated (an answer is not trusted)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    cpu: _Text
    machine: _Text
    system: _Text
    cores: Annotated[int, Field(ge=1, le=1_000_000)]
    runtime: _Text
    providers: Annotated[list[_Text], Field(min_length=1, max_length=20)]
    threads: Annotated[int, Field(ge=1, le=100_000)]
    fingerprint: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
    max_seconds: Annotated[float, Field(gt=0, le=86_400)] | None = None  # the agent's --max-seconds
    precision: Literal["any", "fp32", "int8"] | None = None  # the graphs it times (older agents: any)


_Milliseconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class StatsAnswer(pydantic.BaseModel):
    """The statistics of `POST /v1/measure`: finite, positive, known keys."""

    model_config = ConfigDict(extra="forbid")

    median_ms: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    iqr_ms: _Milliseconds
    mean_ms: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    min_ms: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    runs: Annotated[int, Field(ge=1)]
    attempts: Annotated[int, Field(ge=1)]
    target: _Text
    runtime: _Text
    threads: Annotated[int, Field(ge=1)]
    sd_ms: _Milliseconds = 0.0  # absent from agents before 2026-12-02
    source: Literal["measured"] = "measured"  # an agent measures; only a lookup table predicts


class MeasureAnswer(pydantic.BaseModel):
    model_config = ConfigDict(extra="forbid")

    stats: StatsAnswer
    device: DeviceAnswer


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx is an answer, never followed: following it would send the token and model elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


class _AgentDown(Exception):
    """No answer, or a 5xx: worth another try."""


class RemoteTarget:
    """Latency from a remote agent; see agent.py for the protocol."""

    runtime = "onnxruntime"
    overlaps_training = True

    def __init__(self, url: str, token: str | None = None, backoff: tuple[float, ...] | None = None) -> None:
        check_target_url(url)
        self.name = url.rstrip("/")
        self.backoff = BACKOFF_SECONDS if backoff is None else backoff  # read at call time: tests shorten it
        token = token or os.environ.get(TOKEN_ENV)
        if not token:
            raise BadInput(
                f"--target {self.name}: no token; pass the one the agent printed with --target-token or {TOKEN_ENV}"
            )
        if not token.isascii() or not token.isprintable() or token.strip() != token:
            raise BadInput(
                "--target-token: a token is printable ASCII without spaces around it; copy the one the agent printed"
            )
        self._token = token
        try:
            answer = self._call("GET", "/v1/device", None, tries=(0.5,))
        except _AgentDown as exc:
            raise RuntimeFailure(
                f"--target {self.name}: no agent answers ({exc}); start 'mbsearch agent' on the device "
                "and check the host, port and firewall"
            ) from None
        except RuntimeFailure as exc:  # it answered, but not as an agent that takes this token would
            raise BadInput(f"--target {self.name}: {exc}") from None
        try:
            device = _validated(DeviceAnswer, answer, f"agent {self.name}: /v1/device")
        except RuntimeFailure as exc:
            raise BadInput(str(exc)) from None
        self.max_seconds = device.max_seconds or DEFAULT_AGENT_MAX_SECONDS
        self.precision = device.precision or "any"
        self._device = device.model_dump(exclude={"max_seconds", "precision"})
        self.threads = device.threads

    def check_precision(self, precision: str) -> None:
        """Refuse, before a search or measurement starts, an agent kept for the other precision."""
        if self.precision not in ("any", precision):
            raise BadInput(
                f"--target {self.name} times {self.precision} graphs only (the agent's --precision) and this is "
                f"--precision {precision}; start the agent with --precision {precision} or any"
            )

    @property
    def answer_timeout(self) -> float:
        """The longest wait for one timing: a few of the agent's longest timings, plus a margin."""
        return QUEUED_TIMINGS * self.max_seconds + ANSWER_MARGIN_SECONDS

    def device(self) -> dict[str, Any]:
        return self._device

    def prepare(self, model: nn.Module, arch: Arch, timings: dict[str, float] | None = None) -> Prepared:
        return exported(model, arch, timings)  # exported here, timed on the device

    def time(self, prepared: Prepared) -> LatencyStats:
        query = "&".join(f"{key}={value}" for key, value in prepared.recipe.items())
        try:
            answer = self._call("POST", f"/v1/measure?{query}", prepared.payload, tries=self.backoff)
        except _AgentDown as exc:
            raise RuntimeFailure(
                f"agent {self.name} unreachable after {len(self.backoff) + 1} tries ({exc}); "
                "no latency recorded; rerun the same command once the agent is back"
            ) from None
        checked = _validated(MeasureAnswer, answer, f"agent {self.name}: /v1/measure")
        if checked.device.fingerprint != self._device["fingerprint"]:
            raise RuntimeFailure(
                f"agent {self.name} is now another device (fingerprint {checked.device.fingerprint}, "
                f"was {self._device['fingerprint']}); use a new --study for it"
            )
        return LatencyStats(**(checked.stats.model_dump() | {"target": self.name}))

    def _call(self, method: str, path: str, body: bytes | None, tries: tuple[float, ...]) -> dict[str, Any]:
        """One JSON call, retried with backoff while the agent is down; a 4xx is final."""
        waits = (*tries, None)
        for wait in waits:
            try:
                return self._once(method, path, body)
            except _AgentDown:
                if wait is None:
                    raise
                time.sleep(wait)
        raise AssertionError("unreachable")

    def _once(self, method: str, path: str, body: bytes | None) -> dict[str, Any]:
        request = urllib.request.Request(
            self.name + path,
            data=body,
            method=method,
            headers={"Authorization": f"Bearer {self._token}", "Content-Type": "application/octet-stream"},
        )
        timeout = self.answer_timeout if body is not None else CONNECT_TIMEOUT
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                text = response.read(MAX_ANSWER_BYTES + 1)
        except urllib.error.HTTPError as exc:
            reason = _error_text(exc)
            if 300 <= exc.code < 400:
                raise RuntimeFailure(
                    f"{self.name} answered with a redirect (HTTP {exc.code}); mbsearch never follows one, since it "
                    "would send the token and the model elsewhere: give the agent's own address"
                ) from None
            if exc.code >= 500:
                raise _AgentDown(f"HTTP {exc.code}: {reason}") from None
            if exc.code == 401:
                raise RuntimeFailure(
                    f"the agent refused the token; pass the one it printed with --target-token or {TOKEN_ENV}"
                ) from None
            raise RuntimeFailure(f"agent {self.name} refused the request (HTTP {exc.code}): {reason}") from None
        except TimeoutError:
            if body is None:
                raise _AgentDown(f"no answer within {timeout:g} s") from None
            raise RuntimeFailure(
                f"agent {self.name} took the model but gave no answer within {timeout:.0f} s ({QUEUED_TIMINGS} x its "
                f"--max-seconds {self.max_seconds:g} + {ANSWER_MARGIN_SECONDS:g} s); no latency recorded; check the "
                "agent's log"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            if isinstance(reason, TimeoutError) and body is not None:
                raise RuntimeFailure(
                    f"agent {self.name} took the model but gave no answer within {timeout:.0f} s; no latency recorded"
                ) from None
            raise _AgentDown(str(reason).splitlines()[0] if str(reason) else type(exc).__name__) from None
        if len(text) > MAX_ANSWER_BYTES:
            raise RuntimeFailure(f"{self.name} answered with over {MAX_ANSWER_BYTES:,} bytes: not an mbsearch agent")
        try:
            return json.loads(text)
        except ValueError:
            raise RuntimeFailure(
                f"{self.name} answers, but not with JSON: not an mbsearch agent (check the host and port)"
            ) from None


MAX_ANSWER_BYTES = 1_000_000


def _validated(model: type[pydantic.BaseModel], answer: Any, where: str) -> Any:
    """An agent's answer as a typed model, or one line naming what is wrong with it."""
    try:
        return model.model_validate(answer)
    except pydantic.ValidationError as exc:
        problem = exc.errors()[0]
        path = ".".join(str(part) for part in problem["loc"]) or "answer"
        raise RuntimeFailure(
            f"{where}: invalid answer at {path}: {problem['msg']}; not an mbsearch agent of this version?"
        ) from None


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        return _printable(str(json.loads(exc.read(10_000)).get("error", ""))[:300])
    except (ValueError, OSError, AttributeError):
        return _printable(exc.reason) if isinstance(exc.reason, str) else ""


def _printable(text: str) -> str:
    """An agent's text as it may reach a terminal: control characters escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
