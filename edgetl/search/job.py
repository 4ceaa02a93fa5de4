"""The search: candidates on a small sample first, the promising ones on more images (successive halving),
then the Pareto front within the budget, the recommendation and (with --train) its full training.

Each round trains every surviving candidate's head on a class-balanced sample of the training split and
validates it on one of the validation split (both `per_class` images a class); the next round keeps the
best 1/reduction of the candidates within the budget, by Pareto rank (accuracy against latency) and then
accuracy, on `reduction` times the images, and with them every candidate within the budget that the round's
sample cannot tell from the most accurate one (within NOISE_Z standard errors of their difference): on the
flowers, 64 images a class put MobileNetV2 1.0 at 160 px 6 points below 0.35 at 160 (1.6 standard errors),
and trained fully it was 1.2 points above; over six other samples of 64 a class the top six candidates were
within 2.4 points of each other on average, each moving 2-3 points from sample to sample (BENCHMARKS.md, "Stop 34:
candidates within the sample's noise go on"). While such candidates go on, the rounds go on on growing samples
(each round keeping the halving's count and those within the noise), until the noise parts them or a sample would
hold 1/reduction**2 of the training split. The last round (the halving's finalists, with no candidate within the
noise left, or the one whose sample would be that large) trains on the whole training split and validates on
the whole validation split: its candidates are measured as `edgetl train` would measure them, so the
recommendation among them is the one full training would make
(on the flowers, a last round on a sample picked a candidate 1.9 points below the best full run: the
candidates were within the sample's noise). Rounds also end when the sample cannot grow. Every result goes
to the folder's Optuna study as it is measured: a rerun reuses it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import fields
from typing import Any

from edgetl.core.errors import ModelError, UsageError
from edgetl.core.progress import Reporter
from edgetl.search.candidates import Candidate, Weights, digest, find_weights
from edgetl.search.config import Budget, SearchConfig
from edgetl.search.result import Round, SearchResult, describe
from edgetl.search.study import Results, pareto_ranks, prepare_folder, within_budget
from edgetl.search.trial import MIN_HEAD_STEPS, Fidelity, Shared, evaluate

log = logging.getLogger("edgetl")

# A candidate goes on while its accuracy is within this many standard errors of the difference from the round's
# most accurate candidate within the budget (both binomial, from the validation images: the module docstring).
NOISE_Z = 2.0


def search(cfg: SearchConfig, reporter: Reporter | None = None) -> SearchResult:
    """Search the candidates for the most accurate model within the budget on the data of cfg.data.

    Returns:
        The SearchResult (also written as search.json in the search folder, with search.png and recipe.yaml).

    Raises:
        UsageError, DataError, RunExistsError: bad options, data or search folder (nothing measured).
        ModelError: a candidate's base cannot be built from weights it was given.
    """
    from edgetl.core.tf import load_tensorflow
    from edgetl.data import scan_folder
    from edgetl.search import output
    from edgetl.train.config import TrainConfig

    t_start = time.perf_counter()
    reporter = reporter or Reporter()
    cfg.validate()
    candidates = cfg.candidate_list()
    folder = cfg.folder()
    prepare_folder(folder, cfg.force)
    train_cfg = TrainConfig(data=cfg.data)
    splits = scan_folder(cfg.data, val_split=train_cfg.val_split, test_split=train_cfg.test_split,
                         seed=train_cfg.seed, max_bad_fraction=train_cfg.max_bad_fraction)
    if not splits.val:
        raise UsageError(f"'{cfg.data}' gives no validation images; a search compares candidates on them. Add images "
                         "(at least a few per class) or a val/ folder.")
    weights, skipped = _weights(candidates, cfg, reporter)
    if not weights:
        raise UsageError(f"no candidate has weights ({len(skipped)} skipped, see above). Pass --weights-dir with "
                         "Keras' weight files, or --weights none to search on random weights.")
    load_tensorflow()
    from edgetl.export.job import default_threads
    from edgetl.train.distribute import place

    identity = {"data": splits.fingerprint(), "head_steps": MIN_HEAD_STEPS,
                **{f.name: getattr(train_cfg, f.name) for f in fields(TrainConfig)
                   if f.name in ("val_split", "test_split", "seed", "epochs", "batch_size", "lr", "dropout",
                                 "patience", "label_smoothing")}}
    results = Results(folder, identity)
    placement = place("default", "off")
    threads = cfg.threads or default_threads()
    shared = Shared(cfg, train_cfg, splits, folder, placement, reporter, threads)
    latest, rounds = _halving(list(weights), weights, shared, results, skipped)
    if not latest:
        raise ModelError(f"no candidate could be built ({len(skipped)} skipped, see above). Pass --weights-dir with "
                         "Keras' weight files (offline), or --weights none to search on random weights.")

    ordered = list(latest.values())
    ranks = pareto_ranks(ordered, cfg.budget)
    final = set(rounds[-1].candidates)
    for row, rank in zip(ordered, ranks, strict=True):
        row["within_budget"] = within_budget(row, cfg.budget)
        row["pareto_rank"] = rank
        row["pareto"] = rank == 1
        row["final_round"] = row["key"] in final
    ordered.sort(key=lambda r: _order(r, cfg.budget))
    eligible = [r for r in ordered if r["within_budget"] and r["final_round"]]
    recommended = max(eligible, key=lambda r: (r["accuracy"], -r["latency_ms"])) if eligible else None
    outside = [r for r in ordered if not r["within_budget"]]
    closest = None if recommended else min(outside, key=lambda r: _order(r, cfg.budget), default=None)
    for row in ordered:
        row["recommended"] = row is recommended
    machine = output.machine(threads)
    result = SearchResult(folder=folder, target=cfg.target, budget=cfg.budget, rows=ordered, recommended=recommended,
                          closest=closest, rounds=rounds, skipped=skipped, notes=output.notes(cfg.target, machine),
                          machine=machine, seconds=0.0)
    if recommended is not None:
        result.train_command, result.recipe = output.write_recipe(folder, cfg, recommended, weights)
    result.plot = output.plot(folder, result)
    if cfg.train and recommended is not None:
        result.run = output.train_recommended(folder, cfg, recommended, weights, reporter)
    result.seconds = time.perf_counter() - t_start
    output.write_json(folder, result.to_json())
    return result


def _weights(candidates: list[Candidate], cfg: SearchConfig, reporter: Reporter) -> tuple[dict[Candidate, Weights],
                                                                                            list[str]]:
    """Each candidate's weights; one line for each one without (skipped) and each on a nearest-size file."""
    found: dict[Candidate, Weights] = {}
    skipped: list[str] = []
    where = f"'{cfg.weights_dir}'" if cfg.weights_dir else "Keras' cache"
    for c in candidates:
        w = find_weights(c, cfg.weights, cfg.weights_dir)
        if w is None:
            why = "edgetl ships no weights for it" if cfg.weights == "bundled" else f"no weights file for it in {where}"
            line = f"skipping {c.key}: {why}"
            skipped.append(line)
            log.warning(line)
            continue
        if w.note:
            log.warning(w.note)
        found[c] = w
    return found, skipped


