#!/usr/bin/env python3
"""Train the demo model repository from data that scikit-learn ships (no downloads).

Writes, for every model version, `models/<name>/<version>/model.onnx` and `manifest.json`, and for every
model `models/<name>/holdout.csv`: the held-out rows with their true labels, for demos and load tests.

The manifest carries the signature, the model file's sha256, a fingerprint of the training data and the
split, holdout metrics, and reference rows with the outputs ONNX Runtime gives for them. The gateway
runs every version on those reference rows at load and refuses it when its backend disagrees.

It also carries the training data's profile, the reference the gateway measures drift against: per
input feature and per prediction, decile bin edges with the training shares over them and 101
quantiles (numeric), or the values and their shares (categorical: a feature with at most
`CATEGORICAL_MAX_VALUES` distinct values, and the predicted class).

Run from the repository root:  python3 models/train.py   (requirements: models/requirements.txt)
The output is deterministic for pinned package versions: rerunning rewrites identical files.
With `--register http://mlflow:5000` it also logs and registers every demo version in that MLflow
Model Registry, through `models/mlflow_register.py` (requirements: tests/python/mlflow-requirements.txt).
"""

from __future__ import annotations

import csv
import hashlib
import json
import pathlib
import sys

import numpy as np
import onnx
import onnxruntime as ort
import sklearn
import skl2onnx
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor, RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss, mean_absolute_error, mean_squared_error, r2_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

ROOT = pathlib.Path(__file__).resolve().parent
SEED = 42
TEST_SIZE = 0.25
REFERENCE_ROWS = 8
BATCH_DIM = "batch"
PROFILE_BINS = 10
PROFILE_QUANTILES = 101
CATEGORICAL_MAX_VALUES = 10


def fingerprint(*arrays: np.ndarray) -> str:
    """sha256 over the arrays' dtype, shape and bytes: changes whenever the data or the split does."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def name_batch_dimension(model: onnx.ModelProto) -> None:
    """Give every graph input's and output's first dimension the name `batch`.

    tract needs a named (symbolic) batch dimension to accept any number of rows; ONNX Runtime is
    indifferent. skl2onnx leaves the dimension unnamed or names it differently per converter.
    """
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = BATCH_DIM


def fold_scaler_into_mlp(scaler: StandardScaler, mlp: MLPClassifier) -> MLPClassifier:
    """Return the MLP with the scaler folded into its first layer: the same function, one op family.

    (x - mean) / scale @ W + b  ==  x @ (W / scale[:, None]) + (b - (mean / scale) @ W).
    The exported graph is then MatMul/Add/Relu/Sigmoid only, which both backends run; a separate
    StandardScaler becomes ONNX's `Scaler`, which tract does not implement.
    """
    w = mlp.coefs_[0]
    mlp.intercepts_[0] = mlp.intercepts_[0] - (scaler.mean_ / scaler.scale_) @ w
    mlp.coefs_[0] = w / scaler.scale_[:, None]
    return mlp


def export(estimator, n_features: int) -> onnx.ModelProto:
    options = {id(estimator): {"zipmap": False}} if hasattr(estimator, "predict_proba") else None
    model = to_onnx(
        estimator,
        initial_types=[("input", FloatTensorType([None, n_features]))],
        options=options,
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    name_batch_dimension(model)
    model.producer_name = "gauntlet models/train.py"
    model.doc_string = ""
    return model


DTYPES = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.BOOL: "BOOL",
}


def signature(values) -> list[dict]:
    out = []
    for v in values:
        t = v.type.tensor_type
        shape = [-1 if d.dim_param or not d.HasField("dim_value") else d.dim_value for d in t.shape.dim]
        out.append({"name": v.name, "datatype": DTYPES[t.elem_type], "shape": shape})
    return out


def distribution(values: np.ndarray, categories=None) -> dict:
    """One series of the training profile, in the form the gateway's `drift::profile` reads.

    Numeric: interior decile edges (duplicates removed, so a value's bin is the number of edges at or
    below it), the training shares over those bins, and 101 quantiles (the reference CDF, linear between
    them). Categorical: the values and their shares.
    """
    values = np.asarray(values, dtype=np.float64)
    if categories is None and len(np.unique(values)) <= CATEGORICAL_MAX_VALUES:
        categories = np.unique(values)
    if categories is not None:
        categories = np.asarray(categories, dtype=np.float64)
        shares = [float(np.mean(values == c)) for c in categories]
        return {"kind": "categorical", "values": categories.tolist(), "shares": shares}
    edges = np.unique(np.quantile(values, np.linspace(0, 1, PROFILE_BINS + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return {"kind": "numeric", "edges": edges.tolist(), "shares": (counts / len(values)).tolist(),
            "quantiles": np.quantile(values, np.linspace(0, 1, PROFILE_QUANTILES)).tolist()}


def profile(x_train: np.ndarray, feature_names: list[str], session: ort.InferenceSession, task: dict) -> dict:
    """The training distribution of every input feature and of the model's predictions on the same rows."""
    features = [{"name": name, "tensor": "input", "column": j, **distribution(x_train[:, j])}
                for j, name in enumerate(feature_names)]
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {"input": x_train})))
    if task["kind"] == "classification":
        predictions = [{"name": task["label_output"], "tensor": task["label_output"],
                        **distribution(outputs[task["label_output"]], categories=task["classes"])}]
        probabilities = outputs.get(task.get("probabilities_output"))
        if probabilities is not None and probabilities.shape[1] == 2:
            column = f"{task['probabilities_output']}[1]"
            predictions.append({"name": column, "tensor": task["probabilities_output"], "column": 1,
                                **distribution(probabilities[:, 1])})
    else:
        output = task["prediction_output"]
        predictions = [{"name": output, "tensor": output, "column": 0, **distribution(outputs[output][:, 0])}]
    return {"rows": int(len(x_train)), "features": features, "predictions": predictions}


