"""Validate a dataset folder: MedFake, MedFakeInpaint, or a build holding both.

``check_dataset(root)`` detects the layout and reports counts per class and split, and
problems: unreadable files, missing masks / density maps / labels, labels that disagree with
masks, split files naming missing images, source groups leaking across splits, manifests that
disagree with the folders. Warnings are things worth knowing that do not make a dataset
unusable (e.g. real and fake images of an organ differing in format or size, a shortcut a
classifier can learn).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from medfakedet.density import box_iou, mask_to_boxes, match_boxes, yolo_to_boxes
from medfakedet.imaging import ImageDecodeError, load_image_file
from medfakedet.labels import CLASS_NAMES, ORGANS

from .inpaint import (
    SPLIT_FILE,
    SUBDIRS,
    group_of,
    index_files,
    is_inpaint_root,
    load_split,
    read_split_file,
)
from .medfake import SPLITS, read_manifest, scan_medfake, split_medfake

#: Box of a label vs box of the mask: below this IoU they disagree.
LABEL_MASK_IOU = 0.5
#: Real and fake of an organ differ in a file property (format, pixel mode, size in half-octave
#: bins) when the total variation distance of its two distributions exceeds this (1: they share
#: no value) and a chi-squared test of homogeneity gives p below SHORTCUT_P (so that a handful of
#: images per class is not flagged by chance), or when one value's share differs with Fisher's
#: exact p below SHORTCUT_P. The builder's seeded random encode (the same rule for both classes)
#: passes both.
SHORTCUT_TV, SHORTCUT_P = 0.5, 0.01
_MAX_LISTED = 20
_CAPTIONS = {
    "medfake": "MedFake images per class: paper split (train/val/test), group split (g-*)",
    "medfakeinpaint": "MedFakeInpaint images per split (split_fixed_density.json)",
}


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`.

    Attributes:
        root: the folder checked.
        layouts: layouts found ("medfake", "medfakeinpaint").
        counts: table name -> {row -> {column -> count}}.
        problems: what makes the dataset wrong or unusable; non-empty means not ok.
        warnings: worth knowing, not fatal.
    """

    root: Path
    layouts: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        """Human-readable tables, problems and warnings."""
        lines = [f"dataset {self.root} ({', '.join(self.layouts) or 'unknown layout'})"]
        for name, table in self.counts.items():
            columns = sorted({c for row in table.values() for c in row}, key=_column_order)
            width = max([len(r) for r in table] + [len(name)]) + 2
            lines += ["", _CAPTIONS.get(name, name)]
            lines += [f"{'':<{width}}" + "".join(f"{c:>10}" for c in columns)]
            for row, values in table.items():
                lines.append(
                    f"{row:<{width}}" + "".join(f"{values.get(c, 0):>10}" for c in columns)
                )
        for title, items in (("problems", self.problems), ("warnings", self.warnings)):
            if items:
                lines += ["", f"{len(items)} {title}:"] + [f"  - {p}" for p in items]
        lines += ["", "OK" if self.ok else f"NOT OK: {len(self.problems)} problem(s)"]
        return "\n".join(lines)


def _column_order(c: str) -> tuple[int, str]:
    order = ("total", *SPLITS, *(f"g-{s}" for s in SPLITS))
    return (order.index(c), "") if c in order else (len(order), c)


def _listed(kind: str, items: list[str]) -> list[str]:
    """One problem line per item, capped, with a count of the rest."""
    shown = [f"{kind}: {i}" for i in items[:_MAX_LISTED]]
    if len(items) > _MAX_LISTED:
        shown.append(f"{kind}: ... and {len(items) - _MAX_LISTED} more")
    return shown


def _decode(path: Path, bad: list[str]):
    try:
        return load_image_file(path)
    except (ImageDecodeError, OSError) as exc:
        bad.append(f"{path}: {exc}")
        return None


# ------------------------------------------------------------------------------ MedFake


