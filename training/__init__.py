"""Training and evaluation entry points: config in, medfakedet artifact + metrics report out.

- ``python -m training.train_synthesis8 --data DIR --out DIR``: the 8-class ResNet18.
- ``python -m training.train_localizer --data DIR --out DIR``: the density U-Net.
- ``python -m training.evaluate --artifact DIR --data DIR``: metrics.json, report.md, plots.
- ``python -m training.ablation --data DIR --out DIR``: localizer architectures side by side.
- ``python -m training.pipeline``: ``make train`` (build if missing, train both, evaluate both).

One job per module: ``config`` (typed configs, YAML presets, ``--set``), ``trainer`` (the one
training skeleton; each ``train_*`` module is a task plugged into it), ``loop`` (epochs,
precision, LR schedule, BatchNorm refresh), ``checkpoint``, ``inference`` (batched
predictions), ``calibration`` (temperature, thresholds, sweep), ``corruptions``,
``task_metrics``, ``plots``, ``report`` (Markdown from table specs), ``common`` (seeding,
progress bars, JSON).
"""
