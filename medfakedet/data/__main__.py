"""``python -m medfakedet.data build|check``: build the synthetic datasets, or check a folder."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _shares(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise SystemExit(f"--inpaint-split needs three numbers like 0.85,0.1,0.05; got {text!r}")
    return values  # type: ignore[return-value]


def _mix(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    try:
        pairs = [item.split("=") for item in text.split(",")]
        return {name.strip(): float(share) for name, share in pairs}
    except ValueError:
        raise SystemExit(
            f"--fake-mix needs approach=share pairs like gan=0.4,vae=0.2,upsample=0.4; got {text!r}"
        ) from None


def _build(args: argparse.Namespace) -> int:
    from .builder import FakeOptions, build_datasets

    summary = build_datasets(
        args.out,
        real_dir=args.real_dir,
        per_class=args.per_class,
        inpaint=args.inpaint,
        size=args.size,
        inpaint_size=args.inpaint_size,
        seed=args.seed,
        progress=not args.quiet,
        workers=args.workers,
        fake_time_budget_s=args.fake_budget,
        inpaint_kinds=[k.strip() for k in args.inpaint_kinds.split(",") if k.strip()],
        inpaint_fractions=_shares(args.inpaint_split),
        encode=args.encode,
        fake_options=FakeOptions(
            _mix(args.fake_mix),
            args.gan_steps,
            args.gan_device,
            tuple(a.strip() for a in args.detail_match.split(",") if a.strip()),
        ),
    )
    counts = summary["counts"]
    print(
        f"built {sum(counts['medfake'].values())} MedFake images "
        f"({', '.join(f'{k} {v}' for k, v in counts['medfake'].items())}) and "
        f"{counts['inpaint_images']} MedFakeInpaint images "
        f"({counts['inpaint_manipulated']} manipulated) in {args.out}"
    )
    if summary["unreadable_real_files"]:
        print(f"skipped {len(summary['unreadable_real_files'])} unreadable real files")
    print(f"time taken: {summary['seconds']:.1f} s with {summary['args']['workers']} worker(s)")
    return 0


def _separability(args: argparse.Namespace) -> int:
    from .separability import format_table, separability

    print(format_table(separability(args.dir, size=args.size)))
    return 0


def _check(args: argparse.Namespace) -> int:
    from .check import check_dataset

    report = check_dataset(args.dir)
    print(report.format())
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (1 when check finds problems)."""
    from .builder import (
        DEFAULT_INPAINT,
        DEFAULT_INPAINT_KINDS,
        DEFAULT_PER_CLASS,
        DEFAULT_SEED,
        DEFAULT_SIZE,
        ENCODE_MODES,
    )
    from .inpaint import INPAINT_FRACTIONS
    from .manipulations import MANIPULATIONS

    parser = argparse.ArgumentParser(prog="python -m medfakedet.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write MedFake and MedFakeInpaint (synthetic) to --out")
    b.add_argument("--out", required=True, help="output folder (a previous build is replaced)")
    b.add_argument(
        "--real-dir",
        default=None,
        help="folder with brain/ chest/ kidney/ lung/ real scans to use instead of phantoms",
    )
    b.add_argument("--per-class", type=int, default=DEFAULT_PER_CLASS, help="images per class")
    b.add_argument("--inpaint", type=int, default=DEFAULT_INPAINT, help="MedFakeInpaint images")
    b.add_argument("--size", type=int, default=DEFAULT_SIZE, help="image side in pixels")
    b.add_argument(
        "--inpaint-size", type=int, default=None,
        help="side of the MedFakeInpaint images (default: --size)",
    )  # fmt: skip
    b.add_argument("--seed", type=int, default=DEFAULT_SEED)
    b.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
    b.add_argument(
        "--fake-budget",
        type=float,
        default=None,
        help="limit on fake-generator training seconds per organ (default: none, train to the "
        "step caps, byte-identical output; a limit that triggers makes output machine-dependent)",
    )
    b.add_argument(
        "--inpaint-kinds",
        default=",".join(DEFAULT_INPAINT_KINDS),
        help="comma-separated MedFakeInpaint manipulations, of "
        f"{', '.join(MANIPULATIONS)} (default: %(default)s, the inpainting kinds)",
    )
    b.add_argument(
        "--inpaint-split",
        default=",".join(f"{f:g}" for f in INPAINT_FRACTIONS),
        help="train,val,test shares of MedFakeInpaint source groups (default: %(default)s, "
        "the paper's)",
    )
    b.add_argument(
        "--encode",
        choices=ENCODE_MODES,
        default="random",
        help="random (default): every image, real or fake, resampled 0.5-2x and written as JPEG "
        "q50-100 or 8/16-bit PNG by one seeded rule, so no file property carries the label; "
        "none: 8-bit PNG at --size",
    )
    b.add_argument(
        "--fake-mix",
        default=None,
        help="shares of the MedFake fake approaches, e.g. gan=0.4,vae=0.2,diffusion_resynth=0.2,"
        "upsample=0.2 (the default)",
    )
    b.add_argument(
        "--gan-steps",
        type=int,
        default=None,
        help="GAN training steps per organ (default: its step cap, higher on CUDA)",
    )
    b.add_argument(
        "--gan-device",
        default="auto",
        help="where the GAN trains: auto (CUDA when present; default), cpu or cuda[:N]",
    )
    b.add_argument(
        "--detail-match",
        default="",
        help="comma-separated approaches (of vae, diffusion_resynth, upsample, decoder_resynth) "
        "whose fakes get the spectrum of the real each came from, as the GAN's do, so that blur "
        "and noise level stop telling them apart (default: none)",
    )
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=_build)
    c = sub.add_parser("check", help="validate a dataset folder; exit 1 on problems")
    c.add_argument("dir", help="MedFake folder, MedFakeInpaint folder, or a build's --out")
    c.set_defaults(func=_check)
    s = sub.add_parser(
        "separability",
        help="per organ and approach, how well blur and noise statistics alone tell the fakes "
        "of a build from its reals (cross-validated ROC-AUC; 0.5 = not at all)",
    )
    s.add_argument("dir", help="a build's --out or its medfake/ folder")
    s.add_argument("--size", type=int, default=128, help="side the images are resized to")
    s.set_defaults(func=_separability)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
