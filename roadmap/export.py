"""Export one step's network for deployment, and check the exported graph against the network.

    python -m roadmap.export +step=gelu regime=r50 data=imagenet format=exported_program out=gelu.pt2
    python -m roadmap.export +step=gelu regime=r50 format=torchscript out=gelu.ts resolution=64
    python -m roadmap.export +step=separate_downsampling regime=r50 data=imagenet \\
        weights=convnext_tiny_1k_224_ema.pth format=onnx out=convnext_t.onnx

The network is the one `roadmap.train` trains with the same overrides (the default data
is Fashion-MNIST's: add data=imagenet for ImageNet's shapes). Its options, besides the
config's overrides:

    format=F       exported_program (torch.export, a .pt2: torch.export.load(path).module()),
                   torchscript (traced; torch.jit.load(path); torch marks TorchScript deprecated)
                   or onnx (torch.onnx's exporter: pip install 'roadmap[onnx]')
    out=PATH       the file to write (required)
    resolution=N   the input's side in pixels (default: data.image_size)
    batch=N        the example batch (default 2); exported_program and onnx take any batch
    weights=PATH   a checkpoint to load first, in any layout roadmap.import_weights reads
                   (default: the step's random initialisation, seeded by seed=)
    tolerance=T    the largest |exported - eager| logit allowed, as a fraction of
                   max(1, the largest |eager| logit) (default 1e-4)

It then runs the written file on a random input and prints how far its logits are from
the eager network's, and the tolerance: exit code 0 within it, 1 beyond it. An ONNX file
is run with onnxruntime where it is installed, and said to be unchecked otherwise.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from roadmap.cli import CommandLine, line, run
from roadmap.config import compose, model_config
from roadmap.errors import NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, Choice, ConfigError, check_ranges
from roadmap.model import ConvNet
from roadmap.weights import import_weights

Runner = Callable[[torch.Tensor], torch.Tensor]


class Format(Choice):
    exported_program = "exported_program"  # torch.export's ExportedProgram, saved by torch.export.save
    torchscript = "torchscript"  # a traced TorchScript module
    onnx = "onnx"  # ONNX, by torch.onnx's dynamo exporter


@dataclass
class ExportConfig:
    """The options of roadmap.export, beside the run config's overrides."""

    format: Format = Format.exported_program
    """exported_program, torchscript or onnx."""
    out: Optional[str] = None
    """The file to write (required)."""
    resolution: int = 0
    """The input's side in pixels; 0: data.image_size."""
    batch: int = 2
    """The example batch; exported_program and onnx take any batch size (from 1), this one is checked."""
    weights: Optional[str] = None
    """A checkpoint to load first (roadmap.import_weights' layouts); None: the step's seeded initialisation."""
    tolerance: float = 1e-4
    """The largest |exported - eager| logit allowed, as a fraction of max(1, the largest |eager| logit)."""

    def __post_init__(self) -> None:
        self.format = Format(self.format)
        check_ranges(self, "", {"resolution": NON_NEGATIVE_INT, "batch": POSITIVE_INT, "tolerance": POSITIVE})
        if not self.out:
            raise ConfigError("no out= given: name the file to write, e.g. out=gelu.pt2")


OPTIONS = tuple(f.name for f in dataclasses.fields(ExportConfig))


# ----------------------------------------------------------------------------- the formats


def _dynamic_batch(x: torch.Tensor):
    """Any batch size, where the example's lets torch.export see it vary (a batch of 1 is specialised)."""
    return ({0: torch.export.Dim("batch", min=1)},) if x.shape[0] > 1 else None


def exported_program(model: nn.Module, x: torch.Tensor) -> torch.export.ExportedProgram:
    """The eval-mode network through torch.export, for any batch size when x's is above 1."""
    return torch.export.export(model, (x,), dynamic_shapes=_dynamic_batch(x))


def _write_program(model: nn.Module, x: torch.Tensor, out: Path) -> None:
    torch.export.save(exported_program(model, x), str(out))


def _load_program(out: Path) -> Runner:
    return torch.export.load(str(out)).module()


def _write_torchscript(model: nn.Module, x: torch.Tensor, out: Path) -> None:
    with warnings.catch_warnings():  # torch marks TorchScript deprecated; the docstring says so once
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated")
        torch.jit.trace(model, x).save(str(out))


def _load_torchscript(out: Path) -> Runner:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated")
        return torch.jit.load(str(out))


def _write_onnx(model: nn.Module, x: torch.Tensor, out: Path) -> None:
    torch.onnx.export(model, (x,), str(out), input_names=["images"], output_names=["logits"],
                      dynamic_shapes=_dynamic_batch(x), external_data=False)


def _load_onnx(out: Path) -> Optional[Runner]:
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


@dataclass(frozen=True)
class Exporter:
    """How one format is written and run back."""

    packages: Tuple[str, ...]
    """The modules writing it needs, beyond torch."""
    extra: str
    """The extra of this project that installs them."""
    write: Callable[[nn.Module, torch.Tensor, Path], None]
    """Writes the eval-mode network, traced on the example input, to the path."""
    load: Callable[[Path], Optional[Runner]]
    """The written file as a function of the input; None where nothing here can run it."""
    runner: str
    """What runs the written file (named when it is missing)."""


