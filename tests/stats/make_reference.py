"""Reference values for src/compare/stats.rs, computed with SciPy, statsmodels and scikit-learn.

Run from the repository root with the project's Python environment (scripts/python-env.sh) plus
statsmodels: `target/python/bin/pip install statsmodels==0.15.0 && target/python/bin/python
tests/stats/make_reference.py`. Writes tests/stats/reference.json, which the Rust tests read;
the inputs are in the file too, so the Rust side computes on exactly these numbers.
"""

import json
import pathlib

import numpy as np
import scipy
import sklearn
import statsmodels
from scipy import stats
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import brier_score_loss, log_loss
from statsmodels.stats.contingency_tables import mcnemar

rng = np.random.default_rng(20261127)
out = {"versions": {"scipy": scipy.__version__, "statsmodels": statsmodels.__version__, "sklearn": sklearn.__version__}}

# McNemar's exact test on the discordant counts (b: only the champion right, c: only the challenger right).
out["mcnemar"] = [
    {"b": b, "c": c, "p": float(mcnemar([[50, b], [c, 50]], exact=True).pvalue)}
    for b, c in [(0, 0), (0, 1), (3, 9), (9, 3), (10, 10), (25, 40), (1, 30), (200, 250), (1500, 1620), (4, 0)]
]

# Paired differences: mean, 95% t interval (scipy), Wilcoxon signed-rank with the normal approximation.
paired = []
for case, d in enumerate(
    [
        rng.normal(0.3, 1.0, 40),
        rng.normal(0.0, 2.0, 200),
        rng.normal(-0.1, 0.5, 1000),
        np.round(rng.normal(0.2, 1.0, 150), 1),  # ties and zeros
        rng.choice([-1.0, 0.0, 0.0, 0.0, 1.0, 1.0], 300),  # paired correctness differences
    ]
):
    d = [float(x) for x in d]
    t = stats.ttest_1samp(d, 0.0)
    ci = t.confidence_interval(0.95)
    w = stats.wilcoxon(d, zero_method="wilcox", correction=False, method="approx")
    paired.append(
        {
            "d": d,
            "mean": float(np.mean(d)),
            "ci_low": float(ci.low),
            "ci_high": float(ci.high),
            "t_p": float(t.pvalue),
            "wilcoxon_p": float(w.pvalue),
            "wilcoxon_z": float(w.zstatistic),
        }
    )
out["paired"] = paired

out["quantiles"] = {
    "normal": [{"p": p, "x": float(stats.norm.ppf(p))} for p in [0.5, 0.8, 0.975, 0.995, 1e-6]],
    "t": [{"p": p, "df": df, "x": float(stats.t.ppf(p, df))} for p, df in [(0.975, 1), (0.975, 5), (0.975, 29), (0.975, 999), (0.9, 3)]],
}

# Agreement and divergence between two models' predictions.
a = rng.normal(150, 50, 500)
b = a + rng.normal(5, 20, 500)
out["regression_pair"] = {
    "a": [float(x) for x in a],
    "b": [float(x) for x in b],
    "pearson_r": float(stats.pearsonr(a, b).statistic),
    "ks": float(stats.ks_2samp(a, b).statistic),
}
p = np.array([120, 380], dtype=float)
q = np.array([140, 360], dtype=float)
out["class_shares"] = {"p": p.tolist(), "q": q.tolist(), "js": float(jensenshannon(p / p.sum(), q / q.sum(), base=2) ** 2)}

# Probability scores against labels.
y = rng.integers(0, 2, 300)
prob = np.clip(rng.beta(2, 2, 300) * 0.6 + 0.4 * y, 1e-6, 1 - 1e-6)
out["scores"] = {
    "y": [int(v) for v in y],
    "p1": [float(v) for v in prob],
    "log_loss": float(log_loss(y, np.column_stack([1 - prob, prob]))),
    "brier": float(brier_score_loss(y, prob)),
}

path = pathlib.Path(__file__).with_name("reference.json")
path.write_text(json.dumps(out, indent=1) + "\n")
print(f"wrote {path}")
