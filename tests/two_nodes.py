"""A two-node Ray cluster on loopback running one ``poolcli run --engine ray`` (issue 7).

Run by tests/test_scale_out.py inside a network namespace of its own (``unshare -n``), whose
only interface is loopback, so that every address Ray picks is 127.0.0.1 and nothing it sends
can leave the machine. It starts a head node (``ray start --head``) and a second node
(``ray start --address``), one CPU each, runs the poolcli command line against them, stops
both nodes (SIGTERM to their ``--block`` processes, which stop what they started) and prints a
JSON report on stdout.

    python tests/two_nodes.py CONFIG INPUT OUT TEMP_DIR

TEMP_DIR must be a short path: Ray's Unix sockets live under it (at most 107 bytes in all).
"""

import json
import os
import signal
import subprocess
import sys
import time

PORT = 6379  # a fresh network namespace: every port is free
RAY = [sys.executable, "-m", "ray.scripts.scripts"]


def alive_nodes(address: str) -> int:
    import ray

    ray.init(address=address, logging_level="ERROR")
    try:
        return sum(1 for node in ray.nodes() if node["Alive"])
    finally:
        ray.shutdown()


def give_up(signum, frame):
    raise TimeoutError("two_nodes.py: no result within 240 s")


def main() -> int:
    config, inputs, out, temp_dir = sys.argv[1:5]
    signal.signal(signal.SIGALRM, give_up)  # a stuck start still reaches the finally that stops the nodes
    signal.alarm(240)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # set to 0, Ray refuses a second node
    os.environ.clear()
    os.environ.update(env)
    address = f"127.0.0.1:{PORT}"
    log = open(os.path.join(temp_dir, "ray-start.log"), "wb")
    nodes = []
    report = {}
    try:
        nodes.append(subprocess.Popen(
            [*RAY, "start", "--head", f"--port={PORT}", "--num-cpus=1", "--include-dashboard=false",
             "--disable-usage-stats", f"--temp-dir={temp_dir}", "--block"], stdout=log, stderr=log, env=env))
        deadline = time.monotonic() + 120
        while True:  # the head is up when a driver can connect
            if nodes[0].poll() is not None:
                raise RuntimeError(f"ray start --head ended ({nodes[0].returncode}); see {log.name}")
            try:
                alive_nodes(address)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        nodes.append(subprocess.Popen(
            [*RAY, "start", f"--address={address}", "--num-cpus=1", "--disable-usage-stats", f"--temp-dir={temp_dir}", "--block"],
            stdout=log, stderr=log, env=env))
        while (count := alive_nodes(address)) < 2:
            if nodes[1].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"only {count} Ray node came up")
            time.sleep(1)
        report["nodes"] = count
        done = subprocess.run(
            [sys.executable, "-m", "poolcli", "run", config, inputs, "-o", out, "--engine", "ray", "--address", address,
             "--shard-size", "1", "--no-progress", "--json"], capture_output=True, text=True, env=env, timeout=180)
        report.update(returncode=done.returncode, stdout=done.stdout, stderr=done.stderr)
    finally:
        for node in reversed(nodes):
            node.send_signal(signal.SIGTERM)
        for node in nodes:
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                node.kill()
        log.close()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
