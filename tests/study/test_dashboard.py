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


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on `port`, from /proc/net/tcp and tcp6 (state 0A)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, local_port = local.split(":")
                if state != "0A" or int(local_port, 16) != port:
                    continue
                if len(address) == 8:  # IPv4, little-endian hex
                    found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]))
                else:  # IPv6: four little-endian 32-bit words
                    words = bytes.fromhex(address)
                    packed = b"".join(words[i : i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, packed))
    return found


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
        assert "mbsearch.spec.arch/" in attrs["arch"]
        artifacts = trial["artifacts"]
        assert artifacts and artifacts[0]["filename"].endswith(".arch.json")
        # Bound to loopback only by default: the listening socket's own address, read from the kernel.
        assert _listening_addresses(port) == {"127.0.0.1"}
    finally:
        process.terminate()
        process.wait(timeout=30)
