"""The command-line vocabulary shared by every refsnn and verify CLI: one definition per concept.

Every ``python -m refsnn.*`` / ``python -m verify.*`` command builds its parser with
:func:`make_parser` and adds the shared options through the ``add_*`` helpers below, so a flag
has one name, one meaning, one default and one validation everywhere:

========================  ==================================================  =======================
concept                   flag                                                default
========================  ==================================================  =======================
model file                ``--model``                                         (required)
data set / data folder    ``--dataset`` / ``--data-dir``                      per CLI / lookup order
number of test samples    ``--n``                                             per CLI
random seed               ``--seed``                                          0 (every CLI)
network time steps        ``--T``                                             per CLI
bound time steps T'       ``--robust-T`` (1..T, checked once T is known)      3
perturbation radius       ``--eps`` (finite, in [0, 1])                       per CLI
samples per chunk         ``--batch-size``                                    per CLI
output folder             ``--out`` (always a folder)                         ``runs/<command>/...``
MILP time limit           ``--time-limit`` (seconds, > 0)                     per CLI
absolute tolerance        ``--atol`` (finite, >= 0)                           0
workers                   ``--workers`` (>= 1, ``refsnn.parallel``)           serial
output                    ``--quiet`` / ``--no-progress``                     off
========================  ==================================================  =======================

:func:`run_main` wraps every CLI's ``main``: a user error (a ``ValueError`` such as
``refsnn.io.FormatError``, a missing/unreadable/unwritable file, an optional extra that is not
installed) prints ONE line ``<prog>: error: <message>`` and returns 2; any other exception is a
bug and keeps its traceback. Argument errors print the same single line and exit 2.
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from .input_sets import DEFAULT_ROBUST_T

DATASETS = ("mnist", "fmnist", "nmnist", "mnist-subset")
SEED_DEFAULT = 0
RUNS_ROOT = Path("runs")

#: The opening words of the help of each shared flag: a CLI may add detail after them, never
#: another meaning (tests/test_cli_vocabulary.py checks every parser against this table).
VOCABULARY = {
    "--model": "model file",
    "--dt": "time step dt of a .nir model",
    "--dataset": "data set",
    "--data-dir": "data folder",
    "--n": "number of test samples",
    "--seed": "random seed",
    "--T": "network time steps T",
    "--robust-T": "time steps T' the bounds cover",
    "--eps": "perturbation radius parameter eps",
    "--batch-size": "samples per batch",
    "--out": "output folder",
    "--time-limit": "seconds per MILP",
    "--atol": "absolute tolerance",
    "--workers": "run the chunks on a local Dask cluster",
    "--quiet": "print nothing but results and errors",
    "--no-progress": "no progress bars",
    # flags of a few commands, same meaning wherever they appear
    "--arch": "architecture",
    "--convention": "digital l-inf radius",
    "--dtype": "compute dtype",
    "--firing": "firing rule",
    "--overwrite": "replace",
    "--preset": "named preset",
    "--scheduler": "run the chunks on the Dask cluster",
    "--set": "input set",
    "--split": "data split",
    "--scoring": "draw the attack error is scored on",
}

#: Flags whose meaning is the command's own (each help says which kind): ``--method`` is the
#: training method of train, the bound methods of certify and the decision method of verify.check.
COMMAND_SPECIFIC = ("--method",)


class CLIError(ValueError):
    """A bad combination of command-line values found after parsing (one-line message, exit 2)."""


# --- parser and help ------------------------------------------------------------------------------

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default; ``None`` reads ``none``, store-true flags ``off``, lists comma-joined."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if action.required:
            return f"{text} (required)"
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            return text
        default = action.default
        if isinstance(action, argparse._StoreTrueAction) or default is False:
            shown = "off"
        elif default is None:
            shown = "none"
        elif isinstance(default, (list, tuple)):
            shown = ",".join(str(v) for v in default)
        else:
            shown = str(default).replace("%", "%%")
        return f"{text} (default: {shown})" if text else f"(default: {shown})"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (``<prog>: error: ... (see --help)``), exit 2."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {_one_line(message)} (see --help)", file=sys.stderr)
        sys.exit(2)


def make_parser(prog: str, description: str) -> Parser:
    """The parser of one CLI: one-line errors, defaults shown in ``--help``."""
    return Parser(prog=prog, description=description, formatter_class=HelpFormatter)


# --- validating argument types ---------------------------------------------------------------------

def _number(text: str, kind: Callable[[str], Any]) -> Any:
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"needs {'an integer' if kind is int else 'a number'}, got {text!r}") from None


def int_at_least(minimum: int) -> Callable[[str], int]:
    """Argument type: an integer ``>= minimum``."""
    def parse(text: str) -> int:
        value = _number(text, int)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


def positive_float(text: str) -> float:
    """Argument type: a finite number > 0."""
    value = _number(text, float)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """Argument type: a finite number >= 0 (tolerances)."""
    value = _number(text, float)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def open_unit_float(text: str) -> float:
    """Argument type: a number strictly inside (0, 1) (confidence levels)."""
    value = _number(text, float)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text!r}")
    return value


def eps_value(text: str) -> float:
    """Argument type: a perturbation radius parameter, finite and in [0, 1] (inputs are in [0, 1])."""
    value = _number(text, float)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a finite number in [0, 1], got {text!r}")
    return value


def eps_list(text: str) -> list:
    """Argument type: comma-separated radii, each finite and in [0, 1]."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"needs comma-separated numbers in [0, 1], got {text!r}")
    return [eps_value(part) for part in parts]


