"""The paper's numbers: Tables 10 and 11 of Liu et al. (2022), Appendix C.

`roadmap/paper_roadmap.csv` holds one row per step and regime: ImageNet-1K top-1,
its std over 3 seeds where the paper gives it, and GFLOPs (multiply-accumulates) at
224x224, plus the Swin-T / Swin-B reference rows (order left empty).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from typing import Dict, Optional, Tuple

GFLOPS_TOLERANCE = 0.01

# Rows where counting conv and linear MACs cannot give the paper's figure.
EXPLAINED: Dict[Tuple[str, str], str] = {
    ("r50", "layer_norm"): "paper 4.46 looks like a typo: BN -> LN changes no conv, the rows around it are 4.15, "
    "and the r200 column does not move at this step",
    ("r50", "separate_downsampling"): "paper 4.49 counts more than conv + linear (4.46); fvcore, which also "
    "counts norms, gives 4.47",
}


@dataclass(frozen=True)
class PaperRow:
    regime: str
    step: str
    label: str
    top1: float
    top1_std: Optional[float]
    gflops: float


def _load() -> Dict[Tuple[str, str], PaperRow]:
    text = resources.files("roadmap").joinpath("paper_roadmap.csv").read_text()
    rows = {}
    for r in csv.DictReader(text.splitlines()):
        rows[(r["regime"], r["step"])] = PaperRow(
            r["regime"], r["step"], r["paper_label"], float(r["top1"]),
            float(r["top1_std"]) if r["top1_std"] else None, float(r["gflops"]),
        )
    return rows


TABLE = _load()


def reference_regime(regime: str) -> str:
    """The paper's column a study compares with: r200's for r200, r50's for every other
    regime (micro follows r50's path)."""
    return "r200" if regime == "r200" else "r50"


def row(regime: str, step: str) -> Optional[PaperRow]:
    return TABLE.get((regime, step))