def to_json_list(a: np.ndarray) -> list:
    if a.dtype.kind == "f":
        # float32 printed through float64 keeps every bit; round-tripping is exact.
        return np.asarray(a, dtype=np.float64).tolist()
    return a.tolist()


def build_manifest(name: str, version: str, description: str, estimator, model: onnx.ModelProto, task: dict,
                   data: dict, x_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                   backends_note: str) -> tuple[bytes, dict]:
    """The model's bytes and its manifest: what `write_version` writes and `mlflow_register.py` logs."""
    raw = model.SerializeToString()
    session = ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
    output_names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(output_names, session.run(None, {"input": x_test})))

    if task["kind"] == "classification":
        label, proba = outputs["label"], outputs["probabilities"]
        sk_proba = estimator.predict_proba(x_test)
        assert np.abs(proba - sk_proba).max() < 1e-4, f"{name}/{version}: ONNX probabilities differ from scikit-learn"
        p1 = np.clip(proba[:, 1].astype(np.float64), 1e-15, 1 - 1e-15)
        metrics = {
            "accuracy": float(accuracy_score(y_test, label)),
            "log_loss": float(log_loss(y_test, np.column_stack([1 - p1, p1]))),
            "brier": float(brier_score_loss(y_test, p1)),
            "roc_auc": float(roc_auc_score(y_test, p1)),
        }
    else:
        pred = outputs["variable"].reshape(-1)
        sk_pred = estimator.predict(x_test)
        assert np.abs(pred - sk_pred).max() < 1e-2, f"{name}/{version}: ONNX predictions differ from scikit-learn"
        metrics = {
            "mae": float(mean_absolute_error(y_test, pred)),
            "rmse": float(np.sqrt(mean_squared_error(y_test, pred))),
            "r2": float(r2_score(y_test, pred)),
        }

    # Reference rows: the first holdout rows of each class (or spread over the target range), so a backend
    # that gets one class wrong is caught.
    if task["kind"] == "classification":
        picks = np.concatenate([np.flatnonzero(y_test == c)[: REFERENCE_ROWS // 2] for c in np.unique(y_test)])
    else:
        picks = np.argsort(y_test)[np.linspace(0, len(y_test) - 1, REFERENCE_ROWS).astype(int)]
    picks = np.sort(picks)
    ref_in = x_test[picks]
    ref_out = dict(zip(output_names, session.run(None, {"input": ref_in})))

    manifest = {
        "name": name,
        "version": version,
        "description": description,
        "task": task,
        "model_file": "model.onnx",
        "sha256": hashlib.sha256(raw).hexdigest(),
        "inputs": signature(model.graph.input),
        "outputs": signature(model.graph.output),
        "training": {
            "dataset": data["dataset"],
            "feature_names": data["feature_names"],
            "rows": data["rows"],
            "data_sha256": data["data_sha256"],
            "split": {"test_size": TEST_SIZE, "random_state": SEED, "stratify": task["kind"] == "classification",
                      "holdout_rows": int(len(y_test)), "holdout_sha256": data["holdout_sha256"]},
            "frameworks": {"scikit-learn": sklearn.__version__, "skl2onnx": skl2onnx.__version__,
                           "onnx": onnx.__version__, "onnxruntime": ort.__version__},
        },
        "holdout_metrics": metrics,
        "backends": backends_note,
        "reference": {
            "tolerance": {"absolute": 1e-4, "relative": 1e-4},
            "inputs": {"input": to_json_list(ref_in)},
            "outputs": {k: to_json_list(v) for k, v in ref_out.items()},
        },
        "profile": profile(x_train, data["feature_names"], session, task),
    }
    return raw, manifest


def write_version(name: str, version: str, *args, root: pathlib.Path = ROOT, **kwargs) -> None:
    raw, manifest = build_manifest(name, version, *args, **kwargs)
    folder = root / name / version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(raw)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{name}/{version}: {manifest['description']}: {json.dumps(manifest['holdout_metrics'])}")


def write_holdout(name: str, feature_names: list[str], x: np.ndarray, y: np.ndarray, target: str,
                  root: pathlib.Path = ROOT) -> None:
    with open(root / name / "holdout.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*feature_names, target])
        for row, truth in zip(x, y):
            # The shortest text that reads back as the same float32: exact and readable.
            w.writerow([np.format_float_positional(v, unique=True, trim="-") for v in row] + [truth.item()])


def breast_cancer_split() -> dict:
    """The breast-cancer data, its split and task, as every version of that model is trained on them."""
    ds = load_breast_cancer()
    x, y = ds.data.astype(np.float32), ds.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=TEST_SIZE, random_state=SEED, stratify=y)
    data = {"dataset": "sklearn.datasets.load_breast_cancer", "rows": int(len(y)),
            "feature_names": [str(n) for n in ds.feature_names],
            "data_sha256": fingerprint(x, y), "holdout_sha256": fingerprint(x_test, y_test)}
    task = {"kind": "classification", "classes": [0, 1], "class_names": [str(n) for n in ds.target_names],
            "label_output": "label", "probabilities_output": "probabilities"}
    return dict(task=task, data=data, x_train=x_train, x_test=x_test, y_test=y_test, y_train=y_train)


def breast_cancer() -> None:
    common = breast_cancer_split()
    x_train, y_train = common["x_train"], common.pop("y_train")
    x_test, y_test, data = common["x_test"], common["y_test"], common["data"]

    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=SEED)).fit(x_train, y_train)
    write_version("breast-cancer", "1", "StandardScaler + LogisticRegression", lr, export(lr, 30),
                  backends_note="ort only: tract does not implement ONNX-ML Scaler", **common)

    gb = GradientBoostingClassifier(n_estimators=150, max_depth=3, random_state=SEED).fit(x_train, y_train)
    write_version("breast-cancer", "2", "GradientBoostingClassifier (150 trees, depth 3)", gb, export(gb, 30),
                  backends_note="ort only: tract rejects binary gradient boosting", **common)

    scaler = StandardScaler().fit(x_train)
    mlp = MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=2000, random_state=SEED)
    mlp.fit(scaler.transform(x_train), y_train)
    mlp = fold_scaler_into_mlp(scaler, mlp)
    write_version("breast-cancer", "3", "MLPClassifier (32, 16), input scaling folded into layer 1", mlp,
                  export(mlp, 30), backends_note="ort and tract", **common)

    rf = RandomForestClassifier(n_estimators=50, max_depth=6, random_state=SEED).fit(x_train, y_train)
    write_version("breast-cancer", "4", "RandomForestClassifier (50 trees, depth 6)", rf, export(rf, 30),
                  backends_note="ort; tract loads it but returns wrong labels, so validation refuses it there",
                  **common)

    write_holdout("breast-cancer", data["feature_names"], x_test, y_test, "label")


