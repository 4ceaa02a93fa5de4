"""Walking an image folder and splitting it: scan_folder (training) and scan_eval_folder (evaluation).

Two folder layouts are understood:

- ``class-folders``: ``root/<class>/**/<image>``; the images are split into train/val/test here,
  seeded and stratified per class.
- ``split-folders``: ``root/train/<class>/...`` plus optional ``root/val/<class>/...`` (also
  ``validation/`` or ``valid/``) and ``root/test/<class>/...``. Those splits are used as given.
  Without ``val/``, ``val_split`` of each training class is carved out of ``train/``; without
  ``test/``, the test split is empty (it is never carved out of ``train/``).

Every candidate file is probed (edgetl.data.decode); unreadable ones are skipped and listed.
"""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor

from edgetl.core.errors import DataError, UsageError, did_you_mean
from edgetl.data.decode import default_workers, probe_image
from edgetl.data.splits import SPLITS, DataSplits, Item, stratified_split

log = logging.getLogger("edgetl")

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
     ".pbm", ".pnm"}
)

_SPLIT_DIR_NAMES = {"train": ("train",), "val": ("val", "validation", "valid"), "test": ("test",)}
# Folders that are never classes: zip archives made on macOS carry these.
_IGNORED_DIRS = frozenset({"__MACOSX"})
_PROBE_CHUNK = 2048  # files probed per batch of thread tasks
_MAX_WARNINGS = 20  # per scan: beyond this, unreadable files are summarised, not listed one by one


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _list_dir(path: str) -> list[os.DirEntry[str]]:
    with os.scandir(path) as it:
        return sorted(it, key=lambda e: e.name)


def _entry_is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows symlinks: a linked class folder is a class folder
    except OSError:
        return False  # symlink loop or unreadable link: treated as a file and reported if it looks like an image


def _subfolders(path: str) -> list[str]:
    """Names of the non-hidden subfolders of `path`, sorted."""
    return [e.name for e in _list_dir(path)
            if not _is_hidden(e.name) and e.name not in _IGNORED_DIRS and _entry_is_dir(e)]


def _loose_files(path: str) -> list[str]:
    return [e.name for e in _list_dir(path) if not _is_hidden(e.name) and not _entry_is_dir(e)]


def _walk_images(root: str, rel_dir: str) -> tuple[list[str], list[str]]:
    """List candidate image files under root/rel_dir, recursively, following symlinks safely.

    Returns (image paths, other file paths), relative to root with POSIX separators. Each real
    folder is visited once, so symlink loops end instead of hanging, and a link to the data folder
    (or above it) is not followed: it would pull every other class's images into this one.
    """
    images: list[str] = []
    others: list[str] = []
    visited: set[tuple[int, int]] = set()
    root_real = os.path.realpath(root)
    stack = [rel_dir]
    while stack:
        rel = stack.pop()
        abs_dir = os.path.join(root, *rel.split("/"))
        try:
            st = os.stat(abs_dir)
            key = (st.st_dev, st.st_ino)
            if key in visited:
                log.warning("not following '%s': it leads back to a folder already scanned (symlink loop)", rel)
                continue
            visited.add(key)
            entries = _list_dir(abs_dir)
        except OSError as exc:
            log.warning("cannot list folder '%s': %s; its images are left out", rel, exc.strerror or exc)
            continue
        for e in entries:
            if _is_hidden(e.name):
                continue
            rel_path = f"{rel}/{e.name}"
            if _entry_is_dir(e):
                if e.is_symlink():
                    target = os.path.realpath(e.path)
                    if root_real == target or root_real.startswith(target.rstrip(os.sep) + os.sep):
                        log.warning("not following '%s': it links to the data folder or above it (a loop)", rel_path)
                        continue
                stack.append(rel_path)
            elif os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS:
                images.append(rel_path)
            else:
                others.append(rel_path)
    return sorted(images), sorted(others)


