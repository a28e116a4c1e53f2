"""Start-up: how long the commands take from the shell, against ``import torch`` alone.

    python benchmarks/startup.py [--rounds 7] [--markdown]

Times, as medians of ``--rounds`` fresh processes run alternately: ``poolcli --help``,
``poolcli inspect configs/gabor_gem.yaml``, a one-image ``poolcli run`` of gabor_gem.yaml (after
``poolcli warmup``, so the kernel cache is warm; a new output folder each time), and
``python -c "import torch"``. The ``poolcli`` script is the one installed beside this Python
(a version manager's shim in front of it, such as pyenv's, adds its own delay). Aims (issue 5):
--help within 0.4 s, inspect within 0.6 s, the one-image run within 1.5 s.

The commands run in this environment less ``PYTHONDONTWRITEBYTECODE``: some sandboxes set it,
no installation does, and with it every module edited since the last install is compiled
again in every process (a round of each command runs untimed first, so bytecode is written).
Run it with the Python of a regular install, as README's ``pip install .`` makes, to time what
users get: an editable install (``pip install -e``) puts its import hook in every process::

    python -m venv /tmp/v && /tmp/v/bin/pip install . torch==2.13.0
    /tmp/v/bin/python benchmarks/startup.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, machine, table
from end_to_end import poolcli_command

CONFIG = REPO / "configs" / "gabor_gem.yaml"
IMAGE = REPO / "sample_images" / "chelsea.png"


ENV = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


def wall(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=ENV)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}")
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    poolcli = poolcli_command()
    work = Path(tempfile.mkdtemp(prefix="poolcli-startup-"))
    (work / "one").mkdir()
    shutil.copy(IMAGE, work / "one")
    wall([*poolcli, "warmup", str(CONFIG), "--no-progress"])
    runs = iter(range(10**6))
    commands = {
        "poolcli --help": lambda: [*poolcli, "--help"],
        "poolcli inspect configs/gabor_gem.yaml": lambda: [*poolcli, "inspect", str(CONFIG)],
        "poolcli run configs/gabor_gem.yaml (1 image, warm cache)": lambda: [
            *poolcli, "run", str(CONFIG), str(work / "one"), "-o", str(work / f"out{next(runs)}"), "--no-progress"],
    }
    try:
        import torch  # noqa: F401  (only to know it is there)

        commands['python -c "import torch"'] = lambda: [sys.executable, "-c", "import torch"]
    except ImportError:
        pass
    for command in commands.values():  # untimed: bytecode written, files in the page cache
        wall(command())
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.rounds):
        for name, command in commands.items():
            times[name].append(wall(command()))
    shutil.rmtree(work, ignore_errors=True)
    print(f"# {machine()}; {' '.join(poolcli)}", file=sys.stderr)
    rows = [[name, f"{statistics.median(t):.2f}", f"{min(t):.2f}", f"{max(t):.2f}"] for name, t in times.items()]
    print(table(["command", "median s", "min s", "max s"], rows, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