HEAVY_VERSION = "9"
HEAVY_LAYERS = (2048, 2048, 2048)


def heavy(root: pathlib.Path) -> None:
    """A repository with a heavy breast-cancer champion candidate: version 1 (copied) and version 9, an MLP of
    three 2,048-wide layers (about 34 MB; a row costs ONNX Runtime hundreds of microseconds, so the gateway
    places it on the inference pool and batching pays). Not committed: `--heavy target/heavy-models` makes it."""
    import shutil
    common = breast_cancer_split()
    x_train, y_train = common["x_train"], common.pop("y_train")
    scaler = StandardScaler().fit(x_train)
    mlp = MLPClassifier(hidden_layer_sizes=HEAVY_LAYERS, max_iter=15, random_state=SEED)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 15 epochs do not converge, by choice: the weights, not the fit, matter here
        mlp.fit(scaler.transform(x_train), y_train)
    mlp = fold_scaler_into_mlp(scaler, mlp)
    for version in ("1",):
        shutil.copytree(ROOT / "breast-cancer" / version, root / "breast-cancer" / version, dirs_exist_ok=True)
    shutil.copy(ROOT / "breast-cancer" / "holdout.csv", root / "breast-cancer" / "holdout.csv")
    write_version("breast-cancer", HEAVY_VERSION, f"MLPClassifier {HEAVY_LAYERS}, a heavy model for batching",
                  mlp, export(mlp, 30), backends_note="ort and tract", root=root, **common)


