"""DeepST rows of the domain benchmarks (benchmarks/domains.py): seed stability of detection on MOB
rep11, a muscle sample and a synthetic section, and the DeepST variants of the integration cases. No DeepST reference environment: the
reference package pins an old torch stack, so these rows have no reference column."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from _domains_common import _ari, _load, _neighbour_agreement, _pairwise, _print_row, loaded_cases

#: the DeepST variants of ``bench_integration`` (``--variants``), each at every ``--seeds`` seed: the
#: integration's options (default: stable mode, batch_correction=True), e.g. one seed (stable=False)
#: or another section-effect correction; ``deepst_sections``: single-section runs (first seed)
DEEPST_INTEGRATION_RUNS = {
    "deepst": {},
    "deepst_one_seed": {"stable": False},
    "deepst_adversarial": {"batch_correction": "adversarial"},
    "deepst_adversarial_one_seed": {"batch_correction": "adversarial", "stable": False},
    "deepst_harmony": {"batch_correction": "harmony"},
    "deepst_no_correction": {"batch_correction": "none"},
}
DEEPST_INTEGRATION_VARIANTS = (*DEEPST_INTEGRATION_RUNS, "deepst_sections")


def bench_deepst_stability(seeds=(0, 1, 2, 3, 4), cases=None, **_) -> list[dict]:
    """Seed stability and accuracy of DeepST on the seed-stability cases of SpaGCN
    (:func:`_domains_common.stability_cases`; ``cases``: only those whose name contains one of
    these; default: MOB rep11 alone): ours (the default stable mode: 2 runs from seed-independent
    initial weights, the autoencoders without DEC, k-means on both runs' embeddings) beside ours
    with one seed (stable=False, the reference's algorithm); mean pairwise ARI of the refined
    domains between seeds and mean ARI against the truth (MOB rep11 layers, synthetic domains; the
    muscle samples have none). Refinement over 4 neighbours on the square ST grid, 6 on Visium's
    hexagons. Each seed prints a progress line, so a run cut short still reports its seeds.
    (No DeepST reference environment: the reference package pins old torch.)"""
    import experimat as em

    em.settings.progress = False
    rows = []
    for name, adata, truth_key, k, shape in loaded_cases(cases or ["MOB rep11"]):
        truth = adata.obs[truth_key].astype(str).to_numpy() if truth_key != "none" else None
        row = {"method": "deepst-stability", "case": name, "n_spots": adata.n_obs, "seeds": len(seeds)}
        row.update(_deepst_seed_runs(adata, k, 4 if shape == "square" else 6, seeds, truth))
        rows.append(row)
        _print_row(row)
    return rows


def _deepst_seed_runs(adata, n_domains: int, refine_neighbors: int, seeds, truth) -> dict:
    """Stable (default) and one-seed DeepST detection at every seed: stability, accuracy (with a
    truth), mean seconds per run, the stable mode's cost against one seed, load at start-end."""
    from experimat.methods.domains.deepst import spatial_detect_domains_deepst

    load_start = _load()
    found = {"ours": [], "ours_single": []}
    times = {"ours": [], "ours_single": []}
    for seed in seeds:
        for label, stable in (("ours", True), ("ours_single", False)):
            t = time.perf_counter()
            df = spatial_detect_domains_deepst(
                adata,
                n_domains=n_domains,
                seed=seed,
                stable=stable,
                refine_neighbors=refine_neighbors,
                use_gpu=False,
                key_added="d",
            )
            times[label].append(time.perf_counter() - t)
            found[label].append(df["refined"].astype(str).to_numpy())
        so_far = "  ".join(_so_far(label, found[label], times[label], truth) for label in found)
        print(f"    seed {seed}: {so_far}  load {_load()}", flush=True)
    out = {}
    for label in found:
        if len(seeds) > 1:
            out[f"{label}_stability"] = _pairwise(found[label])
        if truth is not None:
            out[f"{label}_accuracy"] = float(np.mean([_ari(truth, f) for f in found[label]]))
        out[f"{label}_s"] = float(np.mean(times[label]))
    out["cost_vs_single"] = out["ours_s"] / out["ours_single_s"]
    out["load"] = f"{load_start}-{_load()}"
    return out


def _so_far(label: str, found: list, times: list, truth) -> str:
    """One progress entry: stability over the seeds so far, the last seed's accuracy and time."""
    text = f"{label}"
    if len(found) > 1:
        text += f" stab. {_pairwise(found):.3f} ({len(found)} seeds)"
    if truth is not None:
        text += f" acc. {_ari(truth, found[-1]):.3f}"
    return text + f" {times[-1]:.1f} s"


def _shared(labs: dict) -> tuple[int, int]:
    """``(domains, domains present in every section)`` of per-section label Series."""
    every = set(pd.concat(labs.values()))
    return len(every), int(sum(all(d in set(v) for v in labs.values()) for d in every))


def deepst_integration(row: dict, samples: dict, n_domains: int, nn: int, seeds, variants, truth: dict) -> None:
    """The DeepST columns of an integration row: ``integrate_domains_deepst`` with the options of each
    of :data:`DEEPST_INTEGRATION_RUNS` in ``variants`` (``deepst``: the default, stable mode with
    batch_correction=True; ``deepst_one_seed``: stable=False) at every seed (seed stability = mean
    pairwise ARI of the pooled refined labels; domains, domains in every section (the fewest over
    the seeds), neighbour agreement of the domains and refined domains over ``nn`` neighbours (mean
    over the seeds), pooled ARI of the refined domains against the truth), beside single-section
    DeepST runs (stable mode, first seed) at the same ``n_domains``; time per call and the stable
    mode's cost against one seed of the same correction."""
    from experimat.methods.domains.deepst import integrate_domains_deepst, spatial_detect_domains_deepst

    for label, options in DEEPST_INTEGRATION_RUNS.items():
        if label not in variants:
            continue
        found, times, in_every, agree, agree_refined, aris = [], [], [], [], [], []
        for seed in seeds:
            t = time.perf_counter()
            integrate_domains_deepst(
                samples,
                n_domains=n_domains,
                seed=seed,
                refine_neighbors=nn,
                use_gpu=False,
                key_added=label,
                **options,
            )
            times.append(time.perf_counter() - t)
            labs = {s: a.obs[f"{label}.domain"].astype(str) for s, a in samples.items()}
            refined = {s: a.obs[f"{label}.refined"].astype(str) for s, a in samples.items()}
            found.append(pd.concat(refined.values()).to_numpy())
            row[f"{label}_domains"], every = _shared(labs)
            in_every.append(every)
            agree.append(np.mean([_neighbour_agreement(a.obsm["spatial"], labs[s], nn) for s, a in samples.items()]))
            agree_refined.append(
                np.mean([_neighbour_agreement(a.obsm["spatial"], refined[s], nn) for s, a in samples.items()])
            )
            if truth:
                aris.append(_ari(pd.concat(truth.values()), found[-1]))
        row[f"{label}_in_every_section"] = min(in_every)
        row[f"{label}_neighbour_agreement"] = float(np.mean(agree))
        row[f"{label}_neighbour_agreement_refined"] = float(np.mean(agree_refined))
        row[f"{label}_s"] = float(np.mean(times))
        if len(seeds) > 1:
            row[f"{label}_stability"] = _pairwise(found)
        if truth:
            row[f"{label}_ari_pooled"] = float(np.mean(aris))
    for label in DEEPST_INTEGRATION_RUNS:
        if f"{label}_s" in row and f"{label}_one_seed_s" in row:
            row[f"{label}_cost_vs_one_seed"] = row[f"{label}_s"] / row[f"{label}_one_seed_s"]
    if "deepst_sections" in variants:
        agree, agree_refined = [], []
        t = time.perf_counter()
        for a in samples.values():
            df = spatial_detect_domains_deepst(
                a, n_domains=n_domains, seed=seeds[0], refine_neighbors=nn, use_gpu=False, key_added="deepst_section"
            )
            agree.append(_neighbour_agreement(a.obsm["spatial"], df["domain"].astype(str).to_numpy(), nn))
            agree_refined.append(_neighbour_agreement(a.obsm["spatial"], df["refined"].astype(str).to_numpy(), nn))
        row["deepst_sections_s"] = time.perf_counter() - t
        row["deepst_sections_neighbour_agreement"] = float(np.mean(agree))
        row["deepst_sections_neighbour_agreement_refined"] = float(np.mean(agree_refined))
