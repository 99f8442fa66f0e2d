"""Bad inputs of the second outside round (issue 16), by root cause. Each case failed before its fix:
data loss, a remote target that trusted whatever answered, an agent that wedged, lookup tables checked
too late, verify's claims and targets, report --adapted, and limits checked after a study was created."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from contextlib import contextmanager

import pytest
from safetensors.torch import save_file

from mbsearch.architecture.arch import Arch
from mbsearch.architecture.zoo import reference_arch
from mbsearch.cli.app import app
from mbsearch.nn.model import build_model
from tests.cli.test_red_team import _copy_study


def one_line(result, code: int, expected: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.output and "internal error" not in result.output
    return lines[0]


# --- data loss: one output rule (files.check_outputs / check_output_folder) ---------------------------


def test_profile_never_overwrites_a_study_database(runner, tiny_study, tmp_path) -> None:
    runs, name = _copy_study(tiny_study, tmp_path)
    database = runs / name / "study.db"
    before = database.read_bytes()
    result = runner.invoke(app, ["profile", "--calibrate", "0", "-o", str(database)])
    one_line(result, 2, "SQLite database")
    assert database.read_bytes() == before


def test_profile_never_overwrites_the_space_it_reads(runner, tmp_path) -> None:
    from mbsearch.architecture.space import SPACES_DIR

    space = tmp_path / "mine.yaml"
    space.write_text((SPACES_DIR / "v1.yaml").read_text())
    before = space.read_bytes()
    one_line(runner.invoke(app, ["profile", "--space", str(space), "-o", str(space)]), 2, "the --space file")
    assert space.read_bytes() == before


def test_export_never_overwrites_a_file_of_another_kind(runner, tiny_study, tmp_path) -> None:
    runs, name = _copy_study(tiny_study, tmp_path)
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": "keep me"}')
    one_line(runner.invoke(app, ["export", name, "--runs-dir", str(runs), "-o", str(notes)]), 2, "not an earlier")
    assert notes.read_text() == '{"mine": "keep me"}'
    again = tmp_path / "best.json"  # an earlier export may be replaced
    assert runner.invoke(app, ["export", name, "--runs-dir", str(runs), "-o", str(again)]).exit_code == 0
    assert runner.invoke(app, ["export", name, "--runs-dir", str(runs), "-o", str(again)]).exit_code == 0


def _arch_file(tmp_path) -> tuple:
    arch = reference_arch("mobilenet_v3_small_050", 28, 1, 10)
    path = tmp_path / "small.json"
    path.write_text(arch.to_json())
    return arch, path


def test_adapt_into_trains_folder_never_overwrites_its_weights(runner, tmp_path) -> None:
    arch, path = _arch_file(tmp_path)
    trained = tmp_path / "small-trained"
    trained.mkdir()
    weights = trained / "model.safetensors"
    save_file({k: v.contiguous() for k, v in build_model(arch).state_dict().items()}, weights)
    (trained / "model.onnx").write_bytes(b"\x08\x07onnx")
    before = weights.read_bytes()
    command = ["adapt", str(path), "--weights", str(weights), "--latency-reduction", "0.1", "--out", str(trained)]
    one_line(runner.invoke(app, command), 2, "the --weights file")
    assert weights.read_bytes() == before and (trained / "model.onnx").read_bytes() == b"\x08\x07onnx"
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.onnx").write_bytes(b"\x08\x07onnx")  # another command's output, not ours
    command[-1] = str(other)
    one_line(runner.invoke(app, command), 2, "from another command")
    assert (other / "model.onnx").read_bytes() == b"\x08\x07onnx"


@pytest.mark.parametrize("damage", ["missing weights", "malformed state"])
def test_adapt_refuses_a_damaged_saved_state_instead_of_discarding_it(runner, tmp_path, damage: str) -> None:
    from mbsearch.adapt.netadapt import STATE, WEIGHTS

    _, path = _arch_file(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / STATE).write_text('{"source": {}, "goal_ms": 1.0, "arch": {}, "trajectory": []}')
    if damage == "malformed state":
        (out / STATE).write_text('{"source": ')
        (out / WEIGHTS).write_bytes(b"not safetensors")
    command = ["adapt", str(path), "--latency-reduction", "0.1", "--out", str(out), "--train-size", "64"]
    one_line(runner.invoke(app, command), 2, "remove both")
    assert (out / STATE).exists()


def test_adapt_of_an_arch_at_its_width_floor_is_refused_up_front(runner, tmp_path) -> None:
    arch = Arch.from_dict(
        {
            "input": {"channels": 1, "size": 28},
            "num_classes": 10,
            "stem": {"out": 8, "kernel": 3, "stride": 1, "act": "relu"},
            "blocks": [{"type": "ds", "kernel": 3, "stride": 2, "expand": 1, "out": 8, "se": 0, "act": "relu"}],
            "head": {"conv": 16, "hidden": 0, "act": "relu", "dropout": 0},
        }
    )
    path = tmp_path / "floor.json"
    path.write_text(arch.to_json())
    out = tmp_path / "floor-adapted"
    one_line(runner.invoke(app, ["adapt", str(path), "--latency-reduction", "0.1"]), 2, "nothing to trim")
    assert not out.exists()


# --- the remote target trusts nothing it is answered ------------------------------------------------------


TOKEN = "t" * 24
GOOD_DEVICE = {
    "cpu": "x86",
    "machine": "x86_64",
    "system": "Linux",
    "cores": 2,
    "runtime": "onnxruntime 1.0",
    "providers": ["CPUExecutionProvider"],
    "threads": 1,
    "fingerprint": "0123456789abcdef",
}
GOOD_STATS = {
    "median_ms": 1.0,
    "iqr_ms": 0.1,
    "mean_ms": 1.0,
    "min_ms": 0.9,
    "runs": 50,
    "attempts": 1,
    "target": "agent",
    "runtime": "onnxruntime",
    "threads": 1,
}


@contextmanager
def fake_server(answer):
    """An HTTP server on 127.0.0.1 whose every request is answered by answer(handler) -> (status, headers,
    body); it records the requests it saw."""
    seen: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            seen.append({"method": self.command, "path": self.path, "auth": self.headers.get("Authorization")})
            status, headers, body = answer(self)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _any

        def log_message(self, *args) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address) -> None:
            # A client that gave up (a timeout test) leaves this server writing to a closed socket; its
            # traceback on stderr would be blamed on whichever test reads stderr next.
            pass

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def agent_like(device=GOOD_DEVICE, measure=None, delay: float = 0.0):
    def answer(handler):
        if handler.path.startswith("/v1/device"):
            return 200, {"Content-Type": "application/json"}, json.dumps(device).encode()
        time.sleep(delay)
        return 200, {"Content-Type": "application/json"}, json.dumps(measure).encode()

    return answer


def _measure(runner, url: str, token: str = TOKEN):
    return runner.invoke(
        app, ["measure", "mobilenet_v3_small_050", "--target", url, "--target-token", token, "--runs", "5"]
    )


def test_a_redirect_is_refused_and_the_token_never_leaves(runner) -> None:
    with fake_server(lambda h: (200, {}, b'{"stats": {"median_ms": 0.001}}')) as (elsewhere, other_seen):  # noqa: SIM117
        with fake_server(lambda h: (302, {"Location": elsewhere + "/v1/device"}, b"")) as (url, _):
            one_line(_measure(runner, url), 2, "redirect")
    assert other_seen == []


@pytest.mark.parametrize(
    ("device", "measure", "code", "expected"),
    [
        ([], None, 2, "/v1/device: invalid answer"),
        (GOOD_DEVICE | {"cpu": "\x1b[2J\x1b[H"}, None, 2, "invalid answer at cpu"),  # clears the screen
        (GOOD_DEVICE, {"stats": GOOD_STATS | {"median_ms": -5.0}, "device": GOOD_DEVICE}, 1, "median_ms"),
        (GOOD_DEVICE, {"stats": GOOD_STATS | {"median_ms": float("nan")}, "device": GOOD_DEVICE}, 1, "median_ms"),
        (GOOD_DEVICE, {"device": GOOD_DEVICE}, 1, "invalid answer at stats"),
        (GOOD_DEVICE, {"stats": GOOD_STATS | {"bogus": 1}, "device": GOOD_DEVICE}, 1, "bogus"),
    ],
)
def test_agent_answers_are_validated(runner, device, measure, code: int, expected: str) -> None:
    with fake_server(agent_like(device, measure)) as (url, _):
        line = one_line(_measure(runner, url), code, expected)
    assert "\x1b" not in line


def test_a_silent_agent_fails_the_measurement_within_its_own_limit(runner, monkeypatch) -> None:
    from mbsearch.latency import remote

    monkeypatch.setattr(remote, "ANSWER_MARGIN_SECONDS", 1.0)
    with fake_server(agent_like(GOOD_DEVICE | {"max_seconds": 1.0}, {}, delay=30)) as (url, _):
        start = time.monotonic()
        line = one_line(_measure(runner, url), 1, "gave no answer within 4 s")
    assert time.monotonic() - start < 15 and "--max-seconds 1" in line


def test_a_password_in_the_target_url_is_refused_and_never_printed(runner, tmp_path) -> None:
    result = _measure(runner, "http://user:S3cretPW@127.0.0.1:9/")
    one_line(result, 2, "user or password")
    assert "S3cretPW" not in result.output
    result = runner.invoke(app, ["run", "--target", "http://user:S3cretPW@127.0.0.1:9", "--runs-dir", str(tmp_path)])
    one_line(result, 2, "user or password")  # before any study name is made from the URL
    assert "S3cretPW" not in result.output and not any(tmp_path.iterdir())


def test_a_token_outside_printable_ascii_is_one_line(runner) -> None:
    one_line(_measure(runner, "http://127.0.0.1:9", "tökentökentökentöken"), 2, "printable ASCII")


def test_a_server_that_is_not_an_agent_and_an_absent_one_are_told_apart(runner) -> None:
    with fake_server(lambda h: (200, {"Content-Type": "text/html"}, b"<html>hello</html>")) as (url, _):
        one_line(_measure(runner, url), 2, "not with JSON")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    one_line(_measure(runner, f"http://127.0.0.1:{port}"), 1, "no agent answers")  # a runtime failure: exit 1


def test_device_fields_are_escaped_in_the_report() -> None:
    from mbsearch.report.page import _device_text

    text = _device_text(GOOD_DEVICE | {"cpu": "<script>alert(1)</script>", "cores": "<img src=x>", "target": "t"})
    assert "<script>" not in text and "<img" not in text


# --- the agent: bounded first run, client faults are 4xx, tokens stay secret, reads time out ---------------


@contextmanager
def agent_server(max_seconds: float = 2.0, read_timeout: float = 60.0):
    from wsgiref.simple_server import make_server

    from mbsearch.device.agent import AgentConfig, _RequestLog, _ThreadingServer, make_app
    from mbsearch.device.timing import device_info

    config = AgentConfig(TOKEN, max_seconds=max_seconds, read_timeout=read_timeout)
    handler = type("Quiet", (_RequestLog,), {"timeout": read_timeout, "log_message": lambda *a: None})
    server = make_server(
        "127.0.0.1", 0, make_app(config, device_info(1, ["CPUExecutionProvider"])), _ThreadingServer, handler
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _post(port: int, body: bytes, headers: dict | None = None, timeout: float = 60) -> tuple[int, dict]:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    connection.putrequest("POST", "/v1/measure?runs=5&warmup=1&attempts=1")
    for key, value in (
        {"Authorization": f"Bearer {TOKEN}", "Content-Length": str(len(body))} | (headers or {})
    ).items():
        connection.putheader(key, value)
    connection.endheaders()
    connection.send(body)
    response = connection.getresponse()
    status, answer = response.status, json.loads(response.read() or b"{}")
    connection.close()
    return status, answer


def _endless_model() -> bytes:
    """A valid standard-operator model whose one run never ends: a Loop of 10^12 iterations."""
    from onnx import TensorProto, helper

    shape = [1, 1, 8, 8]
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, shape),
        ],
        [
            helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, shape),
        ],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "cond", "x"], ["y"], body=body)],
        "endless",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [
            helper.make_tensor("trips", TensorProto.INT64, [], [10**12]),
            helper.make_tensor("cond", TensorProto.BOOL, [], [True]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _fails_at_run_time_model() -> bytes:
    """Loads, then fails when run: a Reshape to a shape computed from the input's values (3x5 of 64)."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        helper.make_node("Cast", ["m"], ["mi"], to=TensorProto.INT64),
        helper.make_node("Add", ["mi", "base"], ["shape"]),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fails",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("base", TensorProto.INT64, [2], [3, 5])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _small_model() -> bytes:
    from mbsearch.nn.onnx_export import to_onnx

    arch = reference_arch("mobilenet_v3_small_050", 28, 1, 10)
    return to_onnx(build_model(arch), arch)


