"""The search's results in an Optuna study (SQLite, in the search folder), and Pareto ranks within a budget.

Optuna keeps the machinery: the multi-objective study (accuracy up, latency down), its storage (a rerun of
the same search finds every result it already has; a database server URL would let several machines share
one study), the budget as constraints and the Pareto front (`study.best_trials`, feasible trials only).
edgetl keeps only what is its own: which result answers which question (the keys below).
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.core.errors import RunExistsError
from edgetl.search.candidates import digest

if TYPE_CHECKING:
    import optuna

    from edgetl.search.config import Budget

STUDY_FILE = "study.db"
STUDY_NAME = "edgetl-search"
OBJECTIVES = ("accuracy", "latency_ms")
DIRECTIONS = ("maximize", "minimize")
# What a search folder may hold (written by edgetl search); --force removes these and nothing else.
SEARCH_FILES = (STUDY_FILE, "features", "candidates", "search.json", "search.png", "recipe.yaml", "run")
NOT_MEASURED = 1e9  # a constraint value for a figure the target does not measure: never within a budget


def load_optuna() -> Any:
    """Optuna, with its own log lines (a line per trial) kept off the user's terminal."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def prepare_folder(folder: Path, force: bool) -> None:
    """Make sure the search folder is one edgetl may write: empty, new, or a search folder (cleared with force).

    Raises:
        RunExistsError: the folder holds other files (never deleted, even with force), or is a file.
    """
    if folder.exists() and not folder.is_dir():
        raise RunExistsError(f"search folder '{folder}' is a file. Choose another --output.")
    if folder.is_dir() and any(folder.iterdir()):
        if not (folder / STUDY_FILE).is_file():
            raise RunExistsError(f"folder '{folder}' is not empty and holds no edgetl search ({STUDY_FILE}); edgetl "
                                 "will not write into it, even with --force. Choose another --output.")
        if force:
            for name in SEARCH_FILES:
                path = folder / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
    folder.mkdir(parents=True, exist_ok=True)


class Results:
    """The study of one search folder: every measured (candidate, fidelity) is one complete trial."""

    def __init__(self, folder: Path, identity: dict[str, Any]) -> None:
        """Open (or create) the folder's study, refusing a study of other data or options.

        Args:
            identity: what every result of the folder depends on (data, splits, seed, training options):
                a study written with another identity is never mixed with this one.

        Raises:
            RunExistsError: the folder's study was made with another identity.
        """
        optuna = load_optuna()
        url = f"sqlite:///{(folder / STUDY_FILE).resolve()}"
        self.study: optuna.Study = optuna.create_study(study_name=STUDY_NAME, storage=url, directions=DIRECTIONS,
                                                       load_if_exists=True)
        mine = digest(sorted(identity.items()))
        theirs = self.study.user_attrs.get("identity")
        if theirs is not None and theirs != mine:
            raise RunExistsError(f"search folder '{folder}' holds a search of other data or options (data, splits, "
                                 "seed, head training). Pass --force to redo it, or choose another --output.")
        if theirs is None:
            self.study.set_user_attr("identity", mine)
            self.study.set_user_attr("settings", {k: str(v) for k, v in identity.items()})
        self._complete = self._load()

    def _load(self) -> list[optuna.trial.FrozenTrial]:
        optuna = load_optuna()
        return self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))

    def find(self, trial_key: str) -> dict[str, Any] | None:
        """The figures of an earlier result of exactly this question, or None."""
        for t in self._complete:
            if t.user_attrs.get("trial_key") == trial_key:
                return dict(t.user_attrs["figures"])
        return None

    def file_figures(self, file_key: str) -> dict[str, Any] | None:
        """Latency, size, RAM and file of a candidate's target file measured in an earlier round, or None."""
        for t in self._complete:
            if t.user_attrs.get("file_key") == file_key:
                f = t.user_attrs["figures"]
                if f.get("file") and Path(f["file"]).is_file():
                    return {k: f.get(k) for k in ("latency_ms", "size_mb", "ram_kb", "file", "mode")}
        return None

    def add(self, figures: dict[str, Any], trial_key: str, file_key: str) -> None:
        """Store one result as a complete trial (only finished results are stored: an interrupted
        candidate leaves nothing to mistake for a result)."""
        optuna = load_optuna()
        dist = optuna.distributions
        trial = optuna.trial.create_trial(
            values=[float(figures["accuracy"]), float(figures["latency_ms"])],
            params={"image_size": int(figures["image_size"]), "alpha": float(figures["alpha"] or 1.0),
                    "train_images": int(figures["train_images"])},
            distributions={"image_size": dist.IntDistribution(1, 1024), "alpha": dist.FloatDistribution(0.0, 2.0),
                           "train_images": dist.IntDistribution(1, 10**9)},
            user_attrs={"trial_key": trial_key, "file_key": file_key, "candidate": figures["key"],
                        "figures": figures})
        self.study.add_trial(trial)
        self._complete = self._load()


def within_budget(figures: dict[str, Any], budget: Budget) -> bool:
    """Every budget limit met (a figure not measured meets none)."""
    return all(v <= 0 for v in budget.excess(figures).values())


def pareto_ranks(rows: list[dict[str, Any]], budget: Budget) -> list[int | None]:
    """Each row's Pareto rank (1: the front) among the rows within the budget; None for rows outside it.

    Rows are peeled front by front: Optuna's best_trials of the rows left, the budget as constraints.
    """
    optuna = load_optuna()
    ranks: list[int | None] = [None] * len(rows)
    left = list(range(len(rows)))
    rank = 1
    while left:
        study = optuna.create_study(directions=DIRECTIONS)
        study.add_trials([_constrained(rows[i], i, budget, optuna) for i in left])
        front = {t.user_attrs["row"] for t in study.best_trials}
        if not front:  # only rows outside the budget are left
            break
        for i in front:
            ranks[i] = rank
        left = [i for i in left if i not in front]
        rank += 1
    return ranks


def _constrained(row: dict[str, Any], i: int, budget: Budget, optuna: Any) -> Any:
    excess = budget.excess(row)
    constraints = {k: (v if math.isfinite(v) else NOT_MEASURED) for k, v in excess.items()} or None
    return optuna.trial.create_trial(values=[float(row["accuracy"]), float(row["latency_ms"])],
                                     user_attrs={"row": i}, constraints=constraints)


def log_study(folder: Path) -> None:
    """One debug line: where the study is (for optuna-dashboard or optuna.load_study)."""
    logging.getLogger("edgetl").debug("search study: sqlite:///%s (study %s)", (folder / STUDY_FILE).resolve(),
                                      STUDY_NAME)
