"""The latency agent as a separate process on 127.0.0.1: pinned to one core with another thread count, it
stands in for another device. Real HTTP, real ONNX Runtime, real searches against it."""

from __future__ import annotations

import http.client
import json
import os
import pickle
import time
import urllib.parse
from pathlib import Path

import numpy as np
import optuna
import pytest
from onnx import TensorProto, helper, numpy_helper

from mbsearch.architecture.zoo import reference_arch
from mbsearch.device.agent import start_local_agent
from mbsearch.errors import BadInput, RuntimeFailure
from mbsearch.latency import remote
from mbsearch.latency.cache import measure_on
from mbsearch.latency.remote import RemoteTarget
from mbsearch.latency.targets import LocalTarget
from mbsearch.nn.model import build_model
from mbsearch.nn.onnx_export import to_onnx
from mbsearch.search.loop import run_search
from mbsearch.study.config import RunConfig
from tests.conftest import TINY_BUDGET

pytestmark = pytest.mark.slow
COMPLETE = optuna.trial.TrialState.COMPLETE
ONE_CORE = str(max(os.sched_getaffinity(0)))  # the agent's core: the last one this test may use


@pytest.fixture(scope="module")
def lock_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("locks")


@pytest.fixture(autouse=True)
def private_lock_dir(lock_dir, monkeypatch):
    monkeypatch.setenv("MBSEARCH_LOCK_DIR", str(lock_dir))


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory) -> Path:
    """A folder that, first on PYTHONPATH, makes `import torch` fail: the agent must not need torch, nor any
    other package outside its install line (README: onnxruntime numpy bottle typer rich pydantic)."""
    folder = tmp_path_factory.mktemp("no-torch")
    for package in ("torch", "optuna", "pandas", "plotly", "fvcore", "onnx", "safetensors"):
        (folder / package).mkdir()
        (folder / package / "__init__.py").write_text(f"raise ImportError('{package} is not on this device')\n")
    return folder


@pytest.fixture(scope="module")
def agent(no_torch, lock_dir):
    """One core, two threads, no torch: a different device from this 2-core, 1-thread host."""
    env = os.environ | {"PYTHONPATH": f"{no_torch}:{Path(__file__).parents[2]}", "MBSEARCH_LOCK_DIR": str(lock_dir)}
    process = start_local_agent(threads=2, cpus=ONE_CORE, env=env)
    yield process
    process.stop()


def _onnx(name: str = "mobilenet_v3_small_050", size: int = 28) -> bytes:
    arch = reference_arch(name, size, 1, 10)
    return to_onnx(build_model(arch), arch)


