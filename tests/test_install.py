"""The README's two set-up commands, in either order, in one fresh virtualenv, on a fresh copy
of this checkout: a real ``pip install``, a real run, a real ``pip uninstall``.

`pip install . && poolcli run ...` used to leave Numba's kernel cache inside
``site-packages/poolcli/``; the next `pip install -e ".[test]"` uninstalled the package but not
those files, and the folder left behind shadowed the editable install as a namespace package
(`poolcli --help`: cannot import name '__version__'). Here each order must leave a working
``poolcli`` that imports from where it was installed, the compiled kernels must land in the
cache folder and nowhere in site-packages, and `pip uninstall -y poolcli` must leave nothing
of poolcli behind.

It takes a minute or two (three installs, one compile of gabor_gem's kernels) and needs the
package registry that pip is set up with, as the README's commands do. The build backend is
installed once into the new virtualenv and used with ``--no-build-isolation``, so that each
install does not fetch it again. Marked ``slow``: ``-m "not slow"`` leaves it out, and so does
``POOLCLI_SKIP_INSTALL_TEST=1``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(os.environ.get("POOLCLI_SKIP_INSTALL_TEST")), reason="POOLCLI_SKIP_INSTALL_TEST is set"),
]

RUN = ["poolcli", "run", "configs/gabor_gem.yaml", "sample_images/", "-o", "out/gabor_gem", "--no-progress"]


def fresh_copy(target: Path) -> Path:
    """The files a fresh clone of this checkout has (tracked, and new ones git does not
    ignore): no build folder, egg-info or Numba cache of this checkout comes along."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no way to tell its files from build leftovers")
    for name in filter(None, listed.decode().split("\0")):
        source, copy = ROOT / name, target / name
        if not source.is_symlink() and not source.exists():
            continue  # deleted, not yet committed
        copy.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            copy.symlink_to(os.readlink(source))  # configs -> poolcli/configs stays a link
        else:
            shutil.copy2(source, copy)
    return target


class Virtualenv:
    def __init__(self, folder: Path, cache: Path):
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        self.bin = folder / ("Scripts" if os.name == "nt" else "bin")
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "NUMBA_CACHE_DIR", "POOLCLI_CACHE_DIR")}
        self.env.update(PATH=str(self.bin) + os.pathsep + os.environ.get("PATH", ""), VIRTUAL_ENV=str(folder),
                        POOLCLI_CACHE_DIR=str(cache), PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
        self.elsewhere = folder.parent / "elsewhere"
        self.elsewhere.mkdir(exist_ok=True)
        self.site = Path(self.run("python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())

    def run(self, *command: str, cwd: Path | None = None, check: bool = True) -> str:
        done = subprocess.run(list(command), cwd=cwd, env=self.env, capture_output=True, text=True, timeout=900)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done.stdout + done.stderr

    def pip(self, *args: str, cwd: Path | None = None) -> str:
        return self.run("python", "-m", "pip", *args, cwd=cwd)

    def poolcli_works(self, expected: Path, cwd: Path) -> None:
        """``poolcli --help`` and ``--version`` work, and poolcli imports from ``expected``
        (imported from a folder that holds no poolcli, as a script would)."""
        assert "Usage: poolcli" in self.run("poolcli", "--help", cwd=cwd)
        assert self.run("poolcli", "--version", cwd=cwd).startswith("poolcli ")
        where = self.run("python", "-c", "import poolcli; print(poolcli.__file__)", cwd=self.elsewhere).strip()
        assert Path(where).resolve() == (expected / "__init__.py").resolve(), where

    def poolcli_in_site_packages(self) -> list[str]:
        return sorted(str(p.relative_to(self.site)) for p in self.site.rglob("*") if "poolcli" in p.name.lower())


def test_the_readmes_set_up_commands_in_either_order_then_uninstall(tmp_path):
    clone = fresh_copy(tmp_path / "checkout")
    cache = tmp_path / "kernel-cache"
    env = Virtualenv(tmp_path / "venv", cache)
    env.pip("install", "-q", "setuptools>=77")  # the build backend, once: see the module's docstring
    installed = env.site / "poolcli"

    # Order 1: pip install . && poolcli run ..., then pip install -e ".[test]"
    env.pip("install", "-q", "--no-build-isolation", ".", cwd=clone)
    done = env.run(*RUN, cwd=clone)
    assert "wrote 11 descriptors of length 48 to out/gabor_gem" in done, done
    assert "kernels compiled" in done, done  # the cache was empty: they were compiled, and written...
    assert list(cache.rglob("*.nbi")) and list(cache.rglob("*.nbc"))  # ...into the cache folder
    assert [p for p in installed.rglob("*") if p.suffix in (".nbi", ".nbc")] == []  # not into the package
    env.poolcli_works(installed, clone)
    env.pip("install", "-q", "--no-build-isolation", "-e", ".[test]", cwd=clone)
    env.poolcli_works(clone / "poolcli", clone)
    assert not installed.exists(), sorted(str(p) for p in installed.rglob("*"))  # nothing left to shadow it
    tests = env.run("python", "-m", "pytest", "-p", "no:cacheprovider", "tests/test_cli.py",
                    "-k", "version or help_shows", cwd=clone)  # exits non-zero on any failure
    assert "2 passed" in tests, tests

    # Order 2: from the editable install, pip install . && poolcli run ...
    env.pip("install", "-q", "--no-build-isolation", ".", cwd=clone)
    env.poolcli_works(installed, clone)
    done = env.run(*RUN[:-2], "out/again", "--no-progress", cwd=clone)
    assert "wrote 11 descriptors of length 48 to out/again" in done and "compil" not in done, done  # cached
    assert [p for p in installed.rglob("*") if p.suffix in (".nbi", ".nbc")] == []

    env.pip("uninstall", "-y", "-q", "poolcli")
    assert env.poolcli_in_site_packages() == []
    assert not (env.bin / "poolcli").exists()
    assert "No module named 'poolcli'" in env.run("python", "-c", "import poolcli", cwd=env.elsewhere, check=False)
