#!/usr/bin/env python
"""Build the stratified MNIST subset shipped in refsnn/_data/mnist_subset.npz.

Picks, with a fixed seed, the same number of images of every digit from the real MNIST
IDX files (default 200 per class from train, 50 per class from test), keeps them in
ascending original-index order, and writes images (uint8), labels (uint8) and the
0-based original indices with np.savez_compressed, plus a README with the attribution
and the full index lists.

    python data_scripts/make_mnist_subset.py                 # finds MNIST like load_dataset
    python data_scripts/make_mnist_subset.py --mnist-dir /path/to/mnist --out refsnn/_data

writes ``mnist_subset.npz`` and ``README.md`` into the ``--out`` folder (default
``runs/data/mnist-subset``; ``--out refsnn/_data`` replaces the shipped files).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from refsnn import cli, data  # noqa: E402

DEFAULT_SEED = 20_150_437  # fixed; any change gives a different subset
DEFAULT_OUT = Path("runs/data/mnist-subset")
SUBSET_NAME = "mnist_subset.npz"
PROG = "python data_scripts/make_mnist_subset.py"


def locate_mnist(mnist_dir: Path | None) -> dict[str, tuple[Path, Path]]:
    """(images, labels) IDX paths per split, from --mnist-dir or the load_dataset search."""
    found: dict[str, tuple[Path, Path]] = {}
    for split, (image_stem, label_stem) in data.IDX_FILE_STEMS.items():
        if mnist_dir is not None:
            images = data.find_idx_file(mnist_dir, image_stem)
            labels = data.find_idx_file(mnist_dir, label_stem)
            if images is None or labels is None:
                raise cli.CLIError(f"{mnist_dir} lacks {image_stem}[.gz] or {label_stem}[.gz]")
        else:
            hit = data.locate_dataset("mnist", split)
            if hit is None or hit["kind"] != "idx":
                raise cli.CLIError("raw MNIST IDX files not found; pass --mnist-dir. "
                                   + data._not_found_message("mnist", split, None))
            images, labels = hit["images"], hit["labels"]
        found[split] = (images, labels)
    return found


def verify_md5(paths: list[Path]) -> None:
    """Exit unless every file's decompressed content has the canonical MNIST MD5."""
    for path in paths:
        stem = path.name.removesuffix(".gz")
        expected = data.IDX_CONTENT_MD5[("mnist", stem)]
        actual = data.content_md5(path)
        if actual != expected:
            raise cli.CLIError(f"{path}: content md5 {actual}, expected {expected} (canonical MNIST)")