def _request(agent, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """One raw HTTP request (http.client, so that headers can be wrong on purpose)."""
    address = urllib.parse.urlsplit(agent.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    return response.status, json.loads(payload)


def _auth(agent) -> dict:
    return {"Authorization": f"Bearer {agent.token}"}


def test_agent_fingerprint_and_numbers_differ_from_the_local_device(agent) -> None:
    target = RemoteTarget(agent.url, agent.token)
    local = LocalTarget("cpu", "onnxruntime", 1)
    device = target.device()
    assert device["cores"] == 1 and device["threads"] == 2  # taskset -c ONE_CORE and --threads 2
    assert local.device()["cores"] >= 2 and local.device()["threads"] == 1
    assert device["fingerprint"] != local.device()["fingerprint"]
    arch = reference_arch("mobilenet_v3_small", 28, 1, 10)
    model = build_model(arch)
    there, here = measure_on(target, model, arch), measure_on(local, model, arch)
    assert there.target == agent.url and there.threads == 2 and here.threads == 1
    assert there.median_ms > 0 and here.median_ms > 0 and there.median_ms != here.median_ms
    bigger = reference_arch("mobilenet_v3_large", 28, 1, 10)
    assert measure_on(target, build_model(bigger), bigger).median_ms > there.median_ms


def _custom_op_model() -> bytes:
    node = helper.make_node("Evil", ["input"], ["out"], domain="com.evil")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.evil", 1)])
    return model.SerializeToString()


def _external_data_model(location: str) -> bytes:
    weight = numpy_helper.from_array(np.zeros((1, 1, 1, 1), np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["out"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def _symbolic_size_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["out"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, "height", "width"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


BAD_REQUESTS = {
    "no token": ("POST", "/v1/measure", "model", {}, 401),
    "wrong token": ("POST", "/v1/measure", "model", {"Authorization": "Bearer not-the-token"}, 401),
    "basic auth": ("GET", "/v1/device", None, {"Authorization": "Basic dXNlcjpwYXNz"}, 401),
    "unknown path": ("GET", "/v1/nothing", None, "auth", 404),
    "wrong method": ("GET", "/v1/measure", None, "auth", 405),
    "empty body": ("POST", "/v1/measure", b"", "auth", 400),
    "garbage": ("POST", "/v1/measure", b"\x00\xff garbage \x13" * 100, "auth", 422),
    "json body": ("POST", "/v1/measure", b'{"model": "mobilenet"}', "auth", 422),
    "a pickle": ("POST", "/v1/measure", pickle.dumps({"x": 1}), "auth", 422),
    "custom operator": ("POST", "/v1/measure", "custom", "auth", 422),
    "external data, absolute": ("POST", "/v1/measure", "external-abs", "auth", 422),
    "external data, relative": ("POST", "/v1/measure", "external-rel", "auth", 422),
    "symbolic input size": ("POST", "/v1/measure", "symbolic", "auth", 422),
    "runs not a number": ("POST", "/v1/measure?runs=many", "model", "auth", 400),
    "runs too few": ("POST", "/v1/measure?runs=1", "model", "auth", 400),
    "attempts too many": ("POST", "/v1/measure?attempts=1000", "model", "auth", 400),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_every_bad_request_is_a_4xx_and_the_agent_keeps_serving(agent, case: str) -> None:
    method, path, body, headers, status = BAD_REQUESTS[case]
    bodies = {
        "model": _onnx(),
        "custom": _custom_op_model(),
        "external-abs": _external_data_model("/etc/hostname"),
        "external-rel": _external_data_model("../../etc/hostname"),
        "symbolic": _symbolic_size_model(),
    }
    body = bodies.get(body, body) if isinstance(body, str) else body
    answer_status, answer = _request(agent, method, path, body, _auth(agent) if headers == "auth" else headers)
    assert answer_status == status
    assert isinstance(answer["error"], str) and answer["error"] and "Traceback" not in answer["error"]
    assert agent.process.poll() is None
    assert _request(agent, "GET", "/v1/health") == (200, {"ok": True, "api": "v1"})


def test_oversized_or_unmeasured_bodies_are_refused_before_reading(agent) -> None:
    address = urllib.parse.urlsplit(agent.url)
    for headers, status in (
        ({"Content-Length": str(10**12)}, 413),  # declared far over the limit: refused unread
        ({"Transfer-Encoding": "chunked"}, 411),  # no length to check against the limit
    ):
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
        connection.putrequest("POST", "/v1/measure")
        for key, value in (_auth(agent) | headers).items():
            connection.putheader(key, value)
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == status, json.loads(response.read())
        connection.close()
    status, answer = _request(agent, "POST", "/v1/measure?runs=10", _onnx(), _auth(agent))
    assert status == 200 and answer["stats"]["runs"] == 10 and answer["stats"]["median_ms"] > 0


def test_remote_target_refuses_clearly_before_the_search(agent) -> None:
    with pytest.raises(BadInput, match="no token"):
        RemoteTarget(agent.url, None)
    with pytest.raises(BadInput, match="refused the token"):
        RemoteTarget(agent.url, "x" * 32)
    with pytest.raises(RuntimeFailure, match="no agent answers"):  # a runtime failure: exit 1
        RemoteTarget("http://127.0.0.1:9", "x" * 32)  # the discard port: nothing listens


def test_search_against_the_agent_end_to_end_then_report_names_the_device(agent, tmp_path, runner) -> None:
    from mbsearch.cli.app import app

    config = RunConfig(
        target=agent.url, target_token=agent.token, runs_dir=tmp_path, trials=3, sampler="random", **TINY_BUDGET
    )
    assert config.study_name.startswith("v3-127.0.0.1-")  # the URL never becomes a path
    assert agent.token not in repr(config)
    result = run_search(config)
    trials = result.study.get_trials(states=(COMPLETE,))
    assert len(trials) == 3
    device = result.study.user_attrs["latency_device"]
    assert device["cores"] == 1 and device["threads"] == 2 and device["target"] == agent.url
    for trial in trials:
        assert trial.user_attrs["latency_ms"] > 0 and trial.user_attrs["val_accuracy"] > 0
        assert "latency_wait" in trial.user_attrs["timings"]  # timed on the agent while this host trained
    assert agent.token not in json.dumps(result.study.user_attrs)
    outcome = runner.invoke(
        app,
        ["report", config.study_name, "--runs-dir", str(tmp_path), "--no-baselines"],
    )
    assert outcome.exit_code == 0, outcome.output
    page = (tmp_path / config.study_name / "report.html").read_text()
    assert f"measured on {agent.url}, device {device['fingerprint']}" in page and "1 core(s)" in page


class _KillAfter:
    """A reporter that kills the agent once `count` trials are complete: the agent dies mid-search."""

    def __init__(self, agent, count: int) -> None:
        self.agent, self.count, self.done = agent, count, 0

    def start(self, study, search, complete) -> None:
        pass

    def trial_done(self, study, trial) -> None:
        self.done += trial.state == COMPLETE
        if self.done == self.count:
            self.agent.stop()

    def finish(self) -> None:
        pass


@pytest.mark.slow(seconds=40)
def test_killed_agent_fails_trials_with_the_reason_and_the_same_command_resumes(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(remote, "BACKOFF_SECONDS", (0.2, 0.2))
    first = start_local_agent(threads=1, cpus=ONE_CORE)
    port = int(first.url.rsplit(":", 1)[1])
    config = RunConfig(
        target=first.url,
        target_token=first.token,
        runs_dir=tmp_path,
        study="lost",
        sampler="random",
        trials=8,
        **TINY_BUDGET,
    )
    try:
        with pytest.raises(RuntimeFailure, match="in a row failed.*unreachable after 3 tries"):
            run_search(config, _KillAfter(first, 2))
    finally:
        first.stop()
    study = optuna.load_study(study_name="lost", storage=f"sqlite:///{tmp_path / 'lost' / 'study.db'}")
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert len(study.get_trials(states=(COMPLETE,))) == 2 and len(failed) == 5
    for trial in failed:
        assert "unreachable" in trial.user_attrs["fail_reason"]
        assert "latency_ms" not in trial.user_attrs  # no latency is ever invented
    again = start_local_agent(threads=1, cpus=ONE_CORE, port=port, token=first.token)  # the same device, back
    try:
        result = run_search(config)
    finally:
        again.stop()
    assert len(result.study.get_trials(states=(COMPLETE,))) == 8
    assert len(result.study.get_trials(states=(optuna.trial.TrialState.FAIL,))) == 5


def test_another_device_behind_the_same_url_is_refused_for_the_same_study(tmp_path) -> None:
    first = start_local_agent(threads=1, cpus=ONE_CORE)
    port = int(first.url.rsplit(":", 1)[1])
    settings = dict(target=first.url, target_token=first.token, runs_dir=tmp_path, study="one-device")
    try:
        run_search(RunConfig(trials=1, sampler="random", **settings, **TINY_BUDGET))
    finally:
        first.stop()
    other = start_local_agent(threads=2, cpus=ONE_CORE, port=port, token=first.token)  # same URL, another device
    try:
        with pytest.raises(BadInput, match="was timed on device .* use that device or a new --study"):
            run_search(RunConfig(trials=2, sampler="random", **settings, **TINY_BUDGET))
    finally:
        other.stop()


def test_agent_times_one_model_at_a_time_under_the_host_timing_lock(agent) -> None:
    """Requests of several workers queue: none is timed while another timing holds the lock."""
    import threading

    from mbsearch.device import hostlock

    answers: list = []
    model = _onnx()
    with hostlock.timing():  # the lock the agent takes for each timing (same lock folder)
        workers = [
            threading.Thread(
                target=lambda: answers.append(_request(agent, "POST", "/v1/measure?runs=10", model, _auth(agent)))
            )
            for _ in range(2)
        ]
        for worker in workers:
            worker.start()
        workers[0].join(3.0)
        assert not answers and all(worker.is_alive() for worker in workers)  # both wait, neither timed
        assert _request(agent, "GET", "/v1/health")[0] == 200  # a waiting request never blocks the others
    for worker in workers:
        worker.join(60)
    assert [status for status, _ in answers] == [200, 200]


def test_sessions_pool_the_runs_of_several_fresh_sessions(agent) -> None:
    status, answer = _request(agent, "POST", "/v1/measure?runs=10&sessions=3&attempts=1", _onnx(), _auth(agent))
    assert status == 200 and answer["stats"]["runs"] == 30 and answer["stats"]["attempts"] == 1
    assert _request(agent, "POST", "/v1/measure?sessions=11", _onnx(), _auth(agent))[0] == 400


def test_agent_times_the_int8_graph_of_measure_precision_int8(agent) -> None:
    """An int8 (QDQ) graph is standard ONNX: the agent, which has no torch, times it as the local CPU does,
    and it is not the float graph's latency."""
    from mbsearch.latency.profiler import latency_of

    target = RemoteTarget(agent.url, agent.token)
    arch = reference_arch("mobilenet_v3_small", 28, 1, 10)
    int8, fp32 = latency_of(arch, target, precision="int8"), latency_of(arch, target)
    assert int8.target == agent.url and int8.median_ms > 0 and int8.median_ms != fp32.median_ms


def test_an_agent_kept_for_one_precision_refuses_the_other(no_torch, lock_dir, runner, tmp_path) -> None:
    """`agent --precision fp32` times float graphs only: an int8 graph sent to it is refused with the reason,
    and an int8 search or measurement against it is refused with one line before anything starts."""
    from mbsearch.cli.app import app
    from mbsearch.nn.quantize import noise_calibration, quantize_int8

    env = os.environ | {"PYTHONPATH": f"{no_torch}:{Path(__file__).parents[2]}", "MBSEARCH_LOCK_DIR": str(lock_dir)}
    fp32_only = start_local_agent(threads=1, cpus=ONE_CORE, env=env, precision="fp32")
    try:
        target = RemoteTarget(fp32_only.url, fp32_only.token)
        assert target.precision == "fp32" and "precision" not in target.device()  # not part of the fingerprint
        graph = _onnx()
        status, body = _request(fp32_only, "POST", "/v1/measure?runs=5", graph, _auth(fp32_only))
        assert status == 200 and body["stats"]["median_ms"] > 0
        quantized = quantize_int8(graph, noise_calibration((1, 1, 28, 28)))
        status, body = _request(fp32_only, "POST", "/v1/measure?runs=5", quantized, _auth(fp32_only))
        assert status == 422 and "times fp32 graphs only" in body["error"] and "int8 graph" in body["error"]
        runs = tmp_path / "runs"
        common = ["--target", fp32_only.url, "--target-token", fp32_only.token, "--precision", "int8"]
        for command in (["run", *common, "--runs-dir", str(runs)], ["measure", "mobilenet_v3_small", *common]):
            result = runner.invoke(app, command)
            assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
            assert "times fp32 graphs only (the agent's --precision)" in result.output
        assert not runs.exists() or not any(runs.iterdir())
    finally:
        fp32_only.stop()


def test_a_declared_body_never_sent_is_answered_within_20_s(agent) -> None:
    """Issue 35: `Content-Length:  12` (a leading space is valid whitespace, RFC 9110: a length of 12) with no
    body was answered only after the 60 s read timeout; other clients of a stalled one wait that long too."""
    import socket

    address = urllib.parse.urlsplit(agent.url)
    token = _auth(agent)["Authorization"]
    started = time.monotonic()
    with socket.create_connection((address.hostname, address.port), timeout=40) as connection:
        connection.sendall(
            f"POST /v1/measure HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\nContent-Length:  12\r\n\r\n".encode()
        )
        answer = connection.recv(200)
    assert answer.startswith(b"HTTP/1.0 408") or answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < 20
    assert _request(agent, "GET", "/v1/health") == (200, {"ok": True, "api": "v1"})