FORMATS: Dict[Format, Exporter] = {
    Format.exported_program: Exporter((), "", _write_program, _load_program, "torch.export"),
    Format.torchscript: Exporter((), "", _write_torchscript, _load_torchscript, "torch.jit"),
    Format.onnx: Exporter(("onnx", "onnxscript"), "onnx", _write_onnx, _load_onnx, "onnxruntime"),
}


def require(fmt: Format) -> Exporter:
    """The format's exporter; ConfigError naming the extra to install when a package it needs is missing."""
    exporter = FORMATS[fmt]
    missing = [p for p in exporter.packages if importlib.util.find_spec(p) is None]
    if missing:
        raise ConfigError(f"format={fmt.value} needs {' and '.join(missing)}, which are not installed: "
                          f"pip install 'roadmap[{exporter.extra}]'")
    return exporter


# ----------------------------------------------------------------------------- checking


def compare(eager: torch.Tensor, exported: torch.Tensor, tolerance: float) -> Tuple[float, float]:
    """The largest |exported - eager| logit, and what `tolerance` allows: tolerance x max(1, largest |eager|)."""
    diff = (torch.as_tensor(exported).float() - eager.float()).abs().max().item()
    return diff, tolerance * max(1.0, eager.abs().max().item())


def check_written(exporter: Exporter, model: nn.Module, x: torch.Tensor, out: Path, tolerance: float) -> int:
    """Run the written file on x beside the eager network, print the difference and the tolerance; the exit code."""
    runner = exporter.load(out)
    if runner is None:
        print(f"not checked: {exporter.runner} is not installed here (pip install {exporter.runner})")
        return 0
    with torch.no_grad():
        diff, allowed = compare(model(x), runner(x), tolerance)
    verdict = "ok" if diff <= allowed else "MISMATCH"
    print(f"{exporter.runner} vs eager logits on a random {tuple(x.shape)} input: max |diff| {diff:.3g}, "
          f"tolerance {allowed:.3g} ({tolerance:g} x max(1, max |logit|)): {verdict}")
    return 0 if diff <= allowed else 1


# ----------------------------------------------------------------------------- the command


def parse(cmd: CommandLine) -> ExportConfig:
    """The export options among the overrides, checked."""
    given = [line(o) for o in cmd.app if o.key_or_group in OPTIONS]
    fmt = cmd.get("format")
    if fmt is not None and fmt.value() not in {f.value for f in Format}:
        raise ConfigError(f"format={fmt.value()} is not valid: choose one of {', '.join(f.value for f in Format)}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ExportConfig), OmegaConf.from_dotlist(given))
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except ConfigError:
        raise
    except (OmegaConfBaseException, ValueError) as e:
        raise ConfigError(f"{str(e).splitlines()[0]}: see python -m roadmap.export --help") from e


def single_step(cmd: CommandLine) -> str:
    """The one step an export writes (ConfigError for none, several, or a sweep)."""
    steps = cmd.steps()
    if not steps:
        raise ConfigError("no step given: add +step=<name>, e.g. +step=gelu (see python -m roadmap.inspect +step=all)")
    swept = cmd.sweeps("step")
    if len(steps) > 1 or swept:
        raise ConfigError("export writes one network: give one step (+step=<name>) and one value per key")
    return steps[0]


def build(cfg, opts: ExportConfig) -> Tuple[ConvNet, torch.Tensor]:
    """The eval-mode network (seeded, or with opts.weights) and a random input at the export's resolution."""
    torch.manual_seed(cfg.seed)
    model = ConvNet(model_config(cfg)).eval()
    if opts.weights:
        import_weights(model, opts.weights)
    side = opts.resolution or cfg.data.image_size
    if side < model.cfg.total_stride:
        raise ConfigError(f"resolution={side} is smaller than the network's total stride ({model.cfg.total_stride}): "
                          f"use resolution>={model.cfg.total_stride}")
    return model, torch.randn(opts.batch, model.cfg.in_chans, side, side)


def output_path(out: str) -> Path:
    """Where the export goes: a file whose folder exists or can be made (ConfigError otherwise)."""
    path = Path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"out={out}: its folder cannot be created ({e.strerror}): choose a writable path") from e
    if path.is_dir():
        raise ConfigError(f"out={out} is a folder: name the file to write, e.g. out={path / 'model.pt2'}")
    return path


def main(cmd: CommandLine) -> int:
    step, opts = single_step(cmd), parse(cmd)
    exporter = require(opts.format)
    cfg = compose(step, *cmd.app_lines("step", *OPTIONS))
    out = output_path(opts.out)  # type: ignore[arg-type]
    model, x = build(cfg, opts)
    exporter.write(model, x, out)
    print(f"wrote {out}: {step} ({cfg.regime.name} regime), {opts.format.value}, input {tuple(x.shape)}")
    return check_written(exporter, model, x, out, opts.tolerance)


if __name__ == "__main__":
    run(main, __doc__)
