"""Uncompressed MONOCHROME2 DICOM files made in memory, for upload tests (the writer lives with
the load tests, which post DICOMs too)."""

from __future__ import annotations

from loadtests import dicom_bytes

__all__ = ["dicom_bytes"]
