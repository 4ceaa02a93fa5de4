"""The model card: a README.md that says, for a person, what a run (or its exported files) is.

rundir.finish_run writes RUN/README.md for train and optimize; export writes the same card beside
the exported files with the export table added, and refreshes the run's own card with it. The card
is rendered from the manifest and metrics.json alone, so it can always be written again.
"""

from __future__ import annotations

from pathlib import Path, PureWindowsPath
from typing import Any

from edgetl import __version__
from edgetl.model.backbones import backbone_label

CARD_FILE = "README.md"
SPLITS = ("train", "val", "test")
# The training options a reader needs to judge or repeat a run (the manifest keeps every one).
_OPTIONS = ("image_size", "preprocessing", "epochs", "batch_size", "lr", "dropout", "augment", "class_weights",
            "label_smoothing", "fine_tune_layers", "fine_tune_epochs", "fine_tune_lr", "feature_cache", "seed")
_EXPORT_COLUMNS = (("file", "file"), ("format", "format"), ("mode", "mode"), ("size_mb", "MB"),
                   ("accuracy", "accuracy"), ("drop", "drop"), ("agreement", "agreement with Keras"),
                   ("latency_ms", "ms / image"), ("status", "verified"))


def render(manifest: dict[str, Any], metrics: dict[str, Any] | None, *,
           exports: list[dict[str, Any]] | None = None, export_dir: str | None = None) -> str:
    """The card as Markdown.

    Args:
        manifest: the run's manifest.
        metrics: the run's metrics.json (per split: classification_metrics), or None.
        exports: rows of an export report (ExportRow.to_dict()), when the run was exported.
        export_dir: where those files are.
    """
    metrics = metrics or {}
    names = list(manifest.get("class_names") or [])
    bb = manifest.get("backbone") or {}
    inp = manifest.get("input") or {}
    size = (inp.get("image_size") or ["?"])[0]
    parent = manifest.get("parent") or {}
    what = (f"optimized ({parent.get('method')}) from run `{folder_name(parent.get('run'))}`" if parent.get("run")
            else "trained")
    out = [f"# {_backbone_name(bb)} image classifier: {len(names)} classes", "",
           f"An image classifier {what} by edgetl {_version(manifest)} with transfer learning from a frozen "
           f"pretrained backbone; finished {manifest.get('finished', 'not yet')}.", "",
           f"Classes: {', '.join(f'`{n}`' for n in names)}.", ""]
    out += ["## Backbone and weights", ""]
    out += _table(["", ""], [["kind", bb.get("kind")], ["backbone", f"`{shareable(bb.get('name'))}`"],
                             ["weights", shareable(bb.get("weights"))], ["alpha", bb.get("alpha")],
                             ["feature width", bb.get("feature_dim")]])
    tuned = "; its top layers were then fine-tuned" if (manifest.get("config") or {}).get("fine_tune_layers") else ""
    out += ["", f"The backbone stays frozen while the head trains{tuned}.", ""]
    out += ["## Intended input", ""]
    norm = inp.get("normalization")
    pre = inp.get("preprocessing")
    if norm:
        pre = f"{pre} (mean {_nums(norm.get('mean'))}, std {_nums(norm.get('std'))} in 0..255 units)"
    out += [f"RGB images, {size}x{size} pixels, NHWC, values 0..255 as float32 (the full-integer files take uint8 "
            f"or int8). The preprocessing ({pre}) is inside the model: do not normalise before calling it. "
            f"Resize: {inp.get('resize', 'bilinear')}.", ""]
    out += _data_section(manifest, names)
    out += _options_section(manifest)
    out += _metrics_section(metrics, names)
    out += _export_section(exports, export_dir)
    out += ["## Versions", ""]
    out += _table(["package", "version"], [[k, v] for k, v in (manifest.get("versions") or {}).items()])
    out += ["", f"Card written by edgetl {__version__}. The run's manifest.json holds every option and file; "
            "`edgetl inspect` reads any exported file.", ""]
    return "\n".join(out)


def write_card(folder: str | Path, manifest: dict[str, Any], metrics: dict[str, Any] | None, *,
               exports: list[dict[str, Any]] | None = None, export_dir: str | None = None) -> Path:
    """Write the card as folder/README.md (atomically) and return its path."""
    from edgetl.core.fileio import write_text

    path = Path(folder) / CARD_FILE
    write_text(path, render(manifest, metrics, exports=exports, export_dir=export_dir))
    return path


def folder_name(path: object) -> str:
    """A folder or file by its name only: the card leaves the machine, and this machine's paths have no place in it."""
    if not path:
        return "?"
    # PureWindowsPath splits on both separators, so a run trained on Windows is named alike.
    return PureWindowsPath(str(path)).name or str(path)