def test_a_model_that_never_ends_is_refused_and_the_agent_keeps_serving() -> None:
    with agent_server(max_seconds=2) as port:
        start = time.monotonic()
        status, answer = _post(port, _endless_model())
        assert status == 422 and "did not finish" in answer["error"], answer
        assert time.monotonic() - start < 20
        status, answer = _post(port, _small_model())  # the timing lock was released
        assert status == 200 and answer["stats"]["median_ms"] > 0, answer


def test_client_faults_are_4xx_not_500() -> None:
    with agent_server() as port:
        for bad in ("abc", "1e3"):
            status, answer = _post(port, b"", {"Content-Length": bad})
            assert status == 400 and "Content-Length" in answer["error"], answer
        status, answer = _post(port, _fails_at_run_time_model())
        assert status == 422 and "fails when run" in answer["error"], answer


def test_a_half_sent_body_times_out_instead_of_holding_a_thread() -> None:
    with agent_server(read_timeout=1) as port, socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(
            f"POST /v1/measure HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Length: 1000\r\n\r\n0123456789".encode()
        )
        start = time.monotonic()
        sock.recv(100)  # the 408, or the connection closed: never a wait for ever
        assert time.monotonic() - start < 10


@pytest.mark.parametrize("token", [" " * 16, "\tpadded-token-here\t", "tökentökentökentöken"])
def test_a_token_that_can_never_match_is_refused(runner, token: str) -> None:
    one_line(runner.invoke(app, ["agent", "--port", "0", "--token", token]), 2, "printable ASCII")


