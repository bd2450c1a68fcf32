"""MedFakeDet: detect synthetic and locally manipulated medical images.

The core package holds everything about images, models and density maps. It never imports
TorchServe (`ts`), so training, evaluation, the `scan` command and the handlers share one code
path.
"""

__version__ = "0.1.0"
