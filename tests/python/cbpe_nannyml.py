"""NannyML's CBPE on the rows the gateway scored, for tests/feedback.rs to compare with its own estimate.

Reads JSON on stdin: {"<version>": {"p": [positive-class probability per row], "pred": [predicted
label], "y": [true label]}}. The labelled rows are NannyML's reference (its calibrator is fitted there,
if calibration helps) and the same rows without labels its analysis period, one chunk. An optional
argument, JSON {"<version>": true|false}, makes NannyML take that calibration choice instead of its
own (its `needs_calibration`, which draws its folds at random). Prints
{"<version>": {"estimated_accuracy": …, "calibrated": true|false, "realised_accuracy": …}}.
"""

import json
import sys
import warnings

import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")
import nannyml as nml  # noqa: E402

data = json.load(sys.stdin)
forced = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
cbpe_module = sys.modules["nannyml.performance_estimation.confidence_based.cbpe"]
decide = cbpe_module.needs_calibration
out = {}
for version, rows in data.items():
    if version in forced:
        cbpe_module.needs_calibration = lambda *args, choice=forced[version], **kwargs: choice
    else:
        cbpe_module.needs_calibration = decide
    reference = pd.DataFrame({"p": np.asarray(rows["p"], dtype=np.float64), "pred": rows["pred"], "y": rows["y"]})
    analysis = reference.drop(columns=["y"])
    estimator = nml.CBPE(problem_type="classification_binary", y_pred_proba="p", y_pred="pred", y_true="y",
                         metrics=["accuracy"], chunk_number=1)
    estimator.fit(reference)
    result = estimator.estimate(analysis).filter(period="analysis").to_df()
    value = float(result[("accuracy", "value")].iloc[0])
    out[version] = {"estimated_accuracy": value, "calibrated": bool(estimator.needs_calibration),
                    "realised_accuracy": float(np.mean(np.asarray(rows["pred"]) == np.asarray(rows["y"])))}
print(json.dumps(out))
