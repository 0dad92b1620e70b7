"""
A PyPy virtualenv with Gourmet installed in development mode, made with
Debian's ``pypy3`` when it is there, so that ``twistd`` can run on PyPy.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import Optional, Sequence, Tuple

#: Seconds one step of making the virtualenv may take.
STEP_TIMEOUT = 900

#: On PyPy 3.9 the newest cryptography has no wheel and cannot be built
#: without the network's Rust crates; tox's pypy environment uses it too.
PYPY39_CONSTRAINTS = Path("constraints", "pypy39.txt")


def _step(command: Sequence[str], log: Path) -> None:
    with log.open("ab") as output:
        output.write(("$ " + " ".join(command) + "\n").encode())
        output.flush()
        subprocess.run(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            timeout=STEP_TIMEOUT,
            check=True,
        )


def _python_version(python: Path) -> Tuple[int, int]:
    out = subprocess.check_output(
        [str(python), "-c", "import sys; print(*sys.version_info[:2])"],
        text=True,
        timeout=60,
    )
    major, minor = out.split()
    return int(major), int(minor)


def _install(pypy: str, venv: Path, repo: Path, log: Path) -> None:
    if not (venv / "bin" / "python").exists():
        _step([pypy, "-m", "venv", str(venv)], log)
    python = venv / "bin" / "python"
    _step([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], log)
    install = [str(python), "-m", "pip", "install", "-q", "-e", str(repo)]
    # compat mode puts the checkout on sys.path, where twistd finds the
    # plugin, as ./dev does for .venv.
    install += ["--config-settings", "editable_mode=compat"]
    if _python_version(python) < (3, 10):
        install += ["-c", str(repo / PYPY39_CONSTRAINTS)]
    _step(install, log)


def ensure(venv: Path, repo: Path) -> Tuple[Optional[Path], str]:
    """
    The PyPy virtualenv's ``twistd``, making or updating the virtualenv
    when ``pyproject.toml`` changed; or None and why not.
    """
    pypy = shutil.which("pypy3")
    if pypy is None:
        return None, "pypy3 is not installed (./dev bench installs Debian's pypy3)"
    twistd = venv / "bin" / "twistd"
    stamp = venv / ".gourmet-installed"
    wanted = hashlib.sha256((repo / "pyproject.toml").read_bytes()).hexdigest()
    if twistd.exists() and _read(stamp) == wanted:
        return twistd, f"PyPy virtualenv {venv} up to date"
    venv.mkdir(parents=True, exist_ok=True)
    # As newer venvs do: git (and so ruff) ignores the whole virtualenv.
    (venv / ".gitignore").write_text("*\n")
    log = venv / "gourmet-install.log"
    log.write_text("")
    try:
        _install(pypy, venv, repo, log)
    except (OSError, subprocess.SubprocessError) as error:
        last = "\n".join(_read(log).splitlines()[-12:])
        return None, f"making the PyPy virtualenv {venv} failed ({error}):\n{last}"
    stamp.write_text(wanted)
    return twistd, f"PyPy virtualenv {venv} made (log: {log})"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def version(twistd: Path) -> str:
    python = twistd.with_name("python")
    return subprocess.check_output(
        [str(python), "-c", "import sys; print(sys.version.replace(chr(10), ' '))"],
        text=True,
        timeout=60,
    ).strip()
