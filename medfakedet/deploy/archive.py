"""Build the TorchServe archives (.mar): find the artifact, stage it with the serving code, run
torch-model-archiver.

Each archive carries its own copy of the ``medfakedet`` modules the handlers import, found by
following the imports from ``handlers/*_handler.py`` (:func:`serving_modules`): a new module the
predictors need is packaged without anyone editing a list, and data builders, training and this
``deploy`` package stay out.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from medfakedet.artifacts import ArtifactError, read_meta
from medfakedet.checkset import CHECK_FILE
from medfakedet.deploy.config import MODELS, REPO_ROOT, DeployError, find_tool

PACKAGE_DIR = Path(__file__).resolve().parents[1]
HANDLERS_DIR = REPO_ROOT / "handlers"


def find_artifact(artifacts_dir: str | Path, task: str) -> Path:
    """The artifact folder for ``task``: ``<dir>/<task>/`` or the one sub-folder of that task."""
    root = Path(artifacts_dir)
    direct = root / task
    if (direct / "artifact.json").is_file():
        return direct
    found = []
    for meta_file in sorted(root.glob("**/artifact.json")):
        try:
            if read_meta(meta_file.parent)["task"] == task:
                found.append(meta_file.parent)
        except ArtifactError:
            continue
    if len(found) == 1:
        return found[0]
    if not found:
        raise DeployError(
            f"no {task} artifact under {root}: expected {direct}/artifact.json. "
            "Train one first (make train) or pass --artifacts"
        )
    raise DeployError(
        f"several {task} artifacts under {root}: {', '.join(map(str, found))}; "
        f"put the one to serve in {direct}"
    )


def _imported_names(path: Path, module: str) -> set[str]:
    """Every dotted name ``path`` imports (at any depth, also inside functions), made absolute.

    ``from pkg import name`` yields ``pkg`` and ``pkg.name``: ``name`` may be a submodule.
    """
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _module_file(name: str, package_dir: Path) -> Path | None:
    """The file of module ``name`` inside ``package_dir`` (None: another package, or no module)."""
    parts = name.split(".")
    if parts[0] != package_dir.name:
        return None
    stem = package_dir.joinpath(*parts[1:])
    candidates = [stem / "__init__.py"] + ([stem.with_suffix(".py")] if len(parts) > 1 else [])
    return next((c for c in candidates if c.is_file()), None)


def serving_modules(
    roots: Iterable[str | Path] | None = None, package_dir: str | Path = PACKAGE_DIR
) -> tuple[str, ...]:
    """The files of ``package_dir`` that importing ``roots`` loads, relative, sorted.

    Args:
        roots: the Python files whose imports are followed (default: the TorchServe handlers).
        package_dir: the package to collect from (default: ``medfakedet``).

    The package's ``__init__.py`` files on the way are included, as Python runs them too.
    """
    package_dir = Path(package_dir).resolve()
    roots = sorted(HANDLERS_DIR.glob("*_handler.py")) if roots is None else roots
    todo = [(Path(r), Path(r).stem) for r in roots]
    found: set[Path] = set()
    while todo:
        path, module = todo.pop()
        for name in _imported_names(path, module):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # the parent packages run first
                prefix = ".".join(parts[:depth])
                file = _module_file(prefix, package_dir)
                if file is not None and file not in found:
                    found.add(file)
                    todo.append((file, prefix))
    return tuple(sorted(str(f.relative_to(package_dir)) for f in found))


def stage_archive_files(artifact_dir: str | Path, stage_dir: str | Path) -> Path:
    """Copy the weights, artifact.json and the serving modules of ``medfakedet`` into one folder.

    torch-model-archiver copies the folder's contents to the archive root, so the .mar holds
    ``medfakedet/`` next to the handler: the worker imports that copy and needs no installed
    medfakedet.
    """
    stage = Path(stage_dir)
    pkg = stage / PACKAGE_DIR.name
    for name in serving_modules():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PACKAGE_DIR / name, pkg / name)
    for name in ("model.safetensors", "artifact.json"):
        src = Path(artifact_dir) / name
        if not src.is_file():
            raise DeployError(f"{src} not found: {artifact_dir} is not a complete artifact")
        shutil.copy2(src, stage / name)
    check = Path(artifact_dir) / CHECK_FILE  # optional: the CPU path's agreement check set
    if check.is_file():
        shutil.copy2(check, stage / CHECK_FILE)
    return stage


def check_model_config(path: str | Path) -> dict:
    """TorchServe's model-config.yaml at ``path``, refused (:class:`DeployError`) where its
    ``batchSize`` or ``maxBatchDelay`` is not a whole number of at least 1: at a delay of 0
    TorchServe 0.12 waits as if for its default 100 ms (measured: c=1 p50 131-141 ms against
    29-35 ms at 2 ms), not "no wait" as a reader would expect."""
    import yaml  # the serve extra's (torch-model-archiver's) dependency: archives need both

    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise DeployError(f"cannot read the model config {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise DeployError(f"the model config {path} is not a mapping of keys to values")
    for key, why in (
        ("batchSize", "1 turns batching off"),
        ("maxBatchDelay", "at 0 TorchServe 0.12 waits as if for its default 100 ms; 1 waits least"),
    ):
        value = config.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise DeployError(
                f"{path}: {key} must be a whole number of at least 1 ({why}); got {value!r}"
            )
    return config


def build_archive(
    task: str,
    artifact_dir: str | Path,
    out_dir: str | Path,
    model_config: str | Path | None = None,
) -> Path:
    """Write ``<out_dir>/<task>.mar`` from an artifact; the archive version is the artifact's.

    ``model_config``: TorchServe's model-config.yaml (batching, timeouts); default
    ``config/<task>/model-config.yaml``.
    """
    if task not in MODELS:
        raise DeployError(f"unknown model {task!r}; expected one of {', '.join(MODELS)}")
    config_file = Path(model_config or REPO_ROOT / "config" / task / "model-config.yaml")
    check_model_config(config_file)
    meta = read_meta(artifact_dir)
    if meta["task"] != task:
        raise DeployError(f"{artifact_dir} holds a {meta['task']} artifact, not {task}")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"mar-{task}-") as tmp:
        stage = stage_archive_files(artifact_dir, Path(tmp) / "stage")
        # The archiver copies into $TMPDIR/<model name>, wiping what is there: with the shared
        # /tmp, two archives of one model built at once (tests, make archive) break each other.
        work = Path(tmp) / "archiver"
        work.mkdir()
        cmd = [
            find_tool("torch-model-archiver"),
            "--model-name", task,
            "--version", str(meta["version"]),
            "--handler", str(HANDLERS_DIR / f"{task}_handler.py"),
            "--extra-files", str(stage),
            "--config-file", str(config_file),
            "--export-path", str(out),
            "--force",
        ]  # fmt: skip
        env = {**os.environ, "TMPDIR": str(work)}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise DeployError(f"torch-model-archiver failed for {task}:\n{done.stderr.strip()}")
    return out / f"{task}.mar"


def archive_all(artifacts_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Both archives from ``<artifacts_dir>/{synthesis8,manipulation_density}``."""
    return [build_archive(t, find_artifact(artifacts_dir, t), out_dir) for t in MODELS]
