"""The paper's numbers: Tables 10 and 11 of Liu et al. (2022), Appendix C.

`roadmap/paper_roadmap.csv` holds one row per step and regime: ImageNet-1K top-1,
its std over 3 seeds where the paper gives it, and GFLOPs (multiply-accumulates) at
224x224, plus the Swin-T / Swin-B reference rows (order left empty).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from importlib import resources
from typing import Dict, List, Mapping, Optional, Tuple

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


CLEAR_MULTIPLE = 2.0  # a step is clear when its change exceeds twice its std over seeds (issue 19's rule)


def change(regime: str, step: str, parent: str) -> Optional[Tuple[float, Optional[float]]]:
    """A step's change of top-1 from the step it builds on, and the std of that change over
    seeds: the two steps' stds added in quadrature (independent seeds), or the one given
    (the resnet row has none); None for the std where neither has one (the r200 column)."""
    a, b = row(regime, step), row(regime, parent)
    if a is None or b is None:
        return None
    stds = [s for s in (a.top1_std, b.top1_std) if s is not None]
    return a.top1 - b.top1, (math.sqrt(sum(s * s for s in stds)) if stds else None)


def clear_steps(regime: str, parents: Mapping[str, str], multiple: float = CLEAR_MULTIPLE) -> List[str]:
    """The paper's clear steps: those whose change exceeds `multiple` times its std over
    seeds. In r50's column: 12 of 16, all but patchify_stem, gelu, fewer_norms and
    layer_norm (the step's own std instead of the change's selects the same 12). The r200
    column gives no std: no step is clear there."""
    out = []
    for step, parent in parents.items():
        c = change(regime, step, parent)
        if c is not None and c[1] is not None and abs(c[0]) > multiple * c[1]:
            out.append(step)
    return out
