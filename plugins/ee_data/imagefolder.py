"""Image folders as a ``DatasetSource``: the VIPriors layout and plain ImageFolder trees.

Two layouts are recognised:

- VIPriors: ``root`` holds split folders (at least one of ``train``, ``val``, ``test``; every
  other non-hidden folder is a split too). A split folder holds class folders
  (``train/<class>/*``), or, when ``imgs/`` is its only subfolder, unlabelled images
  (``test/imgs/*``) with an optional ``labels.csv`` (columns ``image,label``; label = class
  folder name) next to ``imgs/`` that gives their labels for evaluation.
- plain ImageFolder: ``root`` holds class folders directly; it is read as one split, ``train``.

Class ids are the sorted class folder names of ``train`` (or, without a train split, of the first
labelled split); every other labelled split may use those folders or a subset of them.
Sample ids are paths relative to the folder that holds the class folders or the images, with
"/" separators: ``3/digit_00042.png`` in a labelled split, ``digit_00042.png`` in ``test/imgs``.

Construction reads only the folder structure, so it is cheap on big sets. ``samples(split)``
lists the split's files once (recursively, hidden files and folders ignored, sorted by id) and
checks each cheaply, so that a damaged image is found before a producer writes anything
rather than when training reaches it: the extension, the image header (``PIL.Image.open``),
then that the file is whole: a PNG's chunks and checksums are read (``Image.verify``, no
decoding), a JPEG must end with its end-of-image marker (one that does not, say one with
trailing data, is decoded), any other format is decoded. Files that fail are skipped with one
``SkippedFilesWarning`` per split and listed in ``source.skipped``; with ``strict=True`` they
raise ``DataError`` instead. A whole JPEG whose compressed data is damaged inside passes these
checks and fails later, in ``load_image``, with a ``DataError``.
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

from PIL import Image

from ensemble_engine import UNKNOWN_LABEL, DataError, Sample

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLIT_ORDER = ("train", "val", "test")
UNLABELLED_FOLDER = "imgs"
LABELS_FILE = "labels.csv"
_LISTED = 10  # skipped files named in a warning or error; the rest are counted


class SkippedFilesWarning(UserWarning):
    """Files in an image folder were skipped because they are not readable images."""


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _walk_files(folder: Path) -> list[Path]:
    """All non-hidden files under ``folder``, recursively."""
    found = []
    for current, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(current, f) for f in files if not f.startswith(".")]
    return found


def _is_readable_image(path: Path) -> bool:
    """Whether ``path`` is an image PIL reads whole, checked cheaply (see the module docstring):
    the header; then a PNG's chunks and their checksums (``verify``: read, not decoded), a
    JPEG's end-of-image marker (decoded only where it is missing); other formats are decoded."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return False
    try:
        with Image.open(path) as image:
            if image.format == "PNG":
                image.verify()
            elif image.format != "JPEG" or not _ends_with_jpeg_end(path):
                image.load()
        return True
    except (OSError, SyntaxError, ValueError, EOFError):
        return False


def _ends_with_jpeg_end(path: Path) -> bool:
    """Whether the file's last bytes (padding aside) are a JPEG end-of-image marker: a
    truncated JPEG lacks it (a JPEG with trailing data lacks it too, and is decoded)."""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 64))
        return f.read().rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")


def _listing(paths: list[Path], base: Path) -> str:
    names = [p.relative_to(base).as_posix() for p in paths[:_LISTED]]
    more = f" (+{len(paths) - _LISTED} more)" if len(paths) > _LISTED else ""
    return ", ".join(names) + more


