"""Dataset layouts of the paper (MedFake, MedFakeInpaint): readers, splits, checks, builder.

``python -m medfakedet.data build --out DIR`` writes both datasets synthetically;
``python -m medfakedet.data check DIR`` validates a dataset folder. Heavy parts (the builder,
phantoms, fakes) are imported on use.
"""

from .inpaint import MedFakeInpaintDataset, group_of, load_split
from .medfake import MedFakeDataset, Sample, scan_medfake, split_medfake

__all__ = [
    "MedFakeDataset",
    "MedFakeInpaintDataset",
    "Sample",
    "group_of",
    "load_split",
    "scan_medfake",
    "split_medfake",
]
