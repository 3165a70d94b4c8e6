"""anycost export: one operating point as a standalone TorchScript or ONNX network."""

from __future__ import annotations

from pathlib import Path

from ._common import EPILOG, UserError, load_model, add_zoo_dir

HELP = "export one operating point as a standalone TorchScript or ONNX network"


def add(sub) -> None:
    x = sub.add_parser("export", help=HELP, epilog=EPILOG,
                       description="Choose an operating point (by name, or the most accurate one within a mean-MAC "
                                   "budget) and write the network that runs it: TorchScript for every family (early "
                                   "exits and cascades stop inside the module), ONNX where the point's control flow "
                                   "is static (a pruned CNMM, a fixed exit, a cascade member, a fixed-gate LC-Net).")
    x.add_argument("model", help="zoo name, checkpoint .pt or run folder")
    add_zoo_dir(x)
    g = x.add_mutually_exclusive_group()
    g.add_argument("--op", help="operating point name (see `anycost eval MODEL`); default: the most expensive")
    g.add_argument("--budget", type=float, help="mean MACs per input; the best shipped point within it")
    x.add_argument("--format", choices=["torchscript", "onnx"], help="default: from the file's suffix (.pt/.onnx)")
    x.add_argument("-o", "--output", required=True, help="output file, e.g. model.pt or model.onnx")
    x.set_defaults(func=run)


def run(a) -> int:
    import torch

    from anycost.deploy import to_onnx, to_torchscript

    if Path(a.output).is_dir():
        raise UserError(f"-o {a.output} is a folder; give the file to write, e.g. {Path(a.output) / 'model.pt'}")
    model, cfg = load_model(a.model, zoo_dir=a.zoo_dir)
    op = model.at_budget(a.budget, mix=False) if a.budget is not None else (model.find_op(a.op) if a.op else None)
    op = op or model.default_op()
    fmt = a.format or ("onnx" if Path(a.output).suffix == ".onnx" else "torchscript")
    net = model.export(op)
    if fmt == "onnx":
        if not model.is_static(op):
            raise UserError(f"operating point '{op.name}' routes each input on its content: ONNX would freeze one "
                            "path; export it as TorchScript, or choose a static point")
        size = tuple(cfg.get("input_size") or model.input_size or ())
        if not size:
            raise UserError("the model records no input size to trace ONNX with")
        out = to_onnx(net, torch.zeros(1, *size), a.output)
    else:
        to_torchscript(net, a.output)
        out = Path(a.output)
    cost = f"{op.macs / 1e6:.3f} M MACs, {op.accuracy:.2f}% on {op.split}" if op.calibrated else "uncalibrated"
    print(f"exported '{op.name}' ({cost}) as {fmt}: {out}")
    return 0