def _check_fraction(name: str, value: float, upper_inclusive: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a number, got {value!r}.") from None
    ok = 0.0 <= v <= 1.0 if upper_inclusive else 0.0 <= v < 1.0
    if not ok or math.isnan(v):
        allowed = "between 0 and 1" if upper_inclusive else "at least 0 and less than 1"
        raise UsageError(f"{name} must be {allowed}, got {value}. For example {name} 0.1.")
    return v


def _probe_all(root: str, paths: list[str]) -> dict[str, str]:
    """Probe candidate files in threads; return {relative path: reason} for the unreadable ones."""
    bad: dict[str, str] = {}
    if not paths:
        return bad
    with ThreadPoolExecutor(max_workers=min(default_workers() * 2, len(paths))) as pool:
        # I/O waits and Pillow decoding both release the GIL, so more threads than cores help here.
        # A chunk at a time: pool.map makes every task's future up front, about 1 KB per file.
        for lo in range(0, len(paths), _PROBE_CHUNK):
            chunk = paths[lo:lo + _PROBE_CHUNK]
            reasons = pool.map(lambda p: probe_image(os.path.join(root, *p.split("/"))), chunk)
            for p, reason in zip(chunk, reasons, strict=True):
                if reason is not None:
                    bad[p] = reason
    return bad


def _report_bad(bad: dict[str, str], total: int, max_bad_fraction: float) -> list[tuple[str, str]]:
    """Log unreadable files; raise when there are too many of them."""
    skipped = sorted(bad.items())
    for path, reason in skipped[:_MAX_WARNINGS]:
        log.warning("skipping unreadable image '%s': %s", path, reason)
    if len(skipped) > _MAX_WARNINGS:
        log.warning("skipping %d more unreadable images (all are listed in the run manifest)",
                    len(skipped) - _MAX_WARNINGS)
    if total and len(skipped) > max_bad_fraction * total:
        examples = ", ".join(f"'{p}' ({r})" for p, r in skipped[:3])
        raise DataError(
            f"{len(skipped)} of {total} image files ({len(skipped) / total:.1%}) are unreadable, more than "
            f"--max-bad-fraction {max_bad_fraction:g} allows; for example {examples}. "
            "Fix or remove them, or raise --max-bad-fraction."
        )
    return skipped


def _no_images_error(root: str, class_dir: str, others: list[str]) -> DataError:
    where = os.path.join(root, class_dir)
    if others:
        exts = sorted({os.path.splitext(p)[1].lower() or "(none)" for p in others})
        return DataError(
            f"class folder '{where}' has no readable images (its {len(others)} files have other extensions: "
            f"{', '.join(exts[:5])}). Convert them to JPEG or PNG ({', '.join(sorted(IMAGE_EXTENSIONS)[:6])}...), "
            "or remove the folder."
        )
    return DataError(f"class folder '{where}' has no readable images. Add images to it or remove the folder.")


def _find_split_dirs(root: str) -> dict[str, str] | None:
    """Return {split: folder name} when root has the split-folders layout, else None."""
    subs = set(_subfolders(root))
    if "train" not in subs or not _subfolders(os.path.join(root, "train")):
        return None
    found: dict[str, str] = {}
    for split, names in _SPLIT_DIR_NAMES.items():
        present = [n for n in names if n in subs]
        if len(present) > 1:
            raise DataError(f"data folder '{root}' has both {' and '.join(repr(n + '/') for n in present)}. "
                            "Keep one of them.")
        if present:
            found[split] = present[0]
    return found


def _match_class_names(found: list[str], wanted: list[str] | None, root: str) -> list[str]:
    if wanted is None:
        return found
    wanted = [str(c) for c in wanted]
    if sorted(found) != sorted(wanted) or len(set(wanted)) != len(wanted):
        missing = sorted(set(wanted) - set(found))
        extra = sorted(set(found) - set(wanted))
        raise DataError(
            f"the class folders of '{root}' do not match the expected classes (missing: {missing or 'none'}, "
            f"unexpected: {extra or 'none'}). Use a folder with exactly the classes {wanted}."
        )
    return wanted  # the caller's order: labels must keep meaning what they meant


def _check_root(root: str | os.PathLike[str]) -> str:
    path = os.path.abspath(os.fspath(root))
    if not os.path.exists(path):
        raise DataError(f"data folder '{os.fspath(root)}' does not exist. Pass a folder with one subfolder per class.")
    if not os.path.isdir(path):
        raise DataError(f"data path '{os.fspath(root)}' is not a folder. "
                        "Pass a folder with one subfolder per class (data/cats/*.jpg, data/dogs/*.jpg).")
    if not os.access(path, os.R_OK | os.X_OK):
        raise DataError(f"data folder '{os.fspath(root)}' cannot be read (permission denied). Fix its permissions.")
    return path


def _class_folder_names(root: str, shown: str) -> list[str]:
    """The class folders of a class-folders layout (at least two), warning about loose files."""
    classes = _subfolders(root)
    loose = [f for f in _loose_files(root) if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    if loose and classes:
        log.warning("ignoring %d image files directly in '%s' (e.g. '%s'): images must be inside a class folder",
                    len(loose), shown, loose[0])
    if not classes:
        hint = f" (found {len(loose)} images directly in it)" if loose else ""
        raise DataError(f"data folder '{shown}' has no class folders{hint}. "
                        f"Put each class's images in its own subfolder: {shown}/<class>/image.jpg.")
    if len(classes) == 1:
        raise DataError(f"data folder '{shown}' needs at least 2 classes, found 1 ('{classes[0]}'). "
                        "Add a subfolder of images for each other class.")
    return classes


def scan_folder(
    root: str | os.PathLike[str],
    *,
    val_split: float = 0.2,
    test_split: float = 0.1,
    seed: int = 42,
    max_bad_fraction: float = 0.05,
    class_names: list[str] | None = None,
) -> DataSplits:
    """Find the images of a data folder, check that they decode, and split them.

    Class-folders layout: each class is shuffled (seeded by `seed` and the class name) and cut into
    val (round(n * val_split)), test (round(n * test_split)) and train (the rest, never empty).
    Classes with very few images may give val or test nothing; a whole val or test split is empty
    only when no class has a second training image to spare. Split-folders layout: the folders
    are used as they are; val_split only applies when there is no val/ folder, test_split never.

    Hidden files and folders (name starting with '.') are ignored, and so are files whose extension
    is not in IMAGE_EXTENSIONS. Files with an image extension that do not decode are skipped, logged
    and listed in `skipped`.

    Args:
        root: the data folder.
        val_split, test_split: fractions of each class for validation and test (0 <= x < 1, sum < 1).
        seed: seeds the split; the same folder and seed give the same split.
        max_bad_fraction: the largest fraction of unreadable image files tolerated.
        class_names: when given (resuming, fine-tuning), the folder must hold exactly these classes,
            and labels follow this order instead of the sorted one.

    Returns:
        The DataSplits.

    Raises:
        UsageError: invalid fractions.
        DataError: missing or unusable folder, fewer than 2 classes, a class without readable
            images, or too many unreadable files.
    """
    val_split = _check_fraction("--val-split", val_split)
    test_split = _check_fraction("--test-split", test_split)
    if val_split + test_split >= 1.0:
        raise UsageError(f"--val-split {val_split:g} + --test-split {test_split:g} = {val_split + test_split:g}; "
                         "the sum must be less than 1 so that training keeps images.")
    max_bad_fraction = _check_fraction("--max-bad-fraction", max_bad_fraction, upper_inclusive=True)
    shown = os.fspath(root)
    path = _check_root(root)
    split_dirs = _find_split_dirs(path)

    if split_dirs is None:
        layout = "class-folders"
        folders = _class_folder_names(path, shown)
        names = _match_class_names(folders, class_names, shown)
        listing = {name: _walk_images(path, name) for name in names}
        candidates = [p for imgs, _ in listing.values() for p in imgs]
        bad = _probe_all(path, candidates)
        skipped = _report_bad(bad, len(candidates), max_bad_fraction)
        per_class = []
        for name in names:
            good = [p for p in listing[name][0] if p not in bad]
            if not good:
                raise _no_images_error(shown, name, listing[name][1])
            per_class.append(good)
        train, val, test = stratified_split(per_class, val_split, test_split, seed, names)
        return DataSplits(root=path, class_names=names, train=train, val=val, test=test, skipped=skipped,
                          layout=layout)

    layout = "split-folders"
    ignored = [s for s in _subfolders(path) if s not in split_dirs.values()]
    if ignored:
        log.warning("ignoring folders %s in '%s': with a train/ folder, only train/, val/ and test/ are read",
                    ignored, shown)
    loose = [f for f in _loose_files(path) if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    if loose:
        log.warning("ignoring %d image files directly in '%s' (e.g. '%s')", len(loose), shown, loose[0])
    train_dir = split_dirs["train"]
    train_classes = _class_folder_names(os.path.join(path, train_dir), f"{shown}/{train_dir}")
    names = _match_class_names(train_classes, class_names, f"{shown}/{train_dir}")
    listing: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    for split, dirname in split_dirs.items():
        split_classes = _subfolders(os.path.join(path, dirname)) if split != "train" else names
        unknown = sorted(set(split_classes) - set(names))
        if unknown:
            raise DataError(
                f"class folders {unknown} in '{shown}/{dirname}' are not in '{shown}/{train_dir}'."
                f"{did_you_mean(unknown[0], names)} Every class needs training images: rename or remove them."
            )
        for name in split_classes:
            listing[(split, name)] = _walk_images(path, f"{dirname}/{name}")
    candidates = [p for imgs, _ in listing.values() for p in imgs]
    bad = _probe_all(path, candidates)
    skipped = _report_bad(bad, len(candidates), max_bad_fraction)
    label = {n: i for i, n in enumerate(names)}
    out: dict[str, list[Item]] = {s: [] for s in SPLITS}
    per_class_train: list[list[str]] = []
    for name in names:
        imgs, others = listing[("train", name)]
        good = [p for p in imgs if p not in bad]
        if not good:
            raise _no_images_error(shown, f"{train_dir}/{name}", others)
        per_class_train.append(good)
    for (split, name), (imgs, _) in listing.items():
        if split != "train":
            out[split].extend(Item(p, label[name]) for p in imgs if p not in bad)
    if "val" in split_dirs:
        out["train"] = sorted((Item(p, i) for i, ps in enumerate(per_class_train) for p in ps), key=lambda it: it.path)
    else:
        out["train"], carved, _ = stratified_split(per_class_train, val_split, 0.0, seed, names)
        out["val"] = carved
    for s in SPLITS:
        out[s].sort(key=lambda it: it.path)
    return DataSplits(root=path, class_names=names, skipped=skipped, layout=layout, **out)


def scan_eval_folder(
    root: str | os.PathLike[str],
    model_class_names: list[str],
    *,
    max_bad_fraction: float = 0.05,
) -> tuple[list[Item], list[str]]:
    """Find labelled evaluation images and map their folder names onto a model's classes.

    `root` holds one folder per class, or has the split-folders layout, in which case its test/
    folder is used. The folder may hold a subset of the model's classes (even one).

    Args:
        root: the evaluation folder.
        model_class_names: the model's classes; labels are indices into this list.
        max_bad_fraction: the largest fraction of unreadable image files tolerated.

    Returns:
        (items, class folder names found), item paths relative to `root`.

    Raises:
        DataError: missing folder, no class folders, a class folder the model does not know, a split
            layout without test/, no readable images, or too many unreadable files.
    """
    max_bad_fraction = _check_fraction("--max-bad-fraction", max_bad_fraction, upper_inclusive=True)
    shown = os.fspath(root)
    path = _check_root(root)
    split_dirs = _find_split_dirs(path)
    prefix = ""
    if split_dirs is not None:
        if "test" not in split_dirs:
            raise DataError(f"data folder '{shown}' has train/ but no test/ folder to evaluate on. "
                            f"Pass the folder to evaluate itself, e.g. '{shown}/{split_dirs.get('val', 'val')}'.")
        prefix = split_dirs["test"] + "/"
    folder = os.path.join(path, prefix) if prefix else path
    classes = _subfolders(folder)
    if not classes:
        raise DataError(f"data folder '{shown}/{prefix}' has no class folders. "
                        "Put each class's images in a subfolder named like the model's class.")
    index = {n: i for i, n in enumerate(model_class_names)}
    unknown = [c for c in classes if c not in index]
    if unknown:
        raise DataError(
            f"class folders {unknown} in '{shown}' are not classes of the model.{did_you_mean(unknown[0], index)} "
            f"The model knows: {', '.join(model_class_names)}. Rename or remove those folders."
        )
    listing = {c: _walk_images(path, prefix + c) for c in classes}
    candidates = [p for imgs, _ in listing.values() for p in imgs]
    bad = _probe_all(path, candidates)
    _report_bad(bad, len(candidates), max_bad_fraction)
    items = sorted((Item(p, index[c]) for c, (imgs, _) in listing.items() for p in imgs if p not in bad),
                   key=lambda it: it.path)
    if not items:
        raise DataError(f"data folder '{shown}' has no readable images in its class folders. Add images.")
    return items, classes