def _marginal(stats: Counter, k: int) -> dict[str, float]:
    """Share of each value of field ``k`` of the (format, mode, size bin) keys of ``stats``."""
    total = sum(stats.values())
    out: Counter = Counter()
    for key, n in stats.items():
        out[str(key[k])] += n / total
    return dict(out)


def _differ(rv: dict[str, float], fv: dict[str, float], n_real: int, n_fake: int) -> bool:
    """True when the two distributions of a file property tell real from fake."""
    values = sorted(set(rv) | set(fv))
    counts = np.array(
        [[round(m.get(v, 0.0) * n) for v in values] for m, n in ((rv, n_real), (fv, n_fake))]
    )
    if len(values) > 1 and 0.5 * np.abs(counts[0] / n_real - counts[1] / n_fake).sum() > (
        SHORTCUT_TV
    ):
        # A large distance between two small samples is often chance: it must also be unlikely
        # under one shared distribution (chi-squared test of homogeneity).
        if stats.chi2_contingency(counts).pvalue < SHORTCUT_P:
            return True
    for a, b in counts.T:
        if stats.fisher_exact([[a, n_real - a], [b, n_fake - b]]).pvalue < SHORTCUT_P:
            return True
    return False


def _shares(marginal: dict[str, float]) -> str:
    return ", ".join(f"{v} {p:.0%}" for v, p in sorted(marginal.items()))


def check_medfake(root: Path, report: CheckReport, prefix: str = "") -> None:
    """Add MedFake counts, problems and warnings of ``root`` to ``report``."""
    try:
        samples = scan_medfake(root)
    except FileNotFoundError as exc:
        report.problems.append(f"{prefix}{exc}")
        return
    report.layouts.append("medfake")
    for organ in ORGANS:
        for src in ("real", "fake"):
            if not (root / organ / src).is_dir():
                report.problems.append(f"{prefix}missing folder {root / organ / src}")
    table: dict[str, dict[str, int]] = {name: {"total": 0} for name in CLASS_NAMES}
    for mode in ("paper", "group"):
        for split, members in split_medfake(samples, mode).items():
            for s in members:
                key = split if mode == "paper" else f"g-{split}"
                table[CLASS_NAMES[s.label]][key] = table[CLASS_NAMES[s.label]].get(key, 0) + 1
    empty = []
    for s in samples:
        table[CLASS_NAMES[s.label]]["total"] += 1
    for name, row in table.items():
        if row["total"] == 0:
            empty.append(name)
    report.counts["medfake"] = table
    report.problems += [f"{prefix}class {name} has no images" for name in empty]

    bad: list[str] = []
    stats: dict[tuple[str, bool], Counter] = defaultdict(Counter)
    for s in samples:
        decoded = _decode(s.path, bad)
        if decoded is not None:
            side = max(decoded.size)
            size_bin = f"~{round(2 ** (round(2 * np.log2(max(side, 1))) / 2))}px"
            stats[(s.organ, s.is_fake)][(decoded.format, decoded.mode, size_bin)] += 1
    report.problems += _listed(f"{prefix}unreadable image", bad)
    for organ in ORGANS:
        real, fake = stats.get((organ, False)), stats.get((organ, True))
        if not real or not fake:
            continue
        for what, k in (("format", 0), ("pixel mode", 1), ("size", 2)):
            rv, fv = _marginal(real, k), _marginal(fake, k)
            if _differ(rv, fv, sum(real.values()), sum(fake.values())):
                report.warnings.append(
                    f"{prefix}{organ}: real and fake differ in {what} ({_shares(rv)} vs "
                    f"{_shares(fv)}); a classifier can learn that instead of content"
                )

    manifest = read_manifest(root)
    if manifest:
        on_disk = {s.path.relative_to(root).as_posix(): s for s in samples}
        missing = sorted(set(manifest) - set(on_disk))
        unlisted = sorted(set(on_disk) - set(manifest))
        report.problems += _listed(f"{prefix}manifest.csv lists a missing file", missing)
        report.problems += _listed(f"{prefix}file not in manifest.csv", unlisted)
        wrong = [
            f"{rel} (manifest: {row.get('organ')}/{row.get('label')})"
            for rel, row in manifest.items()
            if rel in on_disk
            and (
                row.get("organ") != on_disk[rel].organ
                or row.get("label") != ("fake" if on_disk[rel].is_fake else "real")
            )
        ]
        report.problems += _listed(f"{prefix}manifest.csv disagrees with the folder", wrong)

    splits = split_medfake(samples, "paper")
    groups_per_split = {k: {s.group for s in v} for k, v in splits.items()}
    leaking = (groups_per_split["train"] & (groups_per_split["val"] | groups_per_split["test"])) | (
        groups_per_split["val"] & groups_per_split["test"]
    )
    if leaking:
        report.warnings.append(
            f"{prefix}the paper's random split puts {len(leaking)} source group(s) in more than "
            "one split; use split_mode='group' for a leak-free evaluation"
        )


