"""Designs beyond the path: sets of networks built from the factor table, each a
network of its own with a name that says what it is.

    leave_one_out   convnext, and convnext-minus-<factor> for each factor
    add_one         modern_resnet, and modern_resnet-plus-<factor> for each factor
    random          random-<factors on> for design.samples networks drawn from design.seed

A sweep with +design=<name> writes each network as a step file into the study
(<study>/designs/step/<name>.yaml: the resnet step plus the factor levels' overrides),
puts that folder on Hydra's search path and sweeps them like steps. A combination of
levels that has no meaning (roadmap.factors.problem) is listed with its reason and not
trained; so is a random draw that repeats a network already drawn.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from roadmap import factors
from roadmap.config import Design, DesignConfig
from roadmap.errors import ConfigError


@dataclass(frozen=True)
class Network:
    """One network of a design."""

    name: str
    change: str
    """What it is, in words."""
    levels: Dict[str, bool]
    reference: Optional[str] = None
    """The network it is compared with, paired by seed."""


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str


def expand(design: DesignConfig) -> Tuple[List[Network], List[Skipped]]:
    """The networks of a design, and the combinations it leaves out with their reasons."""
    chosen = list(design.factors) if design.factors is not None else list(factors.NAMES)
    return EXPANDERS[design.name](design, chosen)


def _leave_one_out(design: DesignConfig, chosen: Sequence[str]) -> Tuple[List[Network], List[Skipped]]:
    full = {name: True for name in factors.NAMES}
    nets = [Network("convnext", "ConvNeXt: every factor at its ConvNeXt level", full)]
    for name in chosen:
        levels = factors.revert(full, name)
        also = [n for n in factors.NAMES if n != name and not levels[n]]
        change = f"ConvNeXt without {name}" + (f" (and so without {', '.join(also)})" if also else "")
        nets.append(Network(f"convnext-minus-{name}", change, levels, reference="convnext"))
    return nets, []


def _add_one(design: DesignConfig, chosen: Sequence[str]) -> Tuple[List[Network], List[Skipped]]:
    base = factors.levels_at(1)  # the ResNet with the modern recipe
    nets, skipped = (
        [Network("modern_resnet", "ResNet with the modern recipe: every other factor at its ResNet level", base)],
        [],
    )
    for name in chosen:
        if base[name]:
            continue  # modern_recipe is the base's own
        levels = {**base, name: True}
        why = factors.problem(levels)
        if why:
            skipped.append(Skipped(f"modern_resnet-plus-{name}", why))
        else:
            nets.append(Network(f"modern_resnet-plus-{name}", f"ResNet with the modern recipe and {name}", levels,
                                reference="modern_resnet"))
    return nets, skipped


def _random(design: DesignConfig, chosen: Sequence[str]) -> Tuple[List[Network], List[Skipped]]:
    rng = random.Random(design.seed)
    nets: List[Network] = []
    skipped: List[Skipped] = []
    seen: Dict[Tuple[bool, ...], str] = {}
    for _ in range(100 * design.samples):
        if len(nets) == design.samples:
            break
        levels = {name: (rng.random() < 0.5) if name in chosen else True for name in factors.NAMES}
        name = "random-" + ("+".join(factors.BY_NAME[n].short for n in factors.NAMES if levels[n]) or "resnet")
        key = tuple(levels.values())
        why = factors.problem(levels) or (f"the same network as {seen[key]}" if key in seen else None)
        if why:
            skipped.append(Skipped(name, why))
            continue
        seen[key] = name
        on = [n for n in factors.NAMES if levels[n]]
        nets.append(Network(name, "factors on: " + (", ".join(on) if on else "none (the ResNet)"), levels))
    if len(nets) < design.samples:
        raise ConfigError(f"design.samples={design.samples} is more than the {len(nets)} distinct networks the chosen "
                          "factors allow: ask for fewer")
    return nets, skipped


EXPANDERS = {Design.leave_one_out: _leave_one_out, Design.add_one: _add_one, Design.random: _random}


def step_file(net: Network) -> str:
    """The network as a step file: the resnet step plus its levels' overrides."""
    groups, body = [], {"step": {"name": net.name, "change": net.change, "reference": net.reference}}
    for o in OverridesParser.create().parse_overrides(factors.overrides(net.levels)):
        if "." not in o.key_or_group:  # a config group (recipe=convnext)
            groups.append(f"override /{o.key_or_group}: {o.value()}")
        else:
            section, key = o.key_or_group.split(".", 1)
            body.setdefault(section, {})[key] = o.value()
    head = [
        "# @package _global_",
        f"# {net.change} (written by roadmap.sweep +design=; the factors: roadmap/factors.py)",
        "defaults:",
        "  - resnet",
        *[f"  - {g}" for g in groups],
    ]
    return "\n".join(head) + "\n" + OmegaConf.to_yaml(OmegaConf.create(body))


def write_steps(networks: Sequence[Network], folder: Path) -> Path:
    """Each network's step file in <folder>/step/; the folder, for Hydra's search path."""
    (folder / "step").mkdir(parents=True, exist_ok=True)
    for net in networks:
        path = folder / "step" / f"{net.name}.yaml"
        text = step_file(net)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    return folder
