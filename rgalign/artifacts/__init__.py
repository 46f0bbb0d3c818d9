"""Artifacts on disk, the lowest layer above `rgalign.errors` and `rgalign.io`: the training run
folder (`run.py`: `RunDir`, `final_models`, provenance) and the export manifest (`manifest.py`),
plus the shared registry of precisions, backends and model names (`registry.py`). Training writes
runs, export reads them and writes exports, inference / serve / bench read exports: all through
here, so none of them needs another's package to find a file.
"""
