"""Check a downloaded dataset against the layout its reader expects: ``python -m xtc_ext.data.prepare``.

None of the public releases the project reads needs a conversion (docs/data.md): each is read as its
archive extracts. What can go wrong is the download itself (an interrupted archive, a split folder
missing, the wrong folder given as ``--data-root``), which training would only report at the first
unreadable sample, or never (a short split trains on fewer images without a word). This program builds
every split of the release through the dataset's reader, as training does, and compares its size with
the release's (``DatasetSpec.release_sizes``); with ``--read-all`` it also reads every sample, which
finds truncated or corrupt files (the reader's message names the file).

Usage::

    python -m xtc_ext.data.prepare --dataset nyuv2 --data-root /data/nyuv2 [--read-all]

Exit codes: 0 the folder holds the release; 1 a split differs from it, or a file cannot be read; 2 bad
arguments (an unknown dataset, a dataset without a public release, a ``--data-root`` that is not a folder).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from ..registry import DATASETS, DatasetSpec, PathLike, get_dataset

__all__ = ["SplitCheck", "check_release", "main"]


@dataclass(frozen=True)
class SplitCheck:
    """The result of one split: ``found`` samples (None when the reader refused the folder, see
    ``error``), the release's ``expected`` count, and the first ``error`` (a reader message) or None."""

    split: str
    found: Optional[int]
    expected: int
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        """True when the split has the release's size and no error."""
        return self.error is None and self.found == self.expected

    def line(self) -> str:
        """One line for the terminal: ``train: 795 samples (release: 795) ok``."""
        if self.found is None:
            return f"{self.split}: not readable (release: {self.expected}): {self.error}"
        verdict = "ok" if self.ok else (self.error or "differs from the release")
        return f"{self.split}: {self.found} samples (release: {self.expected}) {verdict}"


def check_release(spec: DatasetSpec, root: PathLike, read_all: bool = False) -> List[SplitCheck]:
    """Build every split of ``spec.release_sizes`` from ``root`` with the dataset's reader and compare.

    The splits are built as training builds them (every task of the dataset, its first class count,
    its default size, no augmentation), so a folder that passes is one that ``python -m xtc_ext.train
    --dataset NAME --data-root ROOT`` reads.

    Args:
        spec: a registered dataset with a public release (``spec.release_sizes`` non-empty).
        root: the folder given as ``--data-root``.
        read_all: also read every sample (``dataset[i]``); the first failure is the split's ``error``.

    Returns:
        One :class:`SplitCheck` per split, in ``release_sizes`` order.

    Raises:
        ValueError: ``spec`` has no public release (``release_sizes`` empty).
    """
    if not spec.release_sizes:
        raise ValueError(f"dataset {spec.name!r} has no public release to check against")
    results = []
    for split, expected in spec.release_sizes.items():
        try:
            data = spec.build(root, split, classes=spec.classes[0], size=spec.default_size, augment=False,
                              normalize=False, depth_scaling="auto", tasks=spec.tasks)
        except (OSError, ValueError) as e:  # a missing folder or split file, an empty split: named by the reader
            results.append(SplitCheck(split, None, expected, str(e)))
            continue
        results.append(SplitCheck(split, len(data), expected, _read_every_sample(data) if read_all else None))
    return results


def _read_every_sample(data) -> Optional[str]:
    """The first reader error over ``data[0..N-1]``, or None."""
    for i in range(len(data)):
        try:
            data[i]
        except (OSError, ValueError) as e:
            return f"sample {i}: {e}"
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The program (module docstring); returns the exit code."""
    releases = [name for name, spec in DATASETS.items() if spec.release_sizes]
    parser = argparse.ArgumentParser(
        prog="python -m xtc_ext.data.prepare",
        description="Check a downloaded dataset folder against its public release (docs/data.md).")
    parser.add_argument("--dataset", required=True, choices=releases, help="the --dataset value of training")
    parser.add_argument("--data-root", required=True, help="the folder the release was extracted to")
    parser.add_argument("--read-all", action="store_true",
                        help="also read every sample (slow: the whole dataset), to find corrupt files")
    args = parser.parse_args(argv)
    if not Path(args.data_root).is_dir():
        parser.error(f"--data-root {args.data_root} is not a folder")
    results = check_release(get_dataset(args.dataset), args.data_root, args.read_all)
    for r in results:
        print(f"{args.dataset} {r.line()}")
    return 0 if all(r.ok for r in results) else 1
