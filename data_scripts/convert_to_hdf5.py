#!/usr/bin/env python
"""Convert MNIST / Fashion-MNIST / N-MNIST raw files into one HDF5 file per dataset.

Raw files are searched like refsnn.data.load_dataset does (--data-dir alone if given,
else $REFSNN_DATA_DIR, ../shared/data, ~/.refsnn/data, and for Fashion-MNIST also
/usr/share/datasets/fashion-mnist). MNIST and Fashion-MNIST files that are missing are
downloaded from their canonical sources (unless --no-download), and every IDX file is
checked against the MD5 of its decompressed content. N-MNIST is never downloaded (the
official archive has no stable direct link); its files are checked against a SHA256SUMS
file when the nmnist/ folder has one. When files are missing, the script prints exactly
which files to put where and exits with status 2.

The output <--out folder>/<name>.h5 is found by load_dataset before any raw files in the same
folder; the layout is documented in docs/DATA.md. Every array is stored with a Fletcher-32
checksum, the file is written atomically, and its SHA-256 is entered in <--out folder>/SHA256SUMS
(other lines of an existing manifest are kept), which load_dataset checks. Examples:

    python data_scripts/convert_to_hdf5.py mnist fmnist
    python data_scripts/convert_to_hdf5.py nmnist --T 20 --duration-us 300000
    python data_scripts/convert_to_hdf5.py all --data-dir /data --no-download
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from refsnn import cli, data  # noqa: E402
from refsnn.io import _create_dataset, atomic_write_h5, atomic_write_text  # noqa: E402
from refsnn.validation import MANIFEST_NAME, format_manifest, read_manifest, sha256_file  # noqa: E402

#: Canonical download locations, tried in order (MNIST's own site now often answers 403).
DOWNLOAD_URLS: dict[str, list[str]] = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "fmnist": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ],
}
NMNIST_SOURCE_PAGE = "https://www.garrickorchard.com/datasets/n-mnist"
SOURCE_TEXT = {
    "mnist": "MNIST, Y. LeCun, C. Cortes, C. J. C. Burges, CC BY-SA 3.0",
    "fmnist": "Fashion-MNIST, H. Xiao, K. Rasul, R. Vollgraf (Zalando Research), MIT licence",
    "nmnist": "N-MNIST, G. Orchard, A. Jayawant, G. Cohen, N. Thakor, "
    "Front. Neurosci. 9:437 (2015), CC BY-SA 4.0",
}
ALL_NAMES = ("mnist", "fmnist", "nmnist")
EXIT_MISSING = 2
EXIT_BAD_FILE = 3


class MissingFiles(Exception):
    """Raw files are absent; the message says what to put where."""


class BadFile(Exception):
    """A raw file failed a checksum or format check."""


def log(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------- MNIST / FMNIST


def download_idx(name: str, stem: str, folder: Path, timeout: float) -> Path:
    """Download ``<stem>.gz`` for ``name`` into ``folder``, verifying the content MD5."""
    expected = data.IDX_CONTENT_MD5[(name, stem)]
    errors = []
    for base in DOWNLOAD_URLS[name]:
        url = f"{base}{stem}.gz"
        log(f"  downloading {url}")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                payload = response.read()
            content = gzip.decompress(payload) if payload[:2] == b"\x1f\x8b" else payload
        except (urllib.error.URLError, socket.timeout, TimeoutError, OSError, EOFError) as exc:
            errors.append(f"{url}: {exc}")
            continue
        actual = hashlib.md5(content).hexdigest()
        if actual != expected:
            errors.append(f"{url}: content md5 {actual}, expected {expected}")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{stem}.gz"
        partial = target.with_suffix(".gz.part")
        partial.write_bytes(payload if payload[:2] == b"\x1f\x8b" else gzip.compress(payload))
        os.replace(partial, target)
        log(f"  saved {target} (md5 of content ok)")
        return target
    raise MissingFiles(f"could not download {stem}.gz:\n    " + "\n    ".join(errors))


def missing_idx_message(name: str, folder: Path, stems: list[str]) -> str:
    lines = [f"{name}: raw files missing. Put these files (gzipped or not) here:"]
    for stem in stems:
        lines.append(f"  {folder / (stem + '.gz')}   (content md5 {data.IDX_CONTENT_MD5[(name, stem)]})")
    lines.append("They are available from:")
    lines += [f"  {base}<file>.gz" for base in DOWNLOAD_URLS[name]]
    if name == "fmnist":
        lines.append(f"  or the Debian package dataset-fashion-mnist ({data.DEBIAN_FASHION_MNIST_DIR})")
    lines.append("Then run this script again (or pass --data-dir to point at another folder).")
    return "\n".join(lines)


def locate_idx(
    name: str, data_dir: Path | None, download: bool, download_root: Path, timeout: float
) -> dict[str, tuple[Path, Path]]:
    """(images, labels) per split, downloading what is missing when allowed."""
    folder = download_root / data.DATASET_FOLDERS[name]
    found: dict[str, tuple[Path, Path]] = {}
    missing: list[tuple[str, str]] = []
    for split, stems in data.IDX_FILE_STEMS.items():
        hit = data.locate_dataset(name, split, data_dir, raw_only=True)
        if hit is not None:
            found[split] = (hit["images"], hit["labels"])
        else:
            missing += [(split, stem) for stem in stems]
    if not missing:
        return found
    if not download:
        raise MissingFiles(missing_idx_message(name, folder, [stem for _, stem in missing]))
    try:
        for split, stem in missing:
            existing = data.find_idx_file(folder, stem)
            if existing is None:
                download_idx(name, stem, folder, timeout)
    except MissingFiles as exc:
        raise MissingFiles(
            f"{exc}\n(offline?)\n" + missing_idx_message(name, folder, [s for _, s in missing])
        ) from None
    for split, (image_stem, label_stem) in data.IDX_FILE_STEMS.items():
        if split not in found:
            found[split] = (data.find_idx_file(folder, image_stem), data.find_idx_file(folder, label_stem))
    return found


def verify_idx(name: str, paths: dict[str, tuple[Path, Path]]) -> dict[str, str]:
    """Content MD5 of every IDX file; BadFile unless each equals the canonical one."""
    digests = {}
    for pair in paths.values():
        for path in pair:
            stem = path.name.removesuffix(".gz")
            expected = data.IDX_CONTENT_MD5[(name, stem)]
            actual = data.content_md5(path)
            if actual != expected:
                raise BadFile(
                    f"{path}: content md5 {actual}, expected {expected}; the file is not the "
                    f"canonical {name} file (re-download it, or pass --skip-verify)"
                )
            digests[str(path)] = actual
    return digests


def write_idx_hdf5(name: str, paths: dict[str, tuple[Path, Path]], out: Path, compression: str | None) -> None:
    def write(h5) -> None:
        write_common_attrs(h5, name)
        for split, (images_path, labels_path) in paths.items():
            images, labels = data._load_idx_pair(images_path, labels_path)
            group = h5.create_group(split)
            _create_dataset(group, "images", images, compression=compression)
            _create_dataset(group, "labels", labels, compression=compression)
            group.attrs["images_file"] = str(images_path)
            group.attrs["labels_file"] = str(labels_path)
            group.attrs["images_content_md5"] = data.content_md5(images_path)
            group.attrs["labels_content_md5"] = data.content_md5(labels_path)
            log(f"  {split}: images {images.shape} uint8, labels {labels.shape}")

    atomic_write_h5(out, write)


# --------------------------------------------------------------------------- N-MNIST


def locate_nmnist(data_dir: Path | None, download_root: Path) -> dict[str, Path]:
    found = {}
    for split in data.SPLITS:
        hit = data.locate_dataset("nmnist", split, data_dir, raw_only=True)
        if hit is not None:
            found[split] = hit["split_dir"]
    missing = [s for s in data.SPLITS if s not in found]
    if missing:
        folder = download_root / data.DATASET_FOLDERS["nmnist"]
        lines = ["nmnist: raw files missing (N-MNIST is not downloaded automatically). Put:"]
        for split in missing:
            lines.append(f"  {folder / data.NMNIST_SPLIT_FOLDERS[split]}/<label>/<id>.bin")
        lines.append(
            f"  (the original ATIS .bin files, as in the official archive, {NMNIST_SOURCE_PAGE},"
        )
        lines.append("   unzipped, with label folders 0..9; optional SHA256SUMS beside Train/ and Test/)")
        lines.append("Then run this script again (or pass --data-dir to point at another folder).")
        raise MissingFiles("\n".join(lines))
    return found


def verify_nmnist(split_dirs: dict[str, Path]) -> str:
    """Check the .bin files against <nmnist>/SHA256SUMS when present; returns a summary."""
    root = next(iter(split_dirs.values())).parent
    sums_file = root / "SHA256SUMS"
    if not sums_file.is_file():
        log(f"  no {sums_file}; sha256 check skipped (format checks still run)")
        return "no SHA256SUMS"
    expected = {}
    for line in sums_file.read_text().splitlines():
        if line.strip():
            digest, rel = line.split(maxsplit=1)
            expected[rel.strip().lstrip("*")] = digest
    checked = 0
    for split_dir in split_dirs.values():
        paths, _, _ = data.list_nmnist_files(split_dir)
        for path in paths:
            rel = path.relative_to(root).as_posix()
            if rel not in expected:
                raise BadFile(f"{path}: not listed in {sums_file}")
            if hashlib.sha256(path.read_bytes()).hexdigest() != expected[rel]:
                raise BadFile(f"{path}: sha256 differs from {sums_file}; copy the file again")
            checked += 1
    log(f"  sha256 ok for {checked} files ({sums_file})")
    return f"sha256 of {checked} files matched {sums_file}"


def write_nmnist_hdf5(
    split_dirs: dict[str, Path], out: Path, T: int, duration_us: int | None,
    compression: str | None, verification: str,
) -> None:
    def write(h5) -> None:
        write_common_attrs(h5, "nmnist")
        h5.attrs["T"] = T
        h5.attrs["duration_us"] = 0 if duration_us is None else duration_us
        h5.attrs["binning"] = (
            "T equal half-open bins over [0, duration); bin = floor(t_us * T / duration); "
            + ("duration = each recording's last timestamp + 1" if duration_us is None
               else f"duration = {duration_us} us fixed, later events outside the window")
            + "; frame = 1 if >= 1 event of that polarity at that pixel in the bin"
        )
        h5.attrs["frame_axes"] = "images[n, t, channel, y, x]; channel 0 = OFF (polarity 0), 1 = ON"
        h5.attrs["verification"] = verification
        for split, split_dir in split_dirs.items():
            paths, labels, ids = data.list_nmnist_files(split_dir)
            per_file = [data.read_nmnist_bin(p) for p in paths]
            offsets = np.concatenate([[0], np.cumsum([len(e) for e in per_file])]).astype(np.int64)
            events = np.concatenate(per_file)
            frames = data.bin_recordings(events, offsets, T, duration_us)
            group = h5.create_group(split)
            _create_dataset(group, "images", frames, compression=compression,
                            chunks=(1,) + frames.shape[1:] if compression else None)
            _create_dataset(group, "labels", labels.astype(np.uint8), compression=compression)
            _create_dataset(group, "ids", ids.astype(np.int64))
            _create_dataset(group, "events", events, compression=compression)
            _create_dataset(group, "event_offsets", offsets)
            group.attrs["source_dir"] = str(split_dir)
            log(f"  {split}: {len(paths)} recordings, {len(events)} events, frames {frames.shape}")

    atomic_write_h5(out, write)


def read_out_manifest(out_dir: Path) -> dict[str, str]:
    """The entries of ``<out_dir>/SHA256SUMS`` (empty when there is none); a malformed one is refused
    before anything is converted, never overwritten."""
    path = out_dir / MANIFEST_NAME
    return read_manifest(path) if path.is_file() else {}


def record_in_manifest(out: Path, entries: dict[str, str]) -> Path:
    """Enters ``out``'s SHA-256 in ``SHA256SUMS`` beside it, keeping the other ``entries``.

    load_dataset refuses a file of a folder with a manifest that does not list it, so the other
    data-set files already in the folder and not listed (converted before manifests existed) are
    entered as they are now, each with a notice."""
    entries = {**entries, out.name: sha256_file(out)}
    for name in ALL_NAMES:
        earlier = out.parent / f"{name}.h5"
        if earlier.name not in entries and earlier.is_file():
            entries[earlier.name] = sha256_file(earlier)
            log(f"  note: {MANIFEST_NAME} now also lists {earlier} as it is now (written earlier, not checked here)")
    return atomic_write_text(out.parent / MANIFEST_NAME, format_manifest(entries))


# --------------------------------------------------------------------------- common


def write_common_attrs(h5, name: str) -> None:
    h5.attrs["format"] = data.HDF5_FORMAT
    h5.attrs["dataset"] = name
    h5.attrs["source"] = SOURCE_TEXT[name]
    h5.attrs["created_by"] = "refsnn data_scripts/convert_to_hdf5.py"
    h5.attrs["created_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def convert(name: str, args: argparse.Namespace) -> Path:
    data_dir = args.data_dir
    download_root = (data_dir or data.HOME_DATA_DIR).expanduser()
    out_dir = (args.out_dir or data_dir or data.HOME_DATA_DIR).expanduser()
    out = out_dir / f"{name}.h5"
    compression = None if args.compression == "none" else args.compression
    log(f"{name}:")
    read_out_manifest(out_dir)  # a malformed manifest is refused before the work, not after it
    if name == "nmnist":
        split_dirs = locate_nmnist(data_dir, download_root)
        for split, split_dir in split_dirs.items():
            log(f"  {split}: {split_dir}")
        verification = "skipped (--skip-verify)" if args.skip_verify else verify_nmnist(split_dirs)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_nmnist_hdf5(split_dirs, out, args.T, args.duration_us, compression, verification)
    else:
        paths = locate_idx(name, data_dir, not args.no_download, download_root, args.timeout)
        for split, (images_path, labels_path) in paths.items():
            log(f"  {split}: {images_path}, {labels_path}")
        if not args.skip_verify:
            verify_idx(name, paths)
            log("  content md5 ok for all 4 files")
        out_dir.mkdir(parents=True, exist_ok=True)
        write_idx_hdf5(name, paths, out, compression)
    manifest_path = record_in_manifest(out, read_out_manifest(out_dir))
    log(f"  wrote {out} ({out.stat().st_size / 2**20:.1f} MiB), its SHA-256 in {manifest_path}")
    return out


PROG = "python data_scripts/convert_to_hdf5.py"


def build_parser() -> argparse.ArgumentParser:
    """The parser of this script (shared vocabulary of ``refsnn.cli``)."""
    parser = cli.make_parser(PROG, __doc__)
    parser.formatter_class = _RawHelpFormatter
    parser.add_argument("datasets", nargs="+", choices=ALL_NAMES + ("all",), help="what to convert")
    parser.add_argument("--data-dir", type=Path, metavar="FOLDER",
                        help=f"{cli.VOCABULARY['--data-dir']} to search alone for raw files "
                        "(<dir>/mnist, <dir>/fashion-mnist, <dir>/nmnist); downloads go here too "
                        "(default: refsnn.data's lookup order)")
    # dest out_dir: where load_dataset looks, not a run folder, so no runs/ default here.
    parser.add_argument("--out", dest="out_dir", type=Path, metavar="FOLDER",
                        help=f"{cli.VOCABULARY['--out']}, created if missing; <name>.h5 goes there "
                        "(default: --data-dir, else ~/.refsnn/data, where load_dataset finds it)")
    parser.add_argument("--no-download", action="store_true", help="never touch the network")
    parser.add_argument("--timeout", type=cli.positive_float, default=10.0, help="seconds per download attempt")
    cli.add_T(parser, 10, detail=": N-MNIST time bins stored as frames")
    parser.add_argument("--duration-us", type=cli.positive_int, default=None,
                        help="N-MNIST fixed window in us (default: each recording's last timestamp + 1)")
    parser.add_argument("--compression", choices=("none", "gzip", "lzf"), default="none",
                        help="HDF5 filter (default none: fastest to load, ~55 MB per dataset; "
                        "gzip: ~4x smaller, slower to load; lzf: between, h5py-only)")
    parser.add_argument("--skip-verify", action="store_true", help="skip MD5/SHA256 checks")
    cli.add_deprecated(parser, "--out-dir", "--out", "out_dir", Path)
    return parser


class _RawHelpFormatter(argparse.RawDescriptionHelpFormatter, cli.HelpFormatter):
    """The module docstring as written, and every option's default."""


@cli.run_main(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out_dir is not None:
        cli.check_out_dir(args.out_dir.expanduser())
    names = ALL_NAMES if "all" in args.datasets else tuple(dict.fromkeys(args.datasets))
    status = 0
    for name in names:
        try:
            convert(name, args)
        except MissingFiles as exc:
            print(f"\n{exc}\n", file=sys.stderr)
            status = max(status, EXIT_MISSING)
        except (BadFile, ValueError) as exc:
            print(f"\nerror: {exc}\n", file=sys.stderr)
            status = max(status, EXIT_BAD_FILE)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