# --- shared options -------------------------------------------------------------------------------

def add_model(parser: argparse.ArgumentParser, required: bool = True, detail: str = "", nir: bool = False) -> None:
    """``--model FILE`` (refsnn HDF5 model, docs/FORMAT.md); with ``nir``, also a ``.nir`` graph and its
    ``--dt`` (the command loads it with ``refsnn.interop.nir.load_any_model``)."""
    kinds = "refsnn HDF5, docs/FORMAT.md, or a .nir graph with --dt" if nir else "refsnn HDF5, docs/FORMAT.md"
    parser.add_argument("--model", required=required, metavar="FILE",
                        help=f"{VOCABULARY['--model']} ({kinds}){detail}")
    if nir:
        parser.add_argument("--dt", type=positive_float, default=None, metavar="SECONDS",
                            help=f"{VOCABULARY['--dt']} (NIR neurons are continuous-time; forward Euler, "
                                 "docs/INTEROP.md), e.g. 1e-4 for snnTorch's exports; required for .nir only")


def add_dataset(parser: argparse.ArgumentParser, required: bool = False, default: Optional[str] = None,
                data_dir: bool = True) -> None:
    """``--dataset NAME`` (one of :data:`DATASETS`) and ``--data-dir FOLDER``."""
    parser.add_argument("--dataset", required=required, default=default, choices=DATASETS,
                        help=f"{VOCABULARY['--dataset']}")
    if data_dir:
        parser.add_argument("--data-dir", metavar="FOLDER",
                            help=f"{VOCABULARY['--data-dir']} (default: refsnn.data's lookup order, docs/DATA.md)")


def add_n(parser: argparse.ArgumentParser, default: Optional[int], detail: str = "") -> None:
    """``--n N``: the number of test samples, an integer >= 1."""
    parser.add_argument("--n", type=positive_int, default=default, metavar="N",
                        help=f"{VOCABULARY['--n']}{detail}")


def add_seed(parser: argparse.ArgumentParser, detail: str = "") -> None:
    """``--seed S`` with the one default of every CLI (0)."""
    parser.add_argument("--seed", type=int, default=SEED_DEFAULT, help=f"{VOCABULARY['--seed']}{detail}")


def add_T(parser: argparse.ArgumentParser, default: Optional[int], detail: str = "") -> None:
    """``--T T``: network time steps, an integer >= 1."""
    parser.add_argument("--T", dest="T", type=positive_int, default=default, metavar="T",
                        help=f"{VOCABULARY['--T']}{detail}")


def add_robust_T(parser: argparse.ArgumentParser, default: Optional[int] = DEFAULT_ROBUST_T, detail: str = "") -> None:
    """``--robust-T T'``: time steps of the input set the bounds cover (1..T, see :func:`check_robust_T`)."""
    parser.add_argument("--robust-T", dest="robust_T", type=positive_int, default=default, metavar="T'",
                        help=f"{VOCABULARY['--robust-T']} (1..T){detail}")


