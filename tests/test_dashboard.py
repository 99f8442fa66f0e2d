from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_dashboard_serves_the_study_with_metric_names_and_arch_artifacts(tiny_study) -> None:
    runs, name, result = tiny_study
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mbsearch", "dashboard", name, "--runs-dir", str(runs), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        studies = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and studies is None:
            try:
                studies = _get(f"http://127.0.0.1:{port}/api/studies")
            except OSError:
                assert process.poll() is None, process.communicate()[1]
                time.sleep(0.5)
        assert studies is not None, "the dashboard did not answer within 60 s"
        (summary,) = [s for s in studies["study_summaries"] if s["study_name"] == name]
        detail = _get(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}")
        assert detail["objective_names"] == ["val_accuracy", "latency_ms"]  # from study.set_metric_names
        complete = [t for t in detail["trials"] if t["state"] == "Complete"]
        assert len(complete) == len([t for t in result.study.trials if t.state.name == "COMPLETE"])
        trial = complete[0]
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        assert "mbsearch.arch/1" in attrs["arch"]
        artifacts = trial["artifacts"]
        assert artifacts and artifacts[0]["filename"].endswith(".arch.json")
        # Bound to loopback only by default.
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) == 0
    finally:
        process.terminate()
        process.wait(timeout=30)
