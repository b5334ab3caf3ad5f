"""Data layer: discovery, robust decoding, duplicate-grouped splits, audits, preprocessing, cache, phantoms.

Data flows one way: folder -> :func:`discover` -> :func:`make_split` (manifest) -> decode-once cache ->
transforms -> :class:`popevit.data.datamodule.MRIDataModule`. Torch-heavy modules (``dataset``, ``transforms``,
``datamodule``) are imported from their own modules.
"""

from __future__ import annotations

from popevit.data.decode import DecodeError, load_image
from popevit.data.discover import Discovery, Sample, discover, parse_class_map
from popevit.data.manifest import Manifest, ManifestRow, make_split, read_manifest
from popevit.data.samples import SampleSet, load_samples

__all__ = [
    "DecodeError",
    "Discovery",
    "Manifest",
    "ManifestRow",
    "Sample",
    "SampleSet",
    "discover",
    "load_image",
    "load_samples",
    "make_split",
    "parse_class_map",
    "read_manifest",
]