def add_eps(parser: argparse.ArgumentParser, default: Any, several: bool = False, detail: str = "") -> None:
    """``--eps``: a radius in [0, 1], or a comma list of them with ``several``."""
    parser.add_argument("--eps", type=eps_list if several else eps_value, default=default,
                        metavar="EPS[,EPS...]" if several else "EPS",
                        help=f"{VOCABULARY['--eps']} in [0, 1]{', comma-separated' if several else ''}{detail}")


def add_batch_size(parser: argparse.ArgumentParser, default: Optional[int], detail: str = "") -> None:
    """``--batch-size B``, an integer >= 1."""
    parser.add_argument("--batch-size", type=positive_int, default=default, metavar="B",
                        help=f"{VOCABULARY['--batch-size']}{detail}")


def add_out(parser: argparse.ArgumentParser, default_text: str, default: Optional[str] = None) -> None:
    """``--out FOLDER``: always a folder; ``default_text`` says where the default lies (under runs/)."""
    parser.add_argument("--out", default=default, metavar="FOLDER",
                        help=f"{VOCABULARY['--out']}, created if missing (default: {default_text})")


def add_time_limit(parser: argparse.ArgumentParser, default: float) -> None:
    """``--time-limit SECONDS`` of one MILP solve, > 0."""
    parser.add_argument("--time-limit", type=positive_float, default=default, metavar="SECONDS",
                        help=VOCABULARY["--time-limit"])


def add_atol(parser: argparse.ArgumentParser, default: float = 0.0, detail: str = "") -> None:
    """``--atol A``: finite and >= 0."""
    parser.add_argument("--atol", type=nonnegative_float, default=default,
                        help=f"{VOCABULARY['--atol']}, finite and >= 0{detail}")


def add_progress(parser: argparse.ArgumentParser, bars: bool = True) -> None:
    """``--quiet``, and ``--no-progress`` for commands that show progress bars (``bars``)."""
    parser.add_argument("--quiet", action="store_true", help=VOCABULARY["--quiet"])
    if bars:
        parser.add_argument("--no-progress", action="store_true", help=VOCABULARY["--no-progress"])


# --- old spellings -------------------------------------------------------------------------------

class _Deprecated(argparse.Action):
    """A hidden old spelling: stores into the new option's ``dest`` and says so once on stderr."""

    def __init__(self, option_strings, dest, new: str = "", convert=None, **kwargs):
        self.new, self.convert = new, convert
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        if self.convert is not None:
            try:
                values = self.convert(values)
            except argparse.ArgumentTypeError as error:
                parser.error(f"argument {option_string}: {error}")
        setattr(namespace, self.dest, values)


def add_deprecated(parser: argparse.ArgumentParser, old: str, new: str, dest: str,
                   type: Optional[Callable[[str], Any]] = None, flag: bool = False, const: Any = True) -> None:
    """Accept ``old`` as a hidden alias of ``new`` (same ``dest``, same validation ``type``); a ``flag``
    alias takes no value and stores ``const``."""
    if flag:
        parser.add_argument(old, dest=dest, nargs=0, action=_FlagDeprecated, new=new, convert=lambda _: const,
                            default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    else:
        parser.add_argument(old, dest=dest, action=_Deprecated, new=new, convert=type, default=argparse.SUPPRESS,
                            help=argparse.SUPPRESS)


class _FlagDeprecated(_Deprecated):
    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, self.convert(None))


def warn(prog: str, message: str) -> None:
    """One warning line on stderr."""
    print(f"{prog}: warning: {message}", file=sys.stderr)


# --- checks after parsing ------------------------------------------------------------------------

def check_robust_T(robust_T: Optional[int], T: Optional[int], what: str = "T") -> None:
    """``--robust-T`` must not exceed the network's time steps (``what`` says where T comes from)."""
    if robust_T is not None and T is not None and robust_T > T:
        raise CLIError(f"--robust-T {robust_T} exceeds {what} = {T}; the bounds cover at most the network's "
                       f"time steps (choose --robust-T in 1..{T})")