def diabetes() -> None:
    ds = load_diabetes()
    x, y = ds.data.astype(np.float32), ds.target.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=TEST_SIZE, random_state=SEED)
    data = {"dataset": "sklearn.datasets.load_diabetes", "rows": int(len(y)),
            "feature_names": [str(n) for n in ds.feature_names],
            "data_sha256": fingerprint(x, y), "holdout_sha256": fingerprint(x_test, y_test)}
    task = {"kind": "regression", "prediction_output": "variable"}
    common = dict(task=task, data=data, x_train=x_train, x_test=x_test, y_test=y_test)

    ridge = Ridge(alpha=0.1).fit(x_train, y_train)
    write_version("diabetes", "1", "Ridge regression (alpha 0.1)", ridge, export(ridge, 10),
                  backends_note="ort and tract", **common)

    gbr = GradientBoostingRegressor(n_estimators=200, max_depth=3, learning_rate=0.05, random_state=SEED)
    gbr.fit(x_train, y_train)
    write_version("diabetes", "2", "GradientBoostingRegressor (200 trees, depth 3)", gbr, export(gbr, 10),
                  backends_note="ort only: tract rejects TreeEnsembleRegressor", **common)

    write_holdout("diabetes", data["feature_names"], x_test, y_test, "target")


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--register", metavar="TRACKING_URI",
                        help="also log and register every version in this MLflow tracking server")
    parser.add_argument("--heavy", metavar="DIR", type=pathlib.Path,
                        help="only write a repository in DIR: breast-cancer 1 and a heavy version 9 (an MLP of "
                             "three 2,048-wide layers) for batching tests and benches")
    args = parser.parse_args()
    np.random.seed(SEED)
    if args.heavy:
        heavy(args.heavy.resolve())
        sys.exit(0)
    breast_cancer()
    diabetes()
    if args.register:
        import mlflow_register
        for folder in sorted(ROOT.glob("*/*/manifest.json")):
            version = mlflow_register.register(folder.parent, tracking_uri=args.register)
            print(f"{folder.parent.relative_to(ROOT)} registered as version {version}")
    sys.exit(0)
