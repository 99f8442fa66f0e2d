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
import urllib.request
from typing import Any

from torch import nn

from mbsearch.arch import Arch
from mbsearch.errors import BadInput, RuntimeFailure
from mbsearch.latency import Prepared, exported
from mbsearch.timing import LatencyStats

TOKEN_ENV = "MBSEARCH_TARGET_TOKEN"
# Waits between tries when the agent does not answer: about half a minute in all before a trial fails,
# long enough for an agent restart, short enough that a dead one is noticed.
BACKOFF_SECONDS = (1.0, 2.0, 4.0, 8.0, 16.0)
CONNECT_TIMEOUT = 10.0
ANSWER_TIMEOUT = 900.0  # the agent times one model at a time; several workers may queue on it


class _AgentDown(Exception):
    """No answer, or a 5xx: worth another try."""


class RemoteTarget:
    """Latency from a remote agent; see agent.py for the protocol."""

    runtime = "onnxruntime"
    overlaps_training = True

    def __init__(self, url: str, token: str | None = None, backoff: tuple[float, ...] | None = None) -> None:
        self.name = url.rstrip("/")
        self.backoff = BACKOFF_SECONDS if backoff is None else backoff  # read at call time: tests shorten it
        token = token or os.environ.get(TOKEN_ENV)
        if not token:
            raise BadInput(
                f"--target {self.name}: no token; pass the one the agent printed with --target-token or {TOKEN_ENV}"
            )
        self._token = token
        try:
            self._device = self._call("GET", "/v1/device", None, tries=(0.5,))
        except _AgentDown as exc:
            raise BadInput(
                f"--target {self.name}: no agent answers ({exc}); start 'mbsearch agent' on the device "
                "and check the host, port and firewall"
            ) from None
        except RuntimeFailure as exc:
            raise BadInput(f"--target {self.name}: {exc}") from None
        self.threads = int(self._device.get("threads", 1))

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
        if answer.get("device", {}).get("fingerprint") != self._device["fingerprint"]:
            raise RuntimeFailure(
                f"agent {self.name} is now another device (fingerprint {answer.get('device', {}).get('fingerprint')}, "
                f"was {self._device['fingerprint']}); use a new --study for it"
            )
        stats = answer["stats"]
        return LatencyStats(**(stats | {"target": self.name}))

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
        timeout = ANSWER_TIMEOUT if body is not None else CONNECT_TIMEOUT
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            reason = _error_text(exc)
            if exc.code >= 500:
                raise _AgentDown(f"HTTP {exc.code}: {reason}") from None
            if exc.code == 401:
                raise RuntimeFailure(
                    f"the agent refused the token; pass the one it printed with --target-token or {TOKEN_ENV}"
                ) from None
            raise RuntimeFailure(f"agent {self.name} refused the request (HTTP {exc.code}): {reason}") from None
        except (urllib.error.URLError, OSError, json.JSONDecodeError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise _AgentDown(str(reason).splitlines()[0] if str(reason) else type(exc).__name__) from None


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read()).get("error", ""))[:300]
    except (ValueError, OSError, AttributeError):
        return exc.reason if isinstance(exc.reason, str) else ""
