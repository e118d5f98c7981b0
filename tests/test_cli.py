"""The command line as people meet it: its help tells what happens, its output reads well in a log, the health
check that probes run stays light, and the store commands refuse a store that is not there."""

import argparse
import io
import json
import re
import subprocess
import sys

import pytest

from finetune.knowledge import TuneConfig
from finetune.progress import track
from serving import cli
from serving.feedback.server import FeedbackServer, write_token
from serving.feedback.store import SQLiteStore


def commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    """(words, parser) of every command, e.g. (("feedback", "withdraw"), its parser)."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        yield words, parser
    for action in subparsers:
        for name, sub in action.choices.items():
            yield from commands(sub, (*words, name))


def value_for(action: argparse.Action) -> str:
    if action.choices:
        return str(next(iter(action.choices)))
    return "1" if action.type in (int, float) else "x"


def required_only(parser: argparse.ArgumentParser) -> list[str]:
    """The shortest command line the parser accepts: its positionals and required options, nothing else."""
    argv = []
    chosen = [g._group_actions[0] for g in parser._mutually_exclusive_groups if g.required]
    for action in parser._actions:
        if not action.option_strings:
            argv.append(value_for(action))
        elif action.required or action in chosen:
            argv += [action.option_strings[0], value_for(action)]
    return argv


def shown_default(parser: argparse.ArgumentParser, action: argparse.Action) -> str | None:
    """What `--help` says the option's default is (None: it says nothing)."""
    found = re.search(r"\(default: (.*)\)$", parser._get_formatter()._expand_help(action), re.DOTALL)
    return found and found.group(1)


def test_every_option_has_help_and_every_flag_shows_what_happens():
    """Every option says what it is for; a flag's shown default says whether it is in effect when not given:
    `--no-counterexamples (default: True)` would say counterexamples are off, where they are on."""
    missing, wrong, checked = [], [], 0
    for words, parser in commands(cli.build_parser()):
        given = parser.parse_args(required_only(parser))
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            name = f"abn {' '.join(words)} {'/'.join(action.option_strings) or action.dest}"
            if not action.help:
                missing.append(name)
            if action.nargs != 0:  # takes a value: not a flag
                continue
            # what the first spelling sets: --counterexamples (of --counterexamples/--no-counterexamples) True
            sets = True if isinstance(action, argparse.BooleanOptionalAction) else action.const
            in_effect = getattr(given, action.dest) == sets
            checked += 1
            if shown_default(parser, action) not in (None, str(in_effect)):
                wrong.append(f"{name}: help shows {shown_default(parser, action)}, in effect: {in_effect}")
    assert checked > 10  # the walk reached the flags
    assert not missing and not wrong, f"options without help: {missing}; flags whose help misleads: {wrong}"


def test_the_fine_tuning_flags_do_what_their_help_says(tmp_path):
    """No flag: the library's defaults. The spellings README and scripts use still work."""
    parser = cli.build_parser()
    base = ["finetune", "ckpt.pt", "--data", "d", "--maps", "m", "--out", "o"]
    assert cli._tune_config(parser.parse_args(base)) == TuneConfig()
    flipped = cli._tune_config(parser.parse_args([*base, "--no-counterexamples", "--unfreeze"]))
    assert not flipped.counterexamples and not flipped.freeze_features
    assert cli._tune_config(parser.parse_args([*base, "--counterexamples"])).counterexamples
    help_text = parser._subparsers._group_actions[0].choices["retrain"].format_help()
    assert "--counterexamples, --no-counterexamples" in help_text


def test_progress_in_a_log_is_lines_without_carriage_returns(tmp_path):
    """A real command with its output in a file: each progress report is a line of its own."""
    log = tmp_path / "export.log"
    with log.open("wb") as out:
        done = subprocess.run(
            [sys.executable, "-m", "serving.cli", "export-data", "--split", "val", "--out", str(tmp_path / "val")],
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=300,
        )
    written = log.read_bytes()
    assert done.returncode == 0, written.decode()[-2000:]
    assert b"\r" not in written and b"\x1b[" not in written
    assert re.search(rb"^writing decoy-digits/val: 100%.*180/180", written, re.MULTILINE), written.decode()[-2000:]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_lines_come_at_the_interval_and_at_the_end_and_bars_stay_on_a_terminal():
    log = io.StringIO()
    bar = track(range(4), desc="epoch 1/1", unit="batch", leave=False, file=log, every=0)
    for i in bar:
        bar.set_postfix(loss=f"{1 / (i + 1):.3f}")
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) >= 4  # one per step at every=0, one at the end
    assert lines[-1].startswith("epoch 1/1: 100%") and "4/4" in lines[-1] and "loss=0.250" in lines[-1]

    quiet = io.StringIO()
    for _ in track(range(4), desc="short", file=quiet):  # the default interval: only the line at the end
        pass
    assert quiet.getvalue().count("\n") == 1 and quiet.getvalue().startswith("short: 100%")

    screen = Terminal()
    for _ in track(range(4), desc="bar", file=screen, mininterval=0):
        pass
    assert "\r" in screen.getvalue()  # redrawn in place


def test_health_does_not_import_torch(tmp_path):
    """`abn health` is what the probes run, every few seconds: it stays clear of the machine learning."""
    store = SQLiteStore(tmp_path / "feedback.db")
    server = FeedbackServer(store, "127.0.0.1:0", write_token(tmp_path / "token"))
    try:
        probe = (
            "import sys; from serving import cli; "
            "code = cli.main(['health', '--inference', '127.0.0.1:1', '--management', '127.0.0.1:1', "
            f"'--feedback', '127.0.0.1:{server.port}', '--timeout', '2']); "
            "print(code, sorted(m for m in ('torch', 'torchvision', 'finetune.model') if m in sys.modules))"
        )
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    finally:
        server.stop(grace=1)
        store.close()
    assert done.returncode == 0, done.stderr
    checks, verdict = done.stdout.splitlines()
    assert json.loads(checks) == {"torchserve": False, "feedback": True}  # it did reach the feedback service
    assert verdict == "1 []"


STORE_COMMANDS = [
    ["feedback", "withdraw", "--id", "x", "--author", "ana"],
    ["feedback", "list"],
    ["feedback", "export", "--out", "export"],
    ["feedback", "reject", "--author", "ana"],
    ["feedback", "requeue", "--author", "ana"],
    ["experts", "add", "ana"],
    ["experts", "list"],
    ["experts", "remove", "ana"],
    ["rollback"],
]


@pytest.mark.parametrize("command", STORE_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_store_commands_refuse_a_store_that_is_not_there(command, tmp_path, capsys, monkeypatch):
    """A mistyped --store is an error that names the path, not a new empty store that the command changes or
    reports on (tests/test_feedback_store.py checks stats, backup and copy)."""
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "mistyped.db"
    assert cli.main([*command, "--store", str(missing)]) == 2
    assert f"no feedback store at {missing}" in capsys.readouterr().err
    assert not missing.exists()