def shareable(value: Any) -> Any:
    """A value as the card shows it: a local path (a backbone or weights file, with its 'hub:' or 'kerashub:'
    prefix kept) by its last part; names, URLs and numbers as they are."""
    if not isinstance(value, str) or "://" in value or ("/" not in value and "\\" not in value):
        return value
    prefix, sep, rest = value.partition(":")
    if sep and prefix in ("hub", "kerashub"):
        return f"{prefix}:{folder_name(rest)}"
    return folder_name(value)


def _version(manifest: dict[str, Any]) -> str:
    return str((manifest.get("versions") or {}).get("edgetl", __version__))


def _backbone_name(bb: dict[str, Any]) -> str:
    name = backbone_label(str(bb.get("kind")), str(shareable(bb.get("name")) or "?"))
    alpha = bb.get("alpha")
    return f"{name} alpha {alpha}" if alpha else name


def _data_section(manifest: dict[str, Any], names: list[str]) -> list[str]:
    data = manifest.get("data") or {}
    counts = {s: [0] * len(names) for s in SPLITS}
    for split in SPLITS:
        for _path, label in data.get(split) or []:
            if 0 <= int(label) < len(names):
                counts[split][int(label)] += 1
    rows = [[f"`{n}`", *(counts[s][i] for s in SPLITS), sum(counts[s][i] for s in SPLITS)]
            for i, n in enumerate(names)]
    rows.append(["all", *(sum(counts[s]) for s in SPLITS), sum(sum(counts[s]) for s in SPLITS)])
    out = ["## Data", "", f"Images from the folder `{folder_name(data.get('root'))}` "
           f"({data.get('layout', 'class folders')}); "
           f"{len(data.get('skipped') or [])} file(s) skipped as unreadable.", ""]
    out += _table(["class", *SPLITS, "total"], rows)
    cw = manifest.get("class_weights") or {}
    if cw.get("weights"):
        out += ["", f"Class weights ({cw.get('source')}): "
                + ", ".join(f"`{k}` {float(v):.3g}" for k, v in cw["weights"].items()) + "."]
    return [*out, ""]


def _options_section(manifest: dict[str, Any]) -> list[str]:
    cfg = manifest.get("config") or {}
    training = manifest.get("training") or {}
    inp = manifest.get("input") or {}
    resolved = {"image_size": (inp.get("image_size") or [None])[0], "preprocessing": inp.get("preprocessing")}
    tuned = cfg.get("fine_tune_layers") is not None
    rows = [[k, cfg.get(k) if cfg.get(k) is not None else resolved.get(k)] for k in _OPTIONS
            if k in cfg and (tuned or not k.startswith("fine_tune_"))]
    if training:
        rows.append(["epochs run", ", ".join(f"{k} {v}" for k, v in (training.get("epochs_run") or {}).items())])
        rows.append(["head trained on cached features", training.get("feature_cache")])
    opt = manifest.get("optimize") or {}
    rows += [[f"optimize {k}", v] for k, v in opt.items() if isinstance(v, (str, int, float, bool))]
    if not rows:
        return []
    return ["## Options that matter", "", *_table(["option", "value"], rows), ""]


def _metrics_section(metrics: dict[str, Any], names: list[str]) -> list[str]:
    splits = [s for s in ("val", "test") if metrics.get(s)]
    if not splits:
        return ["## Accuracy", "", "No held-out images: the run has no validation or test split.", ""]
    keys = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro-F1"),
            ("top_k", "top-k"), ("samples", "images"))
    rows = [[label, *(_fig(metrics[s].get(key)) for s in splits)] for key, label in keys]
    out = ["## Accuracy", "", "On the held-out splits, with the Keras model:", "", *_table(["", *splits], rows), ""]
    recall_rows = [[f"`{n}`", *(_fig(((metrics[s].get("per_class") or {}).get(n) or {}).get("recall"))
                                for s in splits)] for n in names]
    out += ["Recall per class:", "", *_table(["class", *splits], recall_rows), ""]
    return out


def _export_section(exports: list[dict[str, Any]] | None, export_dir: str | None) -> list[str]:
    if not exports:
        return ["## Exported files", "", "Not exported yet: `edgetl export RUN` writes TFLite, ONNX and SavedModel "
                "files, verifies each in its own runtime and adds the table here.", ""]
    rows = []
    for r in exports:
        row = dict(r, file=f"`{Path(str(r.get('path', ''))).name}`")
        rows.append([_fig(row.get(key)) for key, _ in _EXPORT_COLUMNS])
    return ["## Exported files", "", f"In `{export_dir}`. Each file was run in its own runtime (LiteRT, ONNX Runtime, "
            "TensorFlow) on the held-out images and compared with the Keras model (drop: accuracy points lost).", "",
            *_table([label for _, label in _EXPORT_COLUMNS], rows), ""]


def _fig(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4f}" if 1e-2 <= abs(x) < 1000 or x == 0 else f"{x:.4g}"
    return str(x)


def _nums(xs: Any) -> str:
    return "[" + ", ".join(f"{float(x):.4g}" for x in (xs or [])) + "]"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(v: Any) -> str:
        return _fig(v).replace("|", "\\|").replace("\n", " ")

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)]