def test_a_token_the_user_chose_is_never_printed() -> None:
    import os
    import subprocess
    import sys

    chosen = "my-own-secret-token-1234"
    process = subprocess.Popen(
        [sys.executable, "-m", "mbsearch", "agent", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=os.environ | {"MBSEARCH_AGENT_TOKEN": chosen},
    )
    try:
        lines = [process.stdout.readline() for _ in range(3)]
    finally:
        process.kill()
        process.wait()
    assert lines[2].startswith("token ") and not any(chosen in line for line in lines), lines


# --- verify: dead claims, targets first, Ctrl-C --------------------------------------------------------------

VERIFY = ["--top", "1", "--epochs", "0.25", "--train-size", "256", "--threads", "1", "--no-baselines"]


def _claim_front(runs, name, worker: str) -> list[int]:
    import socket as sockets

    from mbsearch.results.finished import open_finished
    from mbsearch.results.pareto import VERIFY_TAG
    from mbsearch.results.verify import choose
    from mbsearch.study import claims

    finished = open_finished(name, runs, None)
    chosen = choose(finished.frame, 1)
    with claims._engine(finished.study).begin() as connection:
        for number in chosen:
            row = {"study": name, "tag": VERIFY_TAG, "number": number, "heartbeat": time.time()}
            connection.execute(claims.CLAIMS.insert().values(worker=f"{sockets.gethostname()}:{worker}", **row))
    return chosen


def test_verify_takes_over_a_claim_of_a_dead_process_at_once(runner, tiny_study, tmp_path) -> None:
    import subprocess

    runs, name = _copy_study(tiny_study, tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    chosen = _claim_front(runs, name, str(dead.pid))
    result = runner.invoke(app, ["verify", name, "--runs-dir", str(runs), *VERIFY])
    assert result.exit_code == 0, result.output
    assert "not verified yet" not in result.output and f"trial {chosen[0]}: verified accuracy" in result.output


def test_verify_says_who_holds_a_live_claim_and_until_when(runner, tiny_study, tmp_path) -> None:
    runs, name = _copy_study(tiny_study, tmp_path)
    chosen = _claim_front(runs, name, "1")  # pid 1 lives as long as the machine
    result = runner.invoke(app, ["verify", name, "--runs-dir", str(runs), *VERIFY])
    assert result.exit_code == 0, result.output
    assert f"trial {chosen[0]}: held by " in result.output and " until " in result.output


def test_verify_opens_its_target_before_any_training(runner, tiny_study, tmp_path) -> None:
    runs, name = _copy_study(tiny_study, tmp_path)
    result = runner.invoke(app, ["verify", name, "--runs-dir", str(runs), *VERIFY, "--target", "tpu"])
    one_line(result, 2, "unknown target")
    assert "verifying" not in result.output  # refused before the training started


def test_verify_interrupted_says_how_to_resume(tiny_study, tmp_path) -> None:
    import signal
    import subprocess
    import sys

    runs, name = _copy_study(tiny_study, tmp_path)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mbsearch",
            "verify",
            name,
            "--runs-dir",
            str(runs),
            "--top",
            "2",
            "--epochs",
            "1",
            "--no-baselines",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    process.stdout.readline()  # "verifying up to ...": training starts now
    time.sleep(3)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "rerun the same command to resume" in stderr and "Traceback" not in stderr


# --- report --adapted: the file is validated as a model -----------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda a: a["metrics"].pop("start_latency_ms"), "metrics.start_latency_ms: missing required key"),
        (lambda a: a["provenance"]["source_provenance"].update(trial=[0]), "source_provenance.trial"),
        (lambda a: a["metrics"].update(latency_ms=-1.0), "metrics.latency_ms"),
    ],
)
def test_report_validates_an_adapted_file_before_using_it(runner, tiny_study, tmp_path, change, expected) -> None:
    runs, name = _copy_study(tiny_study, tmp_path)
    arch = reference_arch("mobilenet_v3_small_050", 28, 1, 10)
    data = arch.to_dict() | {
        "provenance": {
            "adapted_from": "knee.json",
            "latency_target_ms": 0.5,
            "source_provenance": {"study": name, "trial": 0},
        },
        "metrics": {
            "latency_ms": 0.4,
            "val_accuracy": 0.8,
            "start_latency_ms": 0.6,
            "start_val_accuracy": 0.81,
            "params": 1000,
        },
    }
    change(data)
    path = tmp_path / "adapted.json"
    path.write_text(json.dumps(data))
    report = runs / name / "report.html"
    before = report.stat().st_mtime if report.exists() else None
    result = runner.invoke(app, ["report", name, "--runs-dir", str(runs), "--no-baselines", "--adapted", str(path)])
    one_line(result, 2, expected)
    assert (report.stat().st_mtime if report.exists() else None) == before