# ------------------------------------------------------------------------ MedFakeInpaint


def _label_problem(image_id: str, label_text: str, mask: np.ndarray) -> str | None:
    h, w = mask.shape
    try:
        label_boxes = yolo_to_boxes(label_text, w, h)
    except ValueError as exc:
        return f"{image_id}: {exc}"
    mask_boxes = mask_to_boxes(mask)
    if len(label_boxes) != len(mask_boxes):
        return f"{image_id}: {len(label_boxes)} label box(es) but {len(mask_boxes)} mask region(s)"
    matches = match_boxes(label_boxes, mask_boxes, LABEL_MASK_IOU)
    if len(matches) != len(mask_boxes):
        worst = min((box_iou(a, b) for a in label_boxes for b in mask_boxes), default=0.0)
        return f"{image_id}: label boxes do not match the mask regions (IoU down to {worst:.2f})"
    return None


def check_inpaint(root: Path, report: CheckReport, prefix: str = "") -> None:
    """Add MedFakeInpaint counts, problems and warnings of ``root`` to ``report``."""
    if not is_inpaint_root(root):
        report.problems.append(f"{prefix}{root} has no images/ folder")
        return
    report.layouts.append("medfakeinpaint")
    files = {sub: index_files(root, sub) for sub in SUBDIRS}
    ids = sorted(files["images"])
    if not ids:
        report.problems.append(f"{prefix}{root / 'images'} holds no images")
        return
    for sub in SUBDIRS[1:]:
        if not (root / sub).is_dir():
            report.problems.append(f"{prefix}missing folder {root / sub}")
        else:
            lacking = [i for i in ids if i not in files[sub]]
            report.problems += _listed(f"{prefix}no {sub} file for image", lacking)
            orphans = sorted(set(files[sub]) - set(ids))
            if orphans:
                report.warnings.append(f"{prefix}{len(orphans)} {sub} file(s) without an image")

    bad: list[str] = []
    disagree: list[str] = []
    manipulated: dict[str, bool] = {}
    for image_id in ids:
        image = _decode(files["images"][image_id], bad)
        mask_path, density_path = files["masks"].get(image_id), files["density"].get(image_id)
        mask = density = None
        if mask_path is not None and (decoded := _decode(mask_path, bad)) is not None:
            mask = decoded.pixels[:, :, 0] > 0.5
        if density_path is not None and (decoded := _decode(density_path, bad)) is not None:
            density = decoded.pixels[:, :, 0]
        for what, arr in (("mask", mask), ("density map", density)):
            if image is not None and arr is not None and arr.shape != image.pixels.shape[:2]:
                disagree.append(
                    f"{image_id}: {what} is {arr.shape[1]}x{arr.shape[0]}, image is "
                    f"{image.width}x{image.height}"
                )
        if mask is None:
            continue
        manipulated[image_id] = bool(mask.any())
        label_path = files["labels"].get(image_id)
        if label_path is not None:
            problem = _label_problem(image_id, label_path.read_text(encoding="utf-8"), mask)
            if problem:
                disagree.append(problem)
        if density is not None:
            peak = float(density.max())
            if mask.any() and peak < 0.5:
                disagree.append(
                    f"{image_id}: mask has regions but the density map peaks at {peak:.2f}"
                )
            if not mask.any() and peak > 0.1:
                disagree.append(f"{image_id}: mask is empty but the density map reaches {peak:.2f}")
    report.problems += _listed(f"{prefix}unreadable file", bad)
    report.problems += _listed(f"{prefix}labels / density disagree with mask", disagree)

    table: dict[str, dict[str, int]] = {
        "images": {"total": len(ids)},
        "manipulated": {"total": sum(manipulated.values())},
        "untouched": {"total": sum(not v for v in manipulated.values())},
        "groups": {"total": len({group_of(i) for i in ids})},
    }
    split: dict[str, list[str]] | None = None
    if not (root / SPLIT_FILE).is_file():
        report.problems.append(f"{prefix}missing {root / SPLIT_FILE}")
    else:
        try:
            fixed = read_split_file(root)
        except ValueError as exc:
            report.problems.append(f"{prefix}{exc}")
        else:
            unknown = sorted(set(fixed["val"] + fixed["test"]) - set(ids))
            report.problems += _listed(f"{prefix}{SPLIT_FILE} names a missing image", unknown)
            both = sorted(set(fixed["val"]) & set(fixed["test"]))
            report.problems += _listed(f"{prefix}{SPLIT_FILE} puts an ID in val and test", both)
            split = load_split(root, "json")
    if split is not None:
        groups = {k: {group_of(i) for i in v} for k, v in split.items()}
        leaking = sorted(
            (groups["train"] & (groups["val"] | groups["test"])) | (groups["val"] & groups["test"])
        )
        if leaking:
            report.problems.append(
                f"{prefix}{SPLIT_FILE} splits {len(leaking)} source group(s) across splits "
                f"(e.g. {leaking[0]}); variants of one slice leak between train and test. "
                "Use split_mode='group'"
            )
        for k, members in split.items():
            table["images"][k] = len(members)
            table["manipulated"][k] = sum(manipulated.get(i, False) for i in members)
            table["untouched"][k] = sum(not manipulated.get(i, True) for i in members)
            table["groups"][k] = len(groups[k])
    report.counts["medfakeinpaint"] = table