def _fidelity(shared: Shared, number: int, per_class: int, whole: bool = False) -> Fidelity:
    """A round's images: class-balanced samples of `per_class` a class, or (whole) both splits entire."""
    from edgetl.data.sampling import balanced_sample

    splits = shared.splits
    if whole:
        return Fidelity(number, per_class, list(splits.train), list(splits.val), whole=True)
    n_classes = len(splits.class_names)
    seed = shared.train_cfg.seed
    train = balanced_sample(splits.train, per_class * n_classes, seed)
    val = balanced_sample(splits.val, per_class * n_classes, seed)
    if len(train) == len(splits.train) and len(val) == len(splits.val):
        # A sample of every image: measured as the whole splits, in `edgetl train`'s order, so its figures are the
        # ones training gives (the same images in another order moved the flowers' candidates by up to 2 points).
        return _fidelity(shared, number, per_class, whole=True)
    return Fidelity(number, per_class, train, val)


def _halving(survivors: list[Candidate], weights: dict[Candidate, Weights], shared: Shared, results: Results,
             skipped: list[str]) -> tuple[dict[Candidate, dict[str, Any]], list[Round]]:
    """The rounds of successive halving. Returns each candidate's figures at its last round, and the rounds."""
    try:
        return _rounds(survivors, weights, shared, results, skipped)
    finally:
        shared.keep_built(set())  # the kept classifiers go with the rounds