# --- still open from round one: limits checked before a study exists, clear causes instead of internal errors


def test_a_space_too_wide_for_the_arch_limits_is_refused_before_the_study(runner, tmp_path) -> None:
    from mbsearch.architecture.space import SPACES_DIR

    text = (SPACES_DIR / "v1.yaml").read_text().replace("width: [0.5, 0.75, 1.0]", "width: [4.0]")
    text = text.replace("{out: 512, stride: 2}", "{out: 8000, stride: 2}")
    space = tmp_path / "wide.yaml"
    space.write_text(text)
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["run", "--space", str(space), "--runs-dir", str(runs), "--trials", "1"])
    one_line(result, 2, "narrow the space")
    assert not runs.exists() or not any(runs.iterdir())


def test_images_too_small_or_large_to_lay_out_are_refused() -> None:
    from mbsearch.architecture.sample import check_space_fits
    from mbsearch.architecture.space import load_space
    from mbsearch.errors import BadInput

    for size in (4, 1100):
        with pytest.raises(BadInput, match=f"{size}x{size} images"):
            check_space_fits(load_space("v3"), size, 1, 10)


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["show", "mobilenet_v3_large", "--classes", "1000000"], 2, "num_classes"),
        (["run", "--storage", "mysql://u@127.0.0.1/db", "--trials", "1"], 2, "database driver"),
        (["run", "--storage", "sqlite:////nonexistent-dir/x/study.db", "--trials", "1"], 2, "does not exist"),
    ],
)
def test_clear_causes_are_named_not_internal_errors(runner, tmp_path, args, code: int, expected: str) -> None:
    one_line(runner.invoke(app, [*args, "--runs-dir", str(tmp_path)] if args[0] == "run" else args), code, expected)


