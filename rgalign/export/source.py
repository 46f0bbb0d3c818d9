"""What an export reads from a training run: the deployable reasoner + QE ranker pair, the feature
encoders, the prompt fields, and the dataset path (for held-out and calibration requests).

    RUN/run.json              "config", "data": {"path": ...}
    RUN/encoders.json         FeatureEncoders
    RUN/prompt_fields.json    PromptFields (else derived from the dataset's schema)
    RUN/stages/...            `rgalign.artifacts.run.final_models` picks the pair
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rgalign.artifacts.run import RunDir, final_models, run_dataset_path, sha256_file
from rgalign.errors import ExportError, RgalignError
from rgalign.io import read_json


@dataclass
class RunSource:
    root: Path
    run_json: dict[str, Any]
    reasoner_dir: Path
    ranker_dir: Path
    reasoner: Any  # rgalign.models.reasoner.Reasoner, eval mode
    ranker: Any  # rgalign.models.qe_ranker.QERanker, eval mode
    encoders: Any  # rgalign.data.encoders.FeatureEncoders
    fields: Any  # rgalign.models.prompt.PromptFields
    data_path: Path | None

    def model_files(self) -> dict[str, str]:
        """sha256 of every file the export is made from, by path relative to the run."""
        files = [self.root / "encoders.json"]
        pf = self.root / "prompt_fields.json"
        if pf.is_file():
            files.append(pf)
        for d in (self.reasoner_dir, self.ranker_dir):
            files += sorted(p for p in d.rglob("*") if p.is_file())
        return {os.fspath(p.relative_to(self.root)): sha256_file(p) for p in files}


def _check_pair(reasoner: Any, ranker: Any, encoders: Any) -> None:
    rc = ranker.config
    problems = []
    if reasoner.config.d_query != rc.d_query:
        problems.append(f"reasoner d_query {reasoner.config.d_query} != ranker d_query {rc.d_query}")
    if list(rc.cardinalities) != list(encoders.cardinalities):
        problems.append(f"ranker cardinalities {list(rc.cardinalities)} != encoders' {encoders.cardinalities}")
    if rc.n_numeric != len(encoders.numeric_fields):
        problems.append(f"ranker has {rc.n_numeric} numeric fields, encoders {len(encoders.numeric_fields)}")
    if rc.n_intents != encoders.num_intents:
        problems.append(f"ranker scores {rc.n_intents} intents, the KB has {encoders.num_intents}")
    if problems:
        raise ExportError("the run's models do not fit together: " + "; ".join(problems))


def load_run(run_dir: str | os.PathLike) -> RunSource:
    """Load everything an export needs from ``run_dir``; `ExportError` (one line) if it cannot."""
    from rgalign.data.encoders import FeatureEncoders
    from rgalign.models.prompt import PromptFields
    from rgalign.models.qe_ranker import QERanker
    from rgalign.models.reasoner import Reasoner

    root = Path(run_dir)
    if not (root / "run.json").is_file():
        raise ExportError(
            f"{os.fspath(root)} is not a training run (no run.json); pass the folder `rgalign train --out` wrote"
        )
    try:
        run_json = read_json(root / "run.json")
        reasoner_dir, ranker_dir = final_models(RunDir(root))
        reasoner = Reasoner.load(reasoner_dir).eval()
        ranker = QERanker.load(ranker_dir).eval()
        encoders = FeatureEncoders.from_json(root / "encoders.json")
    except ExportError:
        raise
    except RgalignError as e:
        raise ExportError(f"cannot export {os.fspath(root)}: {e}") from None
    data_path = run_dataset_path(run_json)
    pf_path = root / "prompt_fields.json"
    if pf_path.is_file():
        fields = PromptFields.from_dict(read_json(pf_path))
    elif data_path is not None:
        from rgalign.data.schema import DatasetSchema

        fields = PromptFields.from_schema(DatasetSchema.from_yaml(data_path / "dataset.yaml"))
    else:
        raise ExportError(f"{os.fspath(root)}: no prompt_fields.json and no dataset to read the prompt fields from")
    _check_pair(reasoner, ranker, encoders)
    return RunSource(root, run_json, reasoner_dir, ranker_dir, reasoner, ranker, encoders, fields, data_path)
