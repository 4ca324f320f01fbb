"""One command-line vocabulary: every CLI's parser against refsnn.cli's table.

Same flag, same meaning (its help opens with the table's words), one seed default, ``--out`` always
a folder whose default lies under runs/, every option's default in ``--help``, old spellings hidden
but still accepted with a one-line warning.
"""
import argparse
import importlib
import importlib.util
from pathlib import Path

import pytest

from refsnn import cli

REPO_ROOT = Path(__file__).resolve().parent.parent
MODULES = {"train": "refsnn.train", "certify": "refsnn.certify", "attack": "refsnn.attack",
           "evaluate": "refsnn.evaluate", "report": "refsnn.report", "reproduce": "refsnn.reproduce",
           "check": "verify.check", "dataset": "verify.dataset", "tightness": "verify.tightness"}
SCRIPTS = ("convert_to_hdf5", "import_torch", "make_mnist_subset")
#: --out of convert_to_hdf5 is where load_dataset looks for data (--data-dir, ~/.refsnn/data), not a run.
OUT_NOT_UNDER_RUNS = {"convert_to_hdf5"}

#: (command, old spelling, new spelling, argv that uses the old spelling after the required arguments)
OLD_SPELLINGS = [
    ("certify", "--horizon", "--robust-T", ["--horizon", "2"], "robust_T", 2),
    ("certify", "--alpha", "--confidence-alpha", ["--alpha", "0.01"], "confidence_alpha", 0.01),
    ("dataset", "--horizon", "--robust-T", ["--horizon", "2"], "robust_T", 2),
    ("dataset", "--chunk-size", "--batch-size", ["--chunk-size", "3"], "batch_size", 3),
    ("evaluate", "--limit", "--n", ["--limit", "7"], "n", 7),
    ("evaluate", "--json", "--format json", ["--json"], "format", "json"),
    ("tightness", "--samples", "--n", ["--samples", "5"], "n", 5),
    ("tightness", "--steps", "--robust-T", ["--steps", "2"], "robust_T", 2),
    ("convert_to_hdf5", "--out-dir", "--out", ["--out-dir", "x"], "out_dir", Path("x")),
    ("import_torch", "--steps", "--T", ["--steps", "4"], "T", 4),
    ("import_torch", "--samples", "--inputs", ["--samples", "x.npy"], "inputs", "x.npy"),
    ("make_mnist_subset", "--seed", "--subset-seed", ["--seed", "5"], "subset_seed", 5),
]
REQUIRED = {"certify": ["--model", "m.h5"], "dataset": ["--model", "m.h5", "--dataset", "mnist-subset"],
            "evaluate": ["--model", "m.h5", "--dataset", "mnist-subset"], "tightness": [],
            "convert_to_hdf5": ["mnist"], "import_torch": ["--framework", "plain", "--model", "m.pt"],
            "make_mnist_subset": []}


def _module(name: str):
    if name in MODULES:
        return importlib.import_module(MODULES[name])
    spec = importlib.util.spec_from_file_location(f"_script_{name}", REPO_ROOT / "data_scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PARSERS = {name: _module(name).build_parser() for name in (*MODULES, *SCRIPTS)}


def _options(parser: argparse.ArgumentParser):
    """Visible options: {flag: action}."""
    return {flag: action for action in parser._actions if action.help != argparse.SUPPRESS
            for flag in action.option_strings if flag.startswith("--") and flag != "--help"}


def _help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    return parser.formatter_class(parser.prog)._get_help_string(action) or ""


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_help_works_and_shows_every_default(name, capsys):
    parser = PARSERS[name]
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["-h"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out
    for flag, action in _options(parser).items():
        text = _help_text(parser, action)
        assert "default" in text or "(required)" in text, f"{name} {flag}: help shows no default: {text!r}"


def test_a_shared_flag_has_one_meaning():
    uses = {}
    for name, parser in PARSERS.items():
        for flag, action in _options(parser).items():
            uses.setdefault(flag, {})[name] = action.help or ""
    for flag, helps in uses.items():
        if flag in cli.VOCABULARY:
            for name, text in helps.items():
                assert text.startswith(cli.VOCABULARY[flag]), f"{name} {flag}: {text!r} is not {cli.VOCABULARY[flag]!r}"
        elif len(helps) > 1:
            assert flag in cli.COMMAND_SPECIFIC, f"{flag} in {sorted(helps)} is not in refsnn.cli.VOCABULARY"
            openings = {text.split(":")[0] for text in helps.values()}
            assert len(openings) == len(helps), f"{flag}: each command must say which kind of {flag} it takes"


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_seed_default_is_the_same_everywhere(name):
    options = _options(PARSERS[name])
    if "--seed" in options:
        assert options["--seed"].default == cli.SEED_DEFAULT == 0


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_out_is_a_folder_with_its_default_under_runs(name):
    parser = PARSERS[name]
    options = _options(parser)
    assert "--out" in options or name in ("evaluate", "check"), f"{name} writes files but has no --out"
    if "--out" not in options:
        return
    text = _help_text(parser, options["--out"])
    assert text.startswith("output folder")
    if name not in OUT_NOT_UNDER_RUNS:
        default = text.split("default:")[1]
        assert default.strip().startswith(("runs/", "RUN_DIR")) and "results" not in default, text


def test_counts_times_and_radii_are_validated_by_their_type():
    """The same flag refuses the same bad value in every parser (the table in tests/bad_inputs has the rest)."""
    bad = {"--n": "0", "--T": "0", "--robust-T": "0", "--batch-size": "0", "--eps": "1.5", "--atol": "nan",
           "--time-limit": "0", "--workers": "0", "--seed": "x"}
    for name, parser in PARSERS.items():
        for flag, action in _options(parser).items():
            if flag in bad:
                with pytest.raises(argparse.ArgumentTypeError if action.type not in (int, float) else ValueError):
                    action.type(bad[flag])


@pytest.mark.parametrize("name, old, new, argv, dest, value", OLD_SPELLINGS,
                         ids=[f"{row[0]}{row[1]}" for row in OLD_SPELLINGS])
def test_old_spellings_are_hidden_and_still_work(name, old, new, argv, dest, value, capsys):
    parser = PARSERS[name]
    assert old not in _options(parser) and f" {old} " not in parser.format_help()
    args = parser.parse_args(REQUIRED[name] + argv)
    assert getattr(args, dest) == value
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{old} is deprecated; use {new}" in err


def test_retired_meanings_are_gone():
    """The issue's double meanings: certify's --alpha (a confidence level, not a decay), --horizon vs --T
    vs --robust-T, --chunk-size vs --batch-size, and file-valued --out."""
    for name, parser in PARSERS.items():
        visible = _options(parser)
        for flag in ("--alpha", "--horizon", "--chunk-size", "--limit", "--out-dir"):
            assert flag not in visible, f"{name} still shows {flag}"