def model_time_steps(path: str) -> Optional[int]:
    """The training T stored in a model file's metadata, or None when the file does not say."""
    from .io import read_metadata

    try:
        config = read_metadata(path).get("config")
    except (ValueError, OSError):   # informative only; loading the model reports the real problem
        return None
    value = config.get("T") if isinstance(config, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def default_out(command: str, *parts: Any) -> Path:
    """``runs/<command>/<part>-<part>-...``: the default output folder of a run, named by its key arguments."""
    name = "-".join(str(p) for p in parts if p is not None and str(p) != "") or "default"
    return RUNS_ROOT / command / name.replace(os.sep, "_")


def out_folder(prog: str, value: Optional[str], default: Path, file_suffixes: Iterable[str] = ()) -> Path:
    """The ``--out`` folder: ``default`` when not given; a value ending in one of ``file_suffixes`` (the
    old file-valued spelling) becomes the folder of that name without its suffix, with a warning."""
    if value is None:
        return Path(default)
    path = Path(value)
    if path.suffix and path.suffix.lower() in tuple(file_suffixes) and not path.is_dir():
        folder = path.with_suffix("")
        warn(prog, f"--out {value} names a file, which is deprecated: --out is a folder; writing into {folder}/")
        return folder
    return path


def check_out_dir(path: Path, option: str = "--out") -> Path:
    """Refuse (CLIError) an output folder that exists as a file or cannot be created or written.

    Nothing is created: the first existing ancestor must be a writable folder. Call this before
    the long work starts so a bad ``--out`` fails in a second, not after an hour.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CLIError(f"{option} {path} exists and is not a folder; {option} names a folder")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise CLIError(f"{option} {path}: {probe} is a file, so the folder cannot be created there")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise CLIError(f"{option} {path}: {probe} is not writable; choose a folder you can write")
    return path


def check_out_file(path: Optional[str], option: str) -> Optional[Path]:
    """Refuse (CLIError) an output FILE option that names a folder or whose folder cannot be written."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise CLIError(f"{option} {path} is a folder; {option} names a file")
    check_out_dir(path.parent if str(path.parent) else Path("."), option=f"{option} {path}: its folder")
    return path


# --- main wrapper --------------------------------------------------------------------------------

#: What a user can cause: bad values and files (ValueError, refsnn.io.FormatError, CLIError), missing,
#: unreadable or unwritable paths, a full disk (OSError), an optional extra that is not installed.
USER_ERRORS = (ValueError, OSError, ImportError)


def _one_line(message: object) -> str:
    text = " ".join(str(message).split())
    return text or "unknown error"


def run_main(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorator of a CLI's ``main(argv=None) -> int``: user errors become one stderr line and exit code 2.

    Other exceptions (bugs) propagate with their traceback; set ``REFSNN_TRACEBACK=1`` to see the
    traceback of a user error too.
    """
    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapper(argv: Optional[Sequence[str]] = None) -> int:
            try:
                return main(argv)
            except USER_ERRORS as error:
                if os.environ.get("REFSNN_TRACEBACK"):
                    raise
                text = _one_line(error)
                if isinstance(error, OSError) and error.filename and str(error.filename) not in text:
                    text = f"{text}: {error.filename}"
                print(f"{prog}: error: {text}", file=sys.stderr)
                return 2
        wrapper.prog = prog  # type: ignore[attr-defined]
        return wrapper
    return decorate


__all__ = ["DATASETS", "SEED_DEFAULT", "VOCABULARY", "COMMAND_SPECIFIC", "CLIError", "HelpFormatter", "Parser",
           "make_parser",
           "int_at_least", "positive_int", "nonnegative_int", "positive_float", "nonnegative_float", "open_unit_float",
           "eps_value", "eps_list", "add_model", "add_dataset", "add_n", "add_seed", "add_T", "add_robust_T",
           "add_eps", "add_batch_size", "add_out", "add_time_limit", "add_atol", "add_progress", "add_deprecated",
           "warn", "check_robust_T", "model_time_steps", "default_out", "out_folder", "check_out_dir", "check_out_file",
           "run_main",
           "USER_ERRORS"]
