#!/usr/bin/env python3
"""Reference values for the drift statistics (src/drift/stats.rs checks itself against them).

PSI with NumPy (bins by `searchsorted(edges, x, side="right")`, shares floored at 1e-4) and the
one-sample KS statistic with SciPy's `kstest` against the profile's CDF (linear between its
quantiles). Cases: synthetic ones chosen for their corners (empty bins, unseen categories, repeated
quantiles) and the demo models' real profiles against their holdout rows, unchanged and shifted.

Run from the repository root:  target/python/bin/python tests/drift/reference.py
"""

import csv
import json
import pathlib

import numpy as np
from scipy import stats

ROOT = pathlib.Path(__file__).resolve().parents[2]
FLOOR = 1e-4


def psi(distribution: dict, values: np.ndarray) -> float:
    if distribution["kind"] == "numeric":
        bins = np.searchsorted(np.array(distribution["edges"]), values, side="right")
        expected = np.array(distribution["shares"])
    else:
        listed = np.array(distribution["values"])
        bins = np.array([np.flatnonzero(listed == v)[0] if v in listed else len(listed) for v in values])
        expected = np.append(distribution["shares"], 0.0)
    observed = np.bincount(bins, minlength=len(expected)) / len(values)
    a, e = np.maximum(observed, FLOOR), np.maximum(expected, FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def reference_cdf(quantiles: list[float]):
    q = np.array(quantiles)
    m = len(q) - 1

    def cdf(x):
        x = np.asarray(x, dtype=np.float64)
        k = np.searchsorted(q, x, side="right")
        out = np.where(k == 0, 0.0, 1.0)
        mid = (k > 0) & (k <= m)
        kk = k[mid]
        out[mid] = (kk - 1 + (x[mid] - q[kk - 1]) / (q[kk] - q[kk - 1])) / m
        return out

    if np.all(np.diff(q) > 0):
        # Without repeats it is plain linear interpolation.
        probe = np.linspace(q[0] - 1, q[-1] + 1, 997)
        assert np.allclose(cdf(probe), np.interp(probe, q, np.linspace(0, 1, m + 1)), atol=1e-12)
    return cdf


def ks(distribution: dict, values: np.ndarray):
    if distribution["kind"] != "numeric":
        return None
    return float(stats.kstest(values, reference_cdf(distribution["quantiles"])).statistic)


def numeric(train: np.ndarray) -> dict:
    edges = np.unique(np.quantile(train, np.linspace(0, 1, 11)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, train, side="right"), minlength=len(edges) + 1)
    return {"kind": "numeric", "edges": edges.tolist(), "shares": (counts / len(train)).tolist(),
            "quantiles": np.quantile(train, np.linspace(0, 1, 101)).tolist()}


def holdout(name: str) -> tuple[list[str], np.ndarray]:
    with open(ROOT / "models" / name / "holdout.csv") as f:
        rows = list(csv.reader(f))
    return rows[0], np.array(rows[1:], dtype=np.float32).astype(np.float64)


def case(name: str, distribution: dict, values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    return {"name": name, "distribution": distribution, "values": values.tolist(),
            "psi": psi(distribution, values), "ks": ks(distribution, values)}


def main() -> None:
    rng = np.random.default_rng(7)
    train = rng.normal(size=2000)
    cases = [
        case("normal, same", numeric(train), rng.normal(size=500)),
        case("normal, mean +0.5", numeric(train), rng.normal(0.5, 1.0, size=500)),
        case("normal, scale x2", numeric(train), rng.normal(0.0, 2.0, size=300)),
        case("normal, all above the top edge", numeric(train), rng.normal(10.0, 1.0, size=50)),
        case("one value", numeric(train), [0.0]),
        case("repeated quantiles", numeric(np.repeat([0.0, 1.0, 2.0], [500, 1000, 500])),
             rng.choice([0.0, 0.5, 1.0, 2.0, 3.0], size=400)),
        case("categorical, same", {"kind": "categorical", "values": [0.0, 1.0], "shares": [0.4, 0.6]},
             rng.choice([0.0, 1.0], p=[0.4, 0.6], size=1000)),
        case("categorical, unseen value", {"kind": "categorical", "values": [0.0, 1.0, 2.0], "shares": [0.2, 0.3, 0.5]},
             rng.choice([0.0, 1.0, 2.0, 5.0], size=200)),
    ]
    for model, version, shifts in [("breast-cancer", "1", {"mean radius": 1.3, "worst texture": 1.25}),
                                   ("diabetes", "1", {"bmi": 1.5, "sex": -1.0})]:
        profile = json.loads((ROOT / "models" / model / version / "manifest.json").read_text())["profile"]
        names, rows = holdout(model)
        for series in profile["features"]:
            if series["name"] not in shifts:
                continue
            values = rows[:, names.index(series["name"])]
            cases.append(case(f"{model} {series['name']}, holdout", series, values))
            shifted = (values.astype(np.float32) * np.float32(shifts[series["name"]])).astype(np.float64)
            cases.append(case(f"{model} {series['name']}, holdout x{shifts[series['name']]}", series, shifted))
    out = ROOT / "tests" / "drift" / "reference.json"
    out.write_text(json.dumps(cases, indent=1) + "\n")
    for c in cases:
        print(f"{c['name']}: psi {c['psi']:.6f} ks {c['ks']}")


if __name__ == "__main__":
    main()