class ImageFolderSource:
    """A ``DatasetSource`` over an image folder tree (see the module docstring for the layouts)."""

    def __init__(self, root: Path | str, *, strict: bool = False) -> None:
        self.root = Path(root).expanduser().absolute()
        self.strict = strict
        self.skipped: list[Path] = []
        self._folders: dict[str, Path] = {}  # split -> folder holding class folders or images
        self._labelled: dict[str, bool] = {}
        self._cache: dict[str, list[Sample]] = {}
        self._class_split = ""  # the split whose class folders name the classes
        self._find_splits()
        self.classes: list[str] = self._find_classes()

    def __repr__(self) -> str:
        return f"ImageFolderSource({str(self.root)!r}, splits={self.split_names()})"

    # --- structure ----------------------------------------------------------------------------

    def _find_splits(self) -> None:
        if not self.root.is_dir():
            raise DataError(f"dataset folder {self.root} does not exist; check the path")
        dirs = {p.name: p for p in _visible_dirs(self.root)}
        if not dirs:
            raise DataError(
                f"{self.root} holds no folders; expected train/<class>/... (VIPriors) "
                "or <class>/... (ImageFolder)"
            )
        if not dirs.keys() & set(SPLIT_ORDER):
            self._folders["train"], self._labelled["train"] = self.root, True
            return
        names = [n for n in SPLIT_ORDER if n in dirs] + sorted(dirs.keys() - set(SPLIT_ORDER))
        for name in names:
            folder = dirs[name]
            subdirs = [p.name for p in _visible_dirs(folder)]
            if subdirs == [UNLABELLED_FOLDER]:
                self._folders[name], self._labelled[name] = folder / UNLABELLED_FOLDER, False
            elif subdirs:
                self._folders[name], self._labelled[name] = folder, True
            else:
                raise DataError(
                    f"split folder {folder} has no class folders and no imgs/ folder; "
                    "add <class>/ folders of images or remove it"
                )
        if "train" in self._labelled and not self._labelled["train"]:
            raise DataError(f"{self.root / 'train'} must hold class folders, not only imgs/")

    def _find_classes(self) -> list[str]:
        labelled = [s for s in self._folders if self._labelled[s]]
        if not labelled:
            raise DataError(f"{self.root} has no split with class folders; add train/<class>/")
        self._class_split = labelled[0]
        classes = [p.name for p in _visible_dirs(self._folders[self._class_split])]
        if len(classes) < 2:
            raise DataError(
                f"{self._folders[self._class_split]} has {len(classes)} class folder(s) "
                f"{classes}; a classifier needs at least two: add class folders"
            )
        for split in labelled[1:]:
            extra = sorted({p.name for p in _visible_dirs(self._folders[split])} - set(classes))
            if extra:
                raise DataError(
                    f"split {split!r} has class folders that {self._class_split!r} lacks: "
                    f"{', '.join(extra)}; rename or remove them"
                )
        return classes

    def split_names(self) -> list[str]:
        """The splits present, in the order train, val, test, then the others sorted."""
        return list(self._folders)

    def split_folder(self, split: str) -> Path:
        """The folder that sample ids of ``split`` are relative to."""
        self._check_split(split)
        return self._folders[split]

    def is_labelled(self, split: str) -> bool:
        """Whether ``split`` has class folders (an unlabelled split may still have labels.csv)."""
        self._check_split(split)
        return self._labelled[split]

    def _check_split(self, split: str) -> None:
        if split not in self._folders:
            known = ", ".join(self._folders)
            raise DataError(f"{self.root} has no split {split!r}; known splits: {known}")

    # --- samples ------------------------------------------------------------------------------

    def samples(self, split: str) -> list[Sample]:
        """The split's readable images, sorted by sample id (listed once, then cached)."""
        self._check_split(split)
        if split not in self._cache:
            self._cache[split] = self._scan(split)
        return list(self._cache[split])

    def _scan(self, split: str) -> list[Sample]:
        folder = self._folders[split]
        if self._labelled[split]:
            index = {name: i for i, name in enumerate(self.classes)}
            pairs = [
                (path, index[class_dir.name])
                for class_dir in _visible_dirs(folder)
                for path in _walk_files(class_dir)
            ]
        else:
            files = _walk_files(folder)
            labels = self._read_labels(
                folder.parent / LABELS_FILE, {p.relative_to(folder).as_posix() for p in files}
            )
            pairs = [
                (p, labels.get(p.relative_to(folder).as_posix(), UNKNOWN_LABEL)) for p in files
            ]
        bad = sorted(p for p, _ in pairs if not _is_readable_image(p))
        if bad:
            message = (
                f"{len(bad)} file(s) in split {split!r} of {self.root} are not readable images: "
                f"{_listing(bad, folder)}"
            )
            if self.strict:
                raise DataError(f"{message}; remove them or open the folder without strict")
            self.skipped += bad
            warnings.warn(f"skipped {message}", SkippedFilesWarning, stacklevel=3)
        skip = set(bad)
        samples = sorted(
            (
                Sample(p.relative_to(folder).as_posix(), p, label)
                for p, label in pairs
                if p not in skip
            ),
            key=lambda s: s.sample_id,
        )
        if not samples:
            raise DataError(f"split {split!r} in {folder} holds no readable images; add images")
        if split == self._class_split:
            empty = sorted(set(self.classes) - {self.classes[s.label] for s in samples})
            if empty:
                raise DataError(
                    f"class folder(s) {', '.join(empty)} in {folder} hold no readable images; "
                    "add images or remove the folders"
                )
        return samples

    def _read_labels(self, path: Path, images: set[str]) -> dict[str, int]:
        """``image -> class index`` from an optional labels.csv; empty labels stay unknown.

        Every row must name one of ``images`` (ids relative to ``imgs/``), and an image listed
        twice must get the same label both times (a repeated identical row is accepted).
        """
        if not path.is_file():
            return {}
        index = {name: i for i, name in enumerate(self.classes)}
        try:
            with path.open(newline="", encoding="utf-8-sig") as f:  # a BOM is not a column
                reader = csv.DictReader(f)
                if not {"image", "label"} <= set(reader.fieldnames or ()):
                    raise DataError(f"{path} needs the columns image,label; fix its header row")
                rows = [
                    (reader.line_num, r["image"].strip(), (r["label"] or "").strip())
                    for r in reader
                ]
        except (UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"{path} is not a readable UTF-8 CSV ({exc}); fix the file") from None
        unknown = sorted({label for _, _, label in rows if label and label not in index})
        if unknown:
            raise DataError(
                f"{path} names labels that are not class folders: {', '.join(unknown[:_LISTED])}; "
                "fix the labels or add the class folders"
            )
        seen: dict[str, tuple[int, str]] = {}
        for line, image, label in rows:
            if image not in images:
                raise DataError(
                    f"{path} line {line}: image {image!r} is not in "
                    f"{path.parent / UNLABELLED_FOLDER}; remove the row or add the image "
                    "(names are relative to imgs/)"
                )
            first = seen.setdefault(image, (line, label))
            if first[1] != label:
                raise DataError(
                    f"{path} line {line}: image {image!r} is labelled {label!r} here and "
                    f"{first[1]!r} on line {first[0]}; keep one row per image"
                )
        return {image: index[label] for _, image, label in rows if label}
