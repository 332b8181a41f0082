"""Print every step's parameters and MACs, beside the paper's GFLOPs.

    python -m roadmap.inspect +step=all                  # the default regime and data
    python -m roadmap.inspect +step=all regime=r50       # + the paper's Table 10 beside
    python -m roadmap.inspect +step=all regime=r200      # + the paper's Table 11 beside
    python -m roadmap.inspect +step=wider,gelu model.kernel_size=5

Params and GMACs are for the configured data (its channels, classes and image size).
For r50 and r200, the paper's GFLOPs are compared with our count at ImageNet's shapes
(3 channels, 1000 classes, 224x224), whatever the data.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import List

from roadmap import paper
from roadmap.cli import CommandLine, run
from roadmap.complexity import complexity, map_steps
from roadmap.config import ConfigError, compose, model_config
from roadmap.tables import markdown_lines


def step_rows(steps: List[str], overrides: List[str]) -> List[dict]:
    """One step_row per step, the steps counted side by side on the machine's cores."""
    return map_steps(partial(step_row, overrides=list(overrides)), list(steps))


def step_row(step: str, overrides: List[str]) -> dict:
    """A step's params and MACs under `overrides`, beside the paper's GFLOPs where it has them."""
    cfg = compose(step, *overrides)
    here = complexity(cfg)
    out = {
        "step": step,
        "regime": cfg.regime.name,
        "change": cfg.step.change,
        "params_m": here.mparams,
        "gmacs": here.gmacs,
        "resolution": here.resolution,
    }
    ref = paper.row(cfg.regime.name, step)
    if ref is not None:
        imagenet = dataclasses.replace(model_config(cfg), in_chans=3, num_classes=1000)
        ours = complexity(imagenet, 224).gmacs
        out.update(
            paper_top1=ref.top1,
            paper_gflops=ref.gflops,
            imagenet_gmacs=ours,
            diff=ours - ref.gflops,
            ok=abs(ours - ref.gflops) <= paper.GFLOPS_TOLERANCE + 1e-9,
            explained=paper.EXPLAINED.get((cfg.regime.name, step)),
        )
    return out


def render(rows: List[dict]) -> str:
    """The rows as a table (aligned Markdown), the paper's columns where it has the regime."""
    with_paper = "paper_gflops" in rows[0]
    head = ["step", "what changes", "params (M)", f"GMACs @{rows[0]['resolution']}"]
    if with_paper:
        head += ["GMACs @224, ImageNet", "paper GFLOPs", "diff", "paper top-1", "check"]
    cells = []
    for r in rows:
        row = [r["step"], r["change"], f"{r['params_m']:.2f}", f"{r['gmacs']:.4g}"]
        if with_paper:
            mark = "ok" if r["ok"] else ("explained below" if r["explained"] else "OUT OF TOLERANCE")
            row += [f"{r['imagenet_gmacs']:.2f}", f"{r['paper_gflops']:.2f}", f"{r['diff']:+.2f}",
                    f"{r['paper_top1']:.2f}", mark]
        cells.append(row)
    lines = [f"regime {rows[0]['regime']}", "", *markdown_lines(head, cells, aligned=True)]
    if with_paper:
        ok = sum(r["ok"] for r in rows)
        lines.append(f"{ok} of {len(rows)} steps within {paper.GFLOPS_TOLERANCE} G of the paper.")
        for r in rows:
            if not r["ok"] and r["explained"]:
                lines.append(f"  {r['step']}: {r['explained']}.")
    return "\n".join(lines)


def main(cmd: CommandLine) -> int:
    swept = cmd.sweeps("step")
    if swept:
        raise ConfigError(f"{swept[0].input_line} sweeps values: inspect counts one config per step, give one value")
    print(render(step_rows(cmd.steps() or ["resnet"], cmd.app_lines("step"))))
    return 0


if __name__ == "__main__":
    run(main, __doc__)
