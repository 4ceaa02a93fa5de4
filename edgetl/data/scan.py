"""Image folder -> splits -> arrays or tf.data.

Two folder layouts are understood:

- ``class-folders``: ``root/<class>/**/<image>``; the images are split into train/val/test here,
  seeded and stratified per class.
- ``split-folders``: ``root/train/<class>/...`` plus optional ``root/val/<class>/...`` (also
  ``validation/`` or ``valid/``) and ``root/test/<class>/...``. Those splits are used as given.
  Without ``val/``, ``val_split`` of each training class is carved out of ``train/``; without
  ``test/``, the test split is empty (it is never carved out of ``train/``).

Files are decoded by content, never by extension, with Pillow: any mode (CMYK, 16-bit, grayscale,
palette, alpha) becomes 8-bit RGB, transparency is composited on white, the EXIF orientation is
applied, animated files give their first frame. Images are resized to exactly (height, width) with
bilinear (antialiased) resampling: the aspect ratio is NOT preserved, images are stretched.

TensorFlow is imported only inside the functions that build tf.data pipelines or Keras layers.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import random
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgetl.core.errors import DataError, UsageError, did_you_mean

if TYPE_CHECKING:  # only for annotations: importing edgetl.data must not import TensorFlow
    import tensorflow as tf

log = logging.getLogger("edgetl")

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
     ".pbm", ".pnm"}
)

SPLITS = ("train", "val", "test")
_SPLIT_DIR_NAMES = {"train": ("train",), "val": ("val", "validation", "valid"), "test": ("test",)}
# Folders that are never classes: zip archives made on macOS carry these.
_IGNORED_DIRS = frozenset({"__MACOSX"})
_MAX_WARNINGS = 20  # per scan: beyond this, unreadable files are summarised, not listed one by one
_PROBE_SIZE = (32, 32)


@dataclass(frozen=True)
class Item:
    """One image: its path relative to the data root (POSIX separators) and its class index."""

    path: str
    label: int


@dataclass
class DataSplits:
    """The images of a data folder, split into train/val/test, with the class names."""

    root: str
    class_names: list[str]
    train: list[Item] = field(default_factory=list)
    val: list[Item] = field(default_factory=list)
    test: list[Item] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    layout: str = "class-folders"

    def split(self, name: str) -> list[Item]:
        """Return the items of split `name` ('train', 'val' or 'test')."""
        if name not in SPLITS:
            raise UsageError(f"unknown split '{name}'. Allowed: {', '.join(SPLITS)}.")
        return getattr(self, name)

    def fingerprint(self) -> str:
        """Return a sha256 hex digest over the class names and each (split, path, label, size, mtime_ns).

        Any added, removed, moved, relabelled or rewritten image changes it, so a resumed run can tell
        whether its data is still the data it started with. The root itself is left out: moving the
        whole folder does not change the data.
        """
        h = hashlib.sha256()
        h.update(json.dumps([self.layout, list(self.class_names)]).encode("utf-8"))
        for split in SPLITS:
            for item in self.split(split):
                try:
                    st = os.stat(os.path.join(self.root, item.path))
                    size, mtime = st.st_size, st.st_mtime_ns
                except OSError:
                    size, mtime = -1, -1  # a missing file must change the digest, not crash
                h.update(f"{split}\0{item.path}\0{item.label}\0{size}\0{mtime}\n".encode())
        return h.hexdigest()

    def to_manifest(self) -> dict[str, Any]:
        """Return a JSON-ready dict that `from_manifest` turns back into equal DataSplits."""
        out: dict[str, Any] = {"root": self.root, "layout": self.layout, "class_names": list(self.class_names)}
        for split in SPLITS:
            out[split] = [[it.path, it.label] for it in self.split(split)]
        out["skipped"] = [[p, r] for p, r in self.skipped]
        out["fingerprint"] = self.fingerprint()
        return out

    @classmethod
    def from_manifest(cls, d: dict[str, Any]) -> DataSplits:
        """Rebuild DataSplits from `to_manifest` output.

        Raises:
            DataError: a key is missing or a value has the wrong shape.
        """
        try:
            class_names = [str(c) for c in d["class_names"]]
            splits = {}
            for split in SPLITS:
                items = [Item(str(p), int(lab)) for p, lab in d.get(split, [])]
                bad = [it for it in items if not 0 <= it.label < len(class_names)]
                if bad:
                    raise ValueError(f"label {bad[0].label} of '{bad[0].path}' is outside 0..{len(class_names) - 1}")
                splits[split] = items
            skipped = [(str(p), str(r)) for p, r in d.get("skipped", [])]
            return cls(root=str(d["root"]), class_names=class_names, skipped=skipped,
                       layout=str(d.get("layout", "class-folders")), **splits)
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as exc:
            raise DataError(f"the data section of the manifest is invalid ({exc}). "
                            "Re-run train to write a new run folder.") from None

    def counts(self) -> dict[str, list[int]]:
        """Return, per split, the number of images of each class (indexed like class_names)."""
        out = {}
        for split in SPLITS:
            c = [0] * len(self.class_names)
            for it in self.split(split):
                c[it.label] += 1
            out[split] = c
        return out


# ----------------------------------------------------------------------------------------------
# Decoding


class _Unreadable(Exception):
    """A file that is not a usable image; the message is the reason, in a few words."""


def _max_pixels() -> int | None:
    # Follow Pillow's own limit so a user who raised Image.MAX_IMAGE_PIXELS gets the same here.
    return Image.MAX_IMAGE_PIXELS


def _stat_regular(path: str) -> os.stat_result:
    """Stat `path`, translating link and permission problems into reasons."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _Unreadable("broken symlink" if os.path.islink(path) else "file not found") from None
    except PermissionError:
        raise _Unreadable("permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Unreadable("symlink loop") from None
        raise _Unreadable(f"cannot stat ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        # Opening a FIFO or a device would block or read forever.
        raise _Unreadable("not a regular file")
    if st.st_size == 0:
        raise _Unreadable("empty file (0 bytes)")
    return st


def _describe(exc: BaseException) -> str:
    """Turn a Pillow/OS exception raised while decoding into a short reason."""
    if isinstance(exc, _Unreadable):
        return str(exc)
    # The warning arrives as an exception when warnings are turned into errors (python -W error).
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning | MemoryError):
        return f"too large ({exc})" if str(exc) else "too large"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image (format not recognised)"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return "symlink loop"
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "truncated" in msg.lower() or isinstance(exc, EOFError):
        return f"truncated or corrupt ({msg})"
    return f"corrupt image ({type(exc).__name__}: {msg})"


def _check_size(im: Image.Image) -> None:
    limit = _max_pixels()
    w, h = im.size
    if w <= 0 or h <= 0:
        raise _Unreadable(f"invalid size {w}x{h}")
    if limit is not None and w * h > limit:
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; decoding it could exhaust memory.
        raise _Unreadable(f"too large ({w}x{h} = {w * h} pixels, the limit is {limit})")


def _scale16(arr: np.ndarray) -> np.ndarray:
    """Map 16-bit values 0..65535 onto 0..255, rounding (v * 255 / 65535 == v / 257)."""
    a = np.clip(arr.astype(np.int64), 0, 65535)
    return ((a + 128) // 257).astype(np.uint8)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparent pixels become white."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode.startswith("I;16") or mode == "I":
        # convert("L") would clip 16-bit values at 255 instead of scaling them.
        return Image.fromarray(_scale16(np.asarray(im)), "L").convert("RGB")
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        a = np.nan_to_num(a)
        if a.size and float(a.max()) <= 1.0:
            a = a * 255.0  # float images are usually 0..1
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError as exc:
        raise _Unreadable(f"unsupported colour mode {mode} ({exc})") from None


def _decode(path: str, image_size: tuple[int, int] | None, *, probe: bool = False) -> np.ndarray | None:
    """Decode `path` to an RGB uint8 array of `image_size` (height, width), or just check it (probe).

    Raises _Unreadable with the reason when the file cannot be used.
    """
    _stat_regular(path)
    try:
        with Image.open(path) as im:
            _check_size(im)
            if probe and im.format == "PNG":
                # verify() walks every chunk and checks its CRC: catches truncation without inflating pixels.
                im.verify()
                return None
            if im.format == "JPEG" and image_size is not None:
                # Let libjpeg decode at 1/2..1/8 scale; both sides stay >= the target whatever the EXIF rotation.
                side = max(image_size)
                im.draft(None, (side, side))
            try:
                out = ImageOps.exif_transpose(im)
            except Exception as exc:  # noqa: BLE001 - a broken EXIF block must not cost the image
                log.debug("ignoring unreadable EXIF orientation of '%s': %s", path, exc)
                im.load()
                out = im
            out = _to_rgb(out)
            if image_size is not None:
                h, w = image_size
                if out.size != (w, h):
                    out = out.resize((w, h), Image.Resampling.BILINEAR)
            if probe:
                return None
            arr = np.array(out, dtype=np.uint8)
    except _Unreadable:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on corrupt data; all mean "unreadable"
        raise _Unreadable(_describe(exc)) from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise _Unreadable(f"decoded to unexpected shape {arr.shape}")
    return arr


def _check_image_size(image_size: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise UsageError(f"image size must be (height, width), got {image_size!r}.") from None
    if h <= 0 or w <= 0:
        raise UsageError(f"image size must be positive, got {h}x{w}. Use for example --image-size 224.")
    return h, w


def load_image(path: str | os.PathLike[str], image_size: tuple[int, int]) -> np.ndarray:
    """Decode one image file to RGB and resize it.

    Args:
        path: the image file; its format is read from its content, not its extension.
        image_size: (height, width) of the result. The image is stretched to it (no aspect
            preservation, no cropping), bilinear with antialiasing.

    Returns:
        A (height, width, 3) uint8 RGB array.

    Raises:
        DataError: the file is not a readable image (the message names it and says why).
    """
    size = _check_image_size(image_size)
    path = os.fspath(path)
    try:
        arr = _decode(path, size)
    except _Unreadable as exc:
        raise DataError(f"cannot read image '{path}': {exc}. Remove or replace the file.") from None
    if arr is None:  # only a probe returns None; keeps the type checker and the contract honest
        raise RuntimeError("internal error: image decoder returned nothing")
    return arr


def probe_image(path: str | os.PathLike[str]) -> str | None:
    """Check cheaply that `path` is a decodable image; return None if it is, else the reason."""
    try:
        _decode(os.fspath(path), _PROBE_SIZE, probe=True)
    except _Unreadable as exc:
        return str(exc)
    return None


def _default_workers() -> int:
    return max(1, min(16, (os.cpu_count() or 1)))


def load_images(
    root: str | os.PathLike[str],
    items: Sequence[Item],
    image_size: tuple[int, int],
    *,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Decode many images in threads (Pillow releases the GIL while decoding).

    Args:
        root: the data folder the item paths are relative to.
        items: the images to load, in the order of the result.
        image_size: (height, width) of each image.
        workers: threads to use; default: the number of CPUs (at most 16).
        on_progress: called as on_progress(done, total) from the calling thread after each image.

    Returns:
        An (N, height, width, 3) uint8 array.

    Raises:
        DataError: an image cannot be read (named in the message).
    """
    h, w = _check_image_size(image_size)
    root = os.fspath(root)
    n = len(items)
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    if n == 0:
        return out
    nthreads = workers if workers is not None else _default_workers()
    if nthreads < 1:
        raise UsageError(f"workers must be at least 1, got {workers}.")
    done = 0
    with ThreadPoolExecutor(max_workers=min(nthreads, n)) as pool:
        futures = {pool.submit(load_image, os.path.join(root, it.path), (h, w)): i for i, it in enumerate(items)}
        try:
            for fut in as_completed(futures):
                out[futures[fut]] = fut.result()
                done += 1
                if on_progress is not None:
                    on_progress(done, n)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return out


# ----------------------------------------------------------------------------------------------
# Scanning


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
    with ThreadPoolExecutor(max_workers=min(_default_workers() * 2, len(paths))) as pool:
        # I/O waits and Pillow decoding both release the GIL, so more threads than cores help here.
        reasons = pool.map(lambda p: probe_image(os.path.join(root, *p.split("/"))), paths)
        for p, reason in zip(paths, reasons, strict=True):
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


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)  # round() rounds halves to even: 2.5 -> 2 would surprise


def _split_class(paths: list[str], val_split: float, test_split: float, seed: int, key: str
                 ) -> tuple[list[str], list[str], list[str]]:
    """Shuffle one class's paths (seeded by seed and class) and cut val, test and train from it.

    Each class keeps at least one training image; val and test get round(n * fraction) images,
    reduced (the larger one first) when that would leave no training image.
    """
    n = len(paths)
    n_val = _round_half_up(n * val_split)
    n_test = _round_half_up(n * test_split)
    while n_val + n_test > n - 1 and n_val + n_test > 0:
        if n_test > n_val:
            n_test -= 1
        else:
            n_val -= 1
    # A generator per class: adding a class does not reshuffle the others. str seeds are stable across runs.
    shuffled = sorted(paths)
    random.Random(f"{seed}/{key}").shuffle(shuffled)
    return shuffled[n_val + n_test:], shuffled[:n_val], shuffled[n_val:n_val + n_test]


def _stratified(per_class: list[list[str]], val_split: float, test_split: float, seed: int,
                class_names: list[str]) -> tuple[list[Item], list[Item], list[Item]]:
    parts = [list(_split_class(p, val_split, test_split, seed, name)) for p, name in zip(per_class, class_names,
                                                                                           strict=True)]
    # Rounding per class can leave a whole split empty on small data (2 classes x 2 images at val 0.2).
    # When the fraction asks for images and some class can spare a second training image, move one.
    for which, frac in ((1, val_split), (2, test_split)):
        if frac > 0 and not any(p[which] for p in parts):
            donors = [i for i, p in enumerate(parts) if len(p[0]) >= 2]
            if donors:
                i = max(donors, key=lambda j: (len(parts[j][0]), -j))
                parts[i][which].append(parts[i][0].pop())
    out: tuple[list[Item], list[Item], list[Item]] = ([], [], [])
    for label, p in enumerate(parts):
        for k in range(3):
            out[k].extend(Item(path, label) for path in p[k])
    for lst in out:
        lst.sort(key=lambda it: it.path)
    return out


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
        train, val, test = _stratified(per_class, val_split, test_split, seed, names)
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
        out["train"], carved, _ = _stratified(per_class_train, val_split, 0.0, seed, names)
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


# ----------------------------------------------------------------------------------------------
# TensorFlow


def augmentation_layers(seed: int) -> list:
    """Return fresh Keras 3 augmentation layers: horizontal flip, rotation, zoom and contrast (10%).

    They expect float images in 0..255 and are active only when called with training=True.
    """
    import keras

    return [
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.1, seed=seed + 1),
        keras.layers.RandomZoom(0.1, seed=seed + 2),
        keras.layers.RandomContrast(0.1, seed=seed + 3),
    ]


def make_dataset(
    root: str | os.PathLike[str],
    items: Sequence[Item],
    image_size: tuple[int, int],
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 42,
    augment: bool = False,
    cache: bool = False,
) -> tf.data.Dataset:
    """Build a tf.data pipeline of (float32 images 0..255 (b, H, W, 3), int32 labels (b,)).

    Images are decoded by load_image (Pillow, in parallel threads), so they equal load_image's
    output exactly. The order is the items' order unless shuffle (reshuffled each epoch, seeded).
    cache keeps decoded images in memory after the first epoch (augmentation still varies).
    An unreadable file stops iteration with an error naming it: scan the folder first.
    """
    import tensorflow as tf

    h, w = _check_image_size(image_size)
    if int(batch_size) < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}. Use for example --batch-size 32.")
    root = os.fspath(root)
    n = len(items)
    # Bytes, not str: file names that are not valid UTF-8 survive the round trip through TensorFlow.
    paths = tf.constant([os.fsencode(os.path.join(root, it.path)) for it in items], dtype=tf.string)
    labels = tf.constant([it.label for it in items], dtype=tf.int32)
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))

    def _load(path: bytes) -> np.ndarray:
        return load_image(os.fsdecode(path), (h, w))

    def _decode_fn(path, label):
        img = tf.numpy_function(_load, [path], tf.uint8, stateful=False)
        img.set_shape((h, w, 3))
        return img, label

    if shuffle and not cache:
        ds = ds.shuffle(max(n, 1), seed=seed, reshuffle_each_iteration=True)  # shuffling paths is cheap
    ds = ds.map(_decode_fn, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        ds = ds.cache()
        if shuffle:
            ds = ds.shuffle(max(n, 1), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(int(batch_size))
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    if augment:
        layers = augmentation_layers(seed)

        def _augment(x, y):
            for layer in layers:
                x = layer(x, training=True)
            return x, y

        ds = ds.map(_augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
