"""``medfakedet scan --format html``: a self-contained audit report, readable offline.

One HTML file, nothing fetched: CSS inline, pictures as data: URLs. For each file: a thumbnail of
the decoded image (the server's or the predictor's ``preview_png``) with the boxes drawn over it,
the heatmap (the localizer's density where it ran, else the classifier's Grad-CAM), the verdicts
and the chain of custody (the file's sha256, each model's version and weights sha256).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from medfakedet import __version__
from medfakedet.scan_output import Summary

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;color:#1c2430;margin:24px auto;max-width:1100px;
padding:0 16px}
h1{font-size:22px;margin:0 0 4px}.muted{color:#5a6676}.small{font-size:12px}
.notice{background:#fff4d6;border-left:5px solid #d99a00;padding:8px 12px;border-radius:6px}
table{border-collapse:collapse}th,td{text-align:left;padding:3px 8px;vertical-align:top}
.models td,.models th{border-bottom:1px solid #d8dee7}
.file{border:1px solid #d8dee7;border-radius:10px;padding:12px 14px;margin:14px 0;
display:grid;grid-template-columns:auto auto 1fr;gap:14px;align-items:start;break-inside:avoid}
.file h2{grid-column:1/-1;font-size:15px;margin:0;word-break:break-all}
figure{margin:0}figcaption{font-size:12px;color:#5a6676;margin-top:2px}
.pic{position:relative;display:inline-block;line-height:0;background:#0d1320}
.pic img{max-width:256px;max-height:256px;image-rendering:auto}
.pic svg{position:absolute;inset:0;width:100%;height:100%}
.badge{display:inline-block;padding:1px 8px;border-radius:999px;font-weight:700;font-size:12px;
text-transform:uppercase;background:#e9edf3}
.fake{background:#fbe7e5;color:#b3261e}.real{background:#e2f4e8;color:#17753a}
.uncertain{background:#fff4d6;color:#8a5a00}.error{background:#fbe7e5;color:#b3261e}
code{font-size:11.5px;word-break:break-all}
"""

_BADGE = {
    "fake": "fake",
    "manipulated": "fake",
    "real": "real",
    "untouched": "real",
    "uncertain": "uncertain",
}


def _e(value: Any) -> str:
    return html.escape("-" if value is None else str(value))


def _badge(verdict: str | None) -> str:
    if verdict is None:
        return "-"
    return f'<span class="badge {_BADGE.get(verdict, "")}">{_e(verdict)}</span>'


def _png(data: str | None, alt: str) -> str:
    if not data:
        return ""
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _boxes_svg(row: dict[str, Any]) -> str:
    """The boxes, in the uploaded image's pixels, as an SVG laid over the thumbnail."""
    w, h, boxes = row.get("width"), row.get("height"), row.get("boxes") or []
    if not (w and h and boxes):
        return ""
    rects = "".join(
        f'<rect x="{b["x1"]:g}" y="{b["y1"]:g}" width="{b["x2"] - b["x1"]:g}" '
        f'height="{b["y2"] - b["y1"]:g}" fill="none" stroke="#ffd400" '
        f'stroke-width="{max(w, h) / 128:.2f}"><title>box {i + 1}: score {b["score"]:.3f}'
        "</title></rect>"
        for i, b in enumerate(boxes)
    )
    return f'<svg viewBox="0 0 {w} {h}" preserveAspectRatio="none" role="img">{rects}</svg>'


def _model(row: dict[str, Any], prefix: str) -> str:
    """A model's version and weights sha256, as this row's answer gave them."""
    return f"{_e(row.get(prefix + '_version'))} <code>{_e(row.get(prefix + '_sha256'))}</code>"


def _facts(row: dict[str, Any]) -> str:
    p = row.get("fake_probability")
    items = [
        ("status", _badge("error") if row["status"] == "error" else "ok"),
        ("error", _e(row["error"])) if row["error"] else None,
        ("verdict", _badge(row.get("verdict"))),
        ("reason", _e(row.get("reason"))) if row.get("reason") else None,
        ("P(fake)", "-" if p is None else f"{p:.3f}"),
        ("class / organ", f"{_e(row.get('class_name'))} / {_e(row.get('organ'))}"),
        ("in-distribution score", _e(row.get("in_distribution_score"))),
        ("manipulation", _badge(row.get("localizer_verdict"))),
        ("boxes", _e(row.get("count"))),
        ("size", f"{_e(row.get('width'))} x {_e(row.get('height'))} px"),
        ("file sha256", f"<code>{_e(row.get('sha256'))}</code>"),
        ("classifier", _model(row, "model")),
        ("localizer", _model(row, "localizer")),
    ]
    cells = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in filter(None, items))
    return f'<table class="facts">{cells}</table>'


def _file_section(row: dict[str, Any], visuals: dict[str, str]) -> str:
    preview = _png(visuals.get("preview_png"), f"preview of {row['file']}")
    thumb = (
        f'<figure><div class="pic">{preview}{_boxes_svg(row)}</div>'
        "<figcaption>the image as decoded, boxes in yellow</figcaption></figure>"
        if preview
        else "<figure><figcaption>no preview</figcaption></figure>"
    )
    heat = _png(visuals.get("heatmap_png"), f"heatmap of {row['file']}")
    heatmap = (
        f'<figure><div class="pic">{heat}</div>'
        f"<figcaption>{_e(visuals.get('heatmap'))} heatmap</figcaption></figure>"
        if heat
        else "<figure></figure>"
    )
    return (
        f'<section class="file" data-status="{_e(row["status"])}">'
        f"<h2>{_e(row['file'])}</h2>{thumb}{heatmap}{_facts(row)}</section>"
    )


def _models(rows: Sequence[dict[str, Any]]) -> str:
    seen = sorted(
        {
            (kind, r.get(f"{prefix}_version"), r.get(f"{prefix}_sha256"))
            for r in rows
            for kind, prefix in (("synthesis8", "model"), ("manipulation_density", "localizer"))
            if r.get(f"{prefix}_version")
        },
        key=str,
    )
    body = "".join(
        f"<tr><td>{_e(k)}</td><td>{_e(v)}</td><td><code>{_e(h)}</code></td></tr>"
        for k, v, h in seen
    )
    return (
        '<table class="models"><tr><th>model</th><th>version</th><th>weights sha256</th></tr>'
        f"{body}</table>"
    )


def format_html(
    rows: Sequence[dict[str, Any]],
    summary: Summary,
    visuals: dict[str, dict[str, str]],
    source: str,
) -> str:
    """The report of ``rows`` (:meth:`ScanRow.to_dict` records); ``visuals`` maps a file to its
    pictures; ``source`` says where the results came from (server URL or artifacts folder)."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    sections = "".join(_file_section(r, visuals.get(r["file"], {})) for r in rows)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>MedFakeDet audit: {summary.files} files</title><style>{_CSS}</style></head>"
        "<body><h1>MedFakeDet audit report</h1>"
        f'<p class="muted">{_e(when)} &middot; medfakedet {_e(__version__)} &middot; results '
        f"from {_e(source)}</p>"
        '<p class="notice"><strong>Not for clinical use.</strong> Models trained on synthetic '
        "data; an <em>uncertain</em> verdict means the model cannot tell.</p>"
        f'<p id="summary"><strong>{_e(summary.line())}</strong></p>'
        f"{_models(rows)}{sections}</body></html>\n"
    )