def _rounds(survivors: list[Candidate], weights: dict[Candidate, Weights], shared: Shared, results: Results,
            skipped: list[str]) -> tuple[dict[Candidate, dict[str, Any]], list[Round]]:
    cfg = shared.cfg
    latest: dict[Candidate, dict[str, Any]] = {}
    rounds: list[Round] = []
    per_class, number = cfg.images_per_class, 1
    scheduled = len(survivors)  # the halving's own count, without the candidates kept within the noise
    pending = False  # candidates within the noise went on from the round before
    while True:
        # The last round, on the whole splits (measured as training would): when the halving has its finalists and
        # no candidate rode along within the noise, or when the sample would be a large part of the training split
        # anyway (_fills). Candidates within the noise thus go through samples that grow until the noise parts them
        # or the sample nears the whole: their whole-split round comes only when a sample that large cannot tell them.
        last = (math.ceil(scheduled / cfg.reduction) < 2 and not pending) or _fills(shared, per_class)
        fid = _fidelity(shared, number, per_class, whole=last)
        rnd = Round(number, per_class, len(fid.train), len(fid.val), [c.key for c in survivors], whole=fid.whole)
        t0 = time.perf_counter()
        shared.reporter.info(f"round {number}: {len(survivors)} candidates on {len(fid.train)} training and "
                             f"{len(fid.val)} validation images")
        for c in list(survivors):
            try:
                latest[c] = _measure(c, weights[c], fid, shared, results, rnd)
            except ModelError as exc:
                if weights[c].value != "imagenet":  # a file the user gave that does not load: theirs to fix
                    raise
                # Not in Keras' cache and not downloadable (offline): skipped, like a candidate without a file.
                line = f"skipping {c.key}: {exc}"
                skipped.append(line)
                log.warning(line)
                survivors.remove(c)
        rnd.candidates = [c.key for c in survivors]
        scheduled = min(scheduled, len(survivors))  # a candidate skipped for its weights leaves the count
        rnd.wall = time.perf_counter() - t0
        rounds.append(rnd)
        shared.reporter.info(rnd.line())
        log.info(rnd.line())
        if not survivors:
            return latest, rounds
        keep = math.ceil(scheduled / cfg.reduction)
        ranked = [c for c in survivors if within_budget(latest[c], cfg.budget)]
        ranks = dict(zip(ranked, pareto_ranks([latest[c] for c in ranked], cfg.budget), strict=True))
        ranked.sort(key=lambda c: (ranks[c], -latest[c]["accuracy"], latest[c]["latency_ms"]))
        grown = _fidelity(shared, number + 1, per_class * cfg.reduction)
        close = within_noise([latest[c] for c in ranked[keep:]], [latest[c] for c in ranked])
        if last or len(ranked) < 2 or keep + len(close) < 2 or len(grown.train) <= len(fid.train):
            return latest, rounds
        survivors = ranked[:keep] + [c for c in ranked[keep:] if c.key in close]
        shared.keep_built({c.key for c in survivors})
        if close:
            line = f"  within the noise of the most accurate, going on too: {', '.join(sorted(close))}"
            shared.reporter.info(line)
            log.info(line)
        rnd.within_noise = sorted(close)
        scheduled, pending = keep, bool(close)
        per_class *= cfg.reduction
        number += 1


def _fills(shared: Shared, per_class: int) -> bool:
    """Whether a sample of per_class images a class would hold at least 1/reduction**2 of the training split: a
    round on more images than that costs most of what the whole splits cost, and the candidates still within the
    noise by then rarely part (on the flowers, a round on 42% of the training split dropped none of 6)."""
    return per_class * len(shared.splits.class_names) * shared.cfg.reduction ** 2 >= len(shared.splits.train)


def within_noise(rows: list[dict[str, Any]], pool: list[dict[str, Any]]) -> set[str]:
    """The keys of the rows whose accuracy the round cannot tell from the best of the pool: at most NOISE_Z
    standard errors of their difference below it."""
    if not pool:
        return set()
    best = max(pool, key=lambda r: r["accuracy"])
    return {r["key"] for r in rows
            if best["accuracy"] - r["accuracy"] <= NOISE_Z * math.hypot(r["accuracy_stderr"], best["accuracy_stderr"])}


def _measure(c: Candidate, w: Weights, fid: Fidelity, shared: Shared, results: Results, rnd: Round) -> dict[str, Any]:
    """One candidate in one round: from the study when it was measured before, else measured and stored."""
    cfg = shared.cfg
    file_key = digest([c.key, w.identity, cfg.target, shared.threads])
    trial_key = digest([file_key, len(fid.train), len(fid.val), fid.per_class])
    figures = results.find(trial_key)
    if figures is not None:
        rnd.reused += 1
        shared.reporter.info(f"  {c.key}: {describe(figures)} (reused)")
        return figures
    t0 = time.perf_counter()
    figures = evaluate(c, w, fid, shared, results.file_figures(file_key))
    for part, s in figures["seconds"].items():
        rnd.seconds[part] = rnd.seconds.get(part, 0.0) + s
    results.add(figures, trial_key, file_key)
    shared.reporter.info(f"  {c.key}: {describe(figures)} ({time.perf_counter() - t0:.1f} s)")
    return figures


def _order(row: dict[str, Any], budget: Budget) -> tuple[Any, ...]:
    """Table order: within the budget by Pareto rank (then accuracy), then the rest nearest the budget first."""
    if row.get("within_budget"):
        return (0, row["pareto_rank"] or 0, -row["accuracy"], row["latency_ms"])
    excess = max(budget.excess(row).values(), default=0.0)
    return (1, excess, -row["accuracy"], row["latency_ms"])