def stratified_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` indices of each label 0..9 drawn without replacement, sorted ascending."""
    chosen = []
    for digit in range(data.NUM_CLASSES):
        candidates = np.flatnonzero(labels == digit)
        if candidates.size < per_class:
            raise cli.CLIError(f"only {candidates.size} images of digit {digit}, need {per_class}")
        chosen.append(rng.choice(candidates, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int32)


def write_readme(path: Path, arrays: dict[str, np.ndarray], seed: int, sources: dict) -> None:
    counts = {
        split: np.bincount(arrays[f"{split}_labels"], minlength=10).tolist()
        for split in ("train", "test")
    }
    lines = [
        "# Embedded MNIST subset (`mnist_subset.npz`)",
        "",
        "A small, class-stratified subset of the real MNIST database, shipped so that examples and",
        'tests run without downloads: `refsnn.data.load_dataset("mnist-subset", split)`.',
        "",
        "## Attribution and licence",
        "",
        "MNIST is by Yann LeCun, Corinna Cortes and Christopher J. C. Burges",
        "(http://yann.lecun.com/exdb/mnist/; Y. LeCun, L. Bottou, Y. Bengio, P. Haffner,",
        '"Gradient-based learning applied to document recognition", Proc. IEEE 86(11), 1998),',
        "licensed CC BY-SA 3.0",
        "(https://creativecommons.org/licenses/by-sa/3.0/). This subset is a verbatim selection of",
        "its images and labels (no pixel was changed) and is distributed under the same licence.",
        "",
        "## Content",
        "",
        "| array | dtype | shape | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for key, value in arrays.items():
        meaning = {
            "images": "pixels 0..255, exactly as in the IDX file",
            "labels": "digit 0..9",
            "indices": "0-based index of the image in the original IDX file of that split",
        }[key.split("_", 1)[1]]
        lines.append(f"| `{key}` | {value.dtype} | {list(value.shape)} | {meaning} |")
    lines += [
        "",
        f"Per class, train: {counts['train']}; test: {counts['test']}.",
        "Samples are in ascending original-index order (classes interleaved as in MNIST).",
        "",
        "## How it was made",
        "",
        "`python data_scripts/make_mnist_subset.py` (in the refsnn repository): it reads the",
        "MNIST IDX files, checks the MD5 of their decompressed content, then for each digit draws",
        f"the images without replacement with `numpy.random.default_rng({seed})` and",
        "`Generator.choice` (train split first, then test, digits 0..9 in order) and sorts the",
        "chosen indices. Source files (content MD5):",
        "",
    ]
    for source_path, md5 in sources.items():
        lines.append(f"- `{Path(source_path).name}`: `{md5}`")
    lines += [
        "",
        "NumPy does not promise the same random stream across versions, so the index lists",
        "below (also stored in the .npz) are the authoritative record of the selection.",
        "",
        "## Indices (0-based)",
        "",
    ]
    for split in ("train", "test"):
        indices = arrays[f"{split}_indices"].tolist()
        lines.append(f"### {split} ({len(indices)})")
        lines.append("")
        lines.append("```")
        for start in range(0, len(indices), 20):
            lines.append(" ".join(str(i) for i in indices[start : start + 20]))
        lines.append("```")
        lines.append("")
    path.write_text("\n".join(lines))


def build_parser() -> argparse.ArgumentParser:
    """The parser of this script (shared vocabulary of ``refsnn.cli``)."""
    parser = cli.make_parser(PROG, __doc__.split("\n\n")[0])
    parser.add_argument("--mnist-dir", type=Path, metavar="FOLDER",
                        help="folder with the 4 MNIST IDX files, .gz or raw (default: found like load_dataset)")
    cli.add_out(parser, f"{DEFAULT_OUT}; writes {SUBSET_NAME} and README.md")
    # Not --seed: this number is part of the shipped subset's identity, not a run's random seed.
    parser.add_argument("--subset-seed", type=int, default=DEFAULT_SEED,
                        help=f"selection seed of the subset (default: {DEFAULT_SEED}, which gives the shipped subset)")
    parser.add_argument("--train-per-class", type=cli.positive_int, default=200, help="training images per digit")
    parser.add_argument("--test-per-class", type=cli.positive_int, default=50, help="test images per digit")
    parser.add_argument("--skip-md5", action="store_true", help="do not check the canonical MD5s")
    cli.add_deprecated(parser, "--seed", "--subset-seed", "subset_seed", int)
    return parser


@cli.run_main(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    folder = cli.check_out_dir(cli.out_folder(PROG, None if args.out is None else str(args.out), DEFAULT_OUT,
                                              file_suffixes=(".npz",)))
    out = folder / SUBSET_NAME

    paths = locate_mnist(args.mnist_dir)
    if not args.skip_md5:
        verify_md5([p for pair in paths.values() for p in pair])
    rng = np.random.default_rng(args.subset_seed)
    arrays: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
        images_path, labels_path = paths[split]
        images, labels = data.read_idx(images_path), data.read_idx(labels_path)
        indices = stratified_indices(labels, per_class, rng)
        arrays[f"{split}_images"] = images[indices]
        arrays[f"{split}_labels"] = labels[indices]
        arrays[f"{split}_indices"] = indices
        for path in (images_path, labels_path):
            sources[str(path)] = data.content_md5(path)

    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    write_readme(out.with_name("README.md"), arrays, args.subset_seed, sources)
    size_kb = out.stat().st_size / 1024
    print(f"wrote {out} ({size_kb:.0f} KiB) and {out.with_name('README.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