def test_forged_stored_settings_are_refused(runner, tiny_study, tmp_path) -> None:
    from mbsearch.results.finished import open_finished

    runs, name = _copy_study(tiny_study, tmp_path)
    study = open_finished(name, runs, None).study
    study.set_user_attr("mbsearch_config", study.user_attrs["mbsearch_config"] | {"threads": "many"})
    result = runner.invoke(app, ["export", name, "--runs-dir", str(runs), "-o", str(tmp_path / "x.json")])
    one_line(result, 2, "stored setting threads")


def test_a_full_stdout_is_one_line() -> None:
    import subprocess
    import sys

    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "mbsearch", "sample", "--space", "v3"], stdout=full, stderr=subprocess.PIPE
        )
    lines = done.stderr.decode().strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and "No space left" in lines[0], done.stderr


def test_a_decompression_bomb_in_a_folder_is_named(runner, tmp_path) -> None:
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.new("L", (32, 32)).save(tmp_path / "data" / name / "ok.png")
    Image.new("1", (20000, 20000)).save(tmp_path / "data" / "b" / "bomb.png")  # 400M pixels, a few KB on disk
    args = ["run", "--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--runs-dir", str(tmp_path / "r")]
    one_line(runner.invoke(app, args), 2, "bomb.png: declares over")


def test_an_idle_connection_that_times_out_logs_one_line_not_a_traceback(capfd) -> None:
    """Issue 30: a client that connects and sends nothing hit wsgiref's read outside any handler, and the
    agent's log got a traceback; now one line, and the agent serves on."""
    import http.client

    with agent_server(read_timeout=1) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
            assert sock.recv(100) == b""  # closed by the agent after its read timeout, nothing sent
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        connection.request("GET", "/v1/health")
        assert connection.getresponse().status == 200
        connection.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "TimeoutError" not in err, err
