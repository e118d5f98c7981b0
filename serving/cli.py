"""The product's command line: `abn <command> ...`."""

import argparse
import json
import sys

from finetune import checkpoint, data, decoy_digits, knowledge, train
from finetune.data import DataError
from finetune.evaluate import evaluate


def _cmd_train(args: argparse.Namespace) -> None:
    train.train(args)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    model, meta = checkpoint.load(args.checkpoint)
    size = tuple(meta["input_size"])
    if args.data in data.BUILTIN:
        dataset = data.builtin_split(args, args.split, size)
    else:
        dataset = data.ImageFolder(args.data, size, args.maps, classes=meta["classes"])
    result = evaluate(model, dataset, meta["mean"], meta["std"])
    print(json.dumps({"checkpoint": args.checkpoint, "data": args.data, "split": args.split, **result}, indent=2))


def _cmd_finetune(args: argparse.Namespace) -> None:
    knowledge.run(args)


def _cmd_up(args: argparse.Namespace) -> None:
    """The main job, on embedded defaults: train the demo model on decoy-digits unless it is trained."""
    demo = train.default_args(out=args.out, resume=True)
    train.train(demo)
    print(f"demo model ready: {args.out}/checkpoint.pt (see {args.out}/attention.png for its attention maps)")


def _cmd_info(args: argparse.Namespace) -> None:
    print(json.dumps(checkpoint.read_metadata(args.checkpoint), indent=2))


def _cmd_export_data(args: argparse.Namespace) -> None:
    print(json.dumps(data.export(args, args.split, args.out), indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="abn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = sub.add_parser("train", help="train a model from scratch",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_arguments(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="accuracy of a checkpoint on a data set",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint")
    data.add_arguments(p)
    p.add_argument("--split", choices=decoy_digits.SPLITS, default="test", help="split of a built-in set")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("finetune", help="fine-tune a checkpoint on corrected attention maps",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    knowledge.add_command_arguments(p)
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("up", help="the main job on embedded defaults: train the demo model")
    p.add_argument("--out", default="runs/demo", help="folder of the demo model")
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser("info", help="print a checkpoint's metadata")
    p.add_argument("checkpoint")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("export-data", help="write a built-in set as an image folder plus a maps folder",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data.add_arguments(p)
    p.add_argument("--split", choices=decoy_digits.SPLITS, default="train")
    p.add_argument("--out", required=True, help="folder to write images/ and maps/ into")
    p.set_defaults(func=_cmd_export_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (DataError, FileNotFoundError, ValueError) as e:
        print(f"abn {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
