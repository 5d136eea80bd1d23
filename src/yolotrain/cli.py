"""Command line: ``yolotrain {train,val,predict,info,export,help} key=value ...``.

Examples::

    yolotrain train data=path/data.yaml model=n epochs=50 imgsz=640 batch=16 device=cpu
    yolotrain val model=runs/train/exp/weights/best.pt data=path/data.yaml json=true
    yolotrain predict model=runs/train/exp/weights/best.pt source=images/
    yolotrain info model=n
    yolotrain export model=runs/train/exp/weights/best.pt format=onnx opset=17
    yolotrain tune data=path/data.yaml model=n epochs=30 trials=50 [space=space.yaml] [budget=hours]
    yolotrain data check data=path/data.yaml
    yolotrain data convert src=path/data.yaml to=yolo out=converted/
    yolotrain help [COMMAND | KEY]
"""

from __future__ import annotations

import json
import os
import signal
import sys

from yolotrain.commands import run
from yolotrain.config import COMMANDS as SETTING_COMMANDS
from yolotrain.config import SETTINGS, Config, parse_cli_args, resolve
from yolotrain.config_help import help_text, setting_text
from yolotrain.errors import Preempted, YoloTrainError
from yolotrain.utils.logging import setup_logging
from yolotrain.utils.startup import start_program

COMMANDS = ("train", "val", "predict", "info", "export", "tune", "data", "ckpt", "help")
USAGE = (
    "usage: yolotrain {train,val,predict,info,export,tune,data,ckpt,help} [key=value ...]\n"
    "  e.g. yolotrain train data=data.yaml model=n epochs=50 imgsz=640 batch=16"
)


def cmd_train(cfg: Config) -> int:
    trainer, _ = run("train", cfg)
    if trainer is None or not trainer.is_main:  # worker processes trained: rank 0 printed the summary
        return 0
    print(f"run folder: {trainer.save_dir}")
    best = trainer.best_metrics
    if best:
        print(f"mAP50 {best['mAP50']:.4f}  mAP50-95 {best['mAP50-95']:.4f}  (best epoch, val split)")
    return 0


def cmd_val(cfg: Config) -> int:
    result = run("val", cfg)
    print(run("val_table", result, result.names), file=sys.stderr if cfg.json else sys.stdout)
    if cfg.json:
        out = result.to_dict()
        out["seconds"] = round(result.seconds, 3)
        print(json.dumps(out))
    return 0


def cmd_predict(cfg: Config) -> int:
    _, save_dir = run("predict", cfg)
    print(f"results saved to {save_dir}")
    return 0


def cmd_info(cfg: Config) -> int:
    model, imgsz, info = run("info", cfg)
    line = (
        f"model {model.scale}: {info['params']:,} parameters, {info['gradients']:,} gradients, "
        f"{info['layers']} layers, {info['gflops']:.1f} GFLOPs at imgsz {imgsz}, {model.nc} classes"
    )
    print(line)
    if cfg.json:
        print(json.dumps({"scale": model.scale, "nc": model.nc, "imgsz": imgsz, **info}))
    return 0


def cmd_export(cfg: Config) -> int:
    print(f"exported to {run('export', cfg)}")
    return 0


def cmd_tune(args: dict) -> int:
    setup_logging(True)  # the tuner's trial lines always show; verbose=false still quiets the progress bars
    result = run("tune", args)
    print(result.summary)
    return 0


def cmd_help(args: list[str]) -> int:
    """``yolotrain help``: every setting; ``help COMMAND``: that command's; ``help KEY``: one in full."""
    topic = args[0] if args else None
    if topic is None or topic in SETTING_COMMANDS:
        print(USAGE + "\n\n" + help_text(topic))
        return 0
    if topic in SETTINGS:
        print(setting_text(topic))
        return 0
    print(f"error: 'help {topic}': not a command or a setting; run 'yolotrain help' for the list", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``yolotrain`` command; returns the exit code.

    Args:
        argv: The command and its ``key=value`` arguments. None (the console script, ``python -m yolotrain``)
            reads ``sys.argv`` and makes this process the program's own: its imports run with the garbage
            collector paused and are then frozen (:mod:`yolotrain.utils.startup`); a caller passing ``argv``
            keeps its process's collector as it was.
    """
    program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        return cmd_help(argv[1:])
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command '{command}'; commands are {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        if command in ("ckpt", "data"):  # their own positional paths and keys (ckpt info PATH, data convert to=)
            setup_logging(True)
            if program:
                start_program(command)
            return run(command, rest)
        if command == "tune":  # tune's own keys (trials, space, pruner...) are not training settings
            tune_args = parse_cli_args(rest)
            if program:
                start_program(command)
            return cmd_tune(tune_args)
        setup_logging(True)  # resolve may warn (callbacks a cfg= file names are not run); level set below
        cfg = resolve(parse_cli_args(rest), command=command)
        setup_logging(cfg.verbose or command != "train")
        if program:
            start_program(command, cfg)
        return {"train": cmd_train, "val": cmd_val, "predict": cmd_predict, "info": cmd_info, "export": cmd_export}[
            command
        ](cfg)
    except Preempted as e:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # a worker that saved and is leaving: the agent's late copy of the stop signal must not turn exit
            # code 75 into a kill
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_IGN)
        print(f"preempted: {_rank_prefix()}{e}", file=sys.stderr)
        return Preempted.exit_code
    except YoloTrainError as e:
        print(f"error: {_rank_prefix()}{e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _rank_prefix() -> str:
    return f"[rank {os.environ['RANK']}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""


if __name__ == "__main__":
    sys.exit(main())
