"""Typed training configs: dataclass defaults <- YAML preset <- CLI flags <- ``--set key=value``.

A trainer's config is a frozen dataclass with a ``validate()`` method; :func:`load_yaml_config`
and :func:`apply_overrides` coerce every value to the field's annotated type, and
:func:`parse_config_args` is the whole command line of a trainer.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or a string from the CLI) to the field's annotated type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (
            isinstance(value, str) and value.strip().lower() in ("none", "null", "")
        )
        if is_none and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin in (list, tuple):
        items = value.split(",") if isinstance(value, str) else list(value)
        elem = args[0] if args else str
        out = [_coerce(v.strip() if isinstance(v, str) else v, elem, key) for v in items]
        return tuple(out) if origin is tuple else out
    try:
        if hint is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"config key {key!r} expects {getattr(hint, '__name__', hint)}, got {value!r}"
        ) from None
    return value


def apply_overrides(cfg: Any, overrides: dict[str, Any], source: str) -> Any:
    """A copy of the dataclass ``cfg`` with ``overrides`` applied (types checked and coerced)."""
    types_ = _field_types(type(cfg))
    unknown = sorted(set(overrides) - set(types_))
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join(unknown)} in {source}; "
            f"accepted: {', '.join(sorted(types_))}"
        )
    changes = {k: _coerce(v, types_[k], k) for k, v in overrides.items()}
    new = dataclasses.replace(cfg, **changes)
    validate = getattr(new, "validate", None)
    if validate is not None:
        validate()
    return new


def load_yaml_config(cls: type, path: str | Path | None) -> Any:
    """``cls()`` updated with the YAML mapping at ``path`` (None: the dataclass defaults)."""
    cfg = cls()
    if path is None:
        return cfg
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    return apply_overrides(cfg, data, str(path))


def parse_set(items: Iterable[str]) -> dict[str, str]:
    """``["epochs=3", "lr=1e-3"]`` -> ``{"epochs": "3", "lr": "1e-3"}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def config_to_dict(cfg: Any) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def build_arg_parser(description: str, default_config: Path) -> argparse.ArgumentParser:
    """The trainers' common command line (each adds its own flags on top)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--out", required=True, help="artifact folder to write")
    p.add_argument(
        "--config",
        default=str(default_config),
        help=f"YAML config (default {default_config.relative_to(CONFIG_DIR.parent.parent)}); "
        "or a preset name: paper, embedded, quick (training/configs/)",
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--size", type=int, help="model input side in pixels")
    p.add_argument("--split-mode", help="how train/val/test are cut")
    p.add_argument("--seed", type=int)
    p.add_argument("--max-minutes", type=float, help="stop gracefully after this wall time")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--init",
        help="initial weights: scratch (default), imagenet (torchvision's ResNet weights from the "
        "local torch cache, never downloaded) or a .pth/.pt/.safetensors state dict",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint/")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


#: CLI flag (argparse dest) -> config key; flags left unset do not override the YAML.
CLI_KEYS = (
    "epochs", "batch_size", "lr", "size", "split_mode", "seed", "max_minutes", "device", "arch",
    "init",
)  # fmt: skip


def preset_path(config: str | Path, preset_prefix: str) -> Path:
    """A YAML path, or a preset name: "paper" -> ``configs/PREFIX.yaml``, "embedded" ->
    ``configs/PREFIX_embedded.yaml``, "quick" -> ``configs/PREFIX_quick.yaml``."""
    name = str(config)
    if "/" in name or name.endswith((".yaml", ".yml")):
        return Path(config)
    path = CONFIG_DIR / (
        f"{preset_prefix}.yaml" if name == "paper" else f"{preset_prefix}_{name}.yaml"
    )
    if not path.is_file():
        presets = sorted(
            "paper" if p.stem == preset_prefix else p.stem.removeprefix(preset_prefix + "_")
            for p in CONFIG_DIR.glob(f"{preset_prefix}*.yaml")
        )
        raise FileNotFoundError(
            f"no preset {name!r} for {preset_prefix}; presets: {', '.join(presets)} "
            "(or give a YAML path)"
        )
    return path


def resolve_config(cls: type, args: argparse.Namespace, preset_prefix: str) -> Any:
    """Dataclass defaults <- YAML (``--config``) <- named flags <- ``--set key=value``."""
    cfg = load_yaml_config(cls, preset_path(args.config, preset_prefix))
    flags = {k: getattr(args, k) for k in CLI_KEYS if getattr(args, k, None) is not None}
    cfg = apply_overrides(cfg, flags, "command-line flags")
    return apply_overrides(cfg, parse_set(args.set), "--set")


def parse_config_args(
    parser: argparse.ArgumentParser,
    cls: type,
    preset_prefix: str,
    argv: Sequence[str] | None = None,
) -> tuple[argparse.Namespace, Any]:
    """Parse ``argv`` and resolve the config; a bad value exits with a message saying why."""
    args = parser.parse_args(argv)
    try:
        cfg = resolve_config(cls, args, preset_prefix)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    return args, cfg