# --------------------------------------------------------------------------------- entry


def check_dataset(root: str | Path) -> CheckReport:
    """Check a MedFake folder, a MedFakeInpaint folder, or a build holding both.

    The layout is detected: ``medfake/`` and / or ``medfakeinpaint/`` subfolders (a build),
    an ``images/`` folder (MedFakeInpaint) or organ folders (MedFake).
    """
    root = Path(root)
    report = CheckReport(root=root)
    if not root.is_dir():
        report.problems.append(f"{root} is not a folder")
        return report
    sub_mf, sub_ip = root / "medfake", root / "medfakeinpaint"
    if sub_mf.is_dir() or sub_ip.is_dir():
        if sub_mf.is_dir():
            check_medfake(sub_mf, report, "medfake: ")
        if sub_ip.is_dir():
            check_inpaint(sub_ip, report, "medfakeinpaint: ")
    elif is_inpaint_root(root):
        check_inpaint(root, report)
    elif any((root / organ).is_dir() for organ in ORGANS):
        check_medfake(root, report)
    else:
        report.problems.append(
            f"{root}: unknown layout; expected <organ>/<real|fake>/ folders (MedFake), images/ "
            "density/ masks/ labels/ (MedFakeInpaint), or medfake/ and medfakeinpaint/ (a build)"
        )
    return report
