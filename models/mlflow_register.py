#!/usr/bin/env python3
"""Log an ONNX model version to MLflow and register it, with the manifest the gateway needs.

A version in the MLflow Model Registry is served by gauntlet (`repository = "mlflow+http://host:port"`)
when its artifacts hold the ONNX file and our `manifest.json` beside it: the signature, the file's
sha256, the training data's fingerprint and split, holdout metrics, reference rows and the training
profile, computed exactly as `models/train.py` computes them (`train.build_manifest`).

From Python, with a fitted estimator and its ONNX export (what `models/train.py` does for the demo):

    import mlflow_register
    version = mlflow_register.log_version("breast-cancer", "my new model", estimator, onnx_model, task,
                                          data, x_train, x_test, y_test, alias="challenger")

From a version folder `models/train.py` wrote (model.onnx + manifest.json):

    python models/mlflow_register.py --tracking-uri http://127.0.0.1:5000 models/breast-cancer/3 --alias challenger

The tracking server is `--tracking-uri` or MLFLOW_TRACKING_URI; credentials are MLflow's own
(MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD).
The registry numbers versions itself; the manifest's `version` is replaced by the registry's when
the gateway reads it. Requirements: models/requirements.txt and tests/python/mlflow-requirements.txt.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import sys
import tempfile

import mlflow
import onnx
from mlflow import MlflowClient

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def log_and_register(onnx_model: onnx.ModelProto, manifest: dict, alias: str | None = None,
                     tracking_uri: str | None = None) -> str:
    """Logs `onnx_model` with `mlflow.onnx.log_model` in a run of its own, puts `manifest` beside it,
    then registers it as a version of `manifest["name"]` (after the manifest is there, so the gateway
    never sees a version without one). Returns the registry's version."""
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    raw = onnx_model.SerializeToString()
    digest = hashlib.sha256(raw).hexdigest()
    if manifest["sha256"] != digest:
        raise ValueError(f"the manifest's sha256 {manifest['sha256']} is not the model's {digest}")
    name = manifest["name"]
    training = manifest.get("training", {})
    client = MlflowClient()
    mlflow.set_experiment(f"gauntlet/{name}")
    with mlflow.start_run(run_name=f"{name}: {manifest.get('description', '')}"[:250]) as run:
        mlflow.log_metrics({f"holdout_{k}": v for k, v in manifest.get("holdout_metrics", {}).items()})
        split = training.get("split", {})
        mlflow.log_params({k: v for k, v in {
            "dataset": training.get("dataset"), "data_sha256": training.get("data_sha256"),
            "test_size": split.get("test_size"), "random_state": split.get("random_state"),
            "holdout_sha256": split.get("holdout_sha256"),
        }.items() if v is not None})
        # One file, as the gateway loads it: no external data; pinned requirements, so MLflow
        # does not start a process to infer them.
        frameworks = training.get("frameworks", {})
        requirements = [f"{p}=={frameworks[p]}" for p in ("onnx", "onnxruntime") if p in frameworks]
        info = mlflow.onnx.log_model(onnx_model, name="model", save_as_external_data=False,
                                     pip_requirements=requirements or None)
        with tempfile.TemporaryDirectory() as folder:
            path = pathlib.Path(folder) / "manifest.json"
            path.write_text(json.dumps(manifest, indent=2) + "\n")
            client.log_model_artifact(info.model_id, str(path))
        tags = {"description": manifest.get("description", ""), "data_sha256": training.get("data_sha256", ""),
                "task": manifest.get("task", {}).get("kind", ""), "gauntlet_manifest": "manifest.json"}
        registered = mlflow.register_model(info.model_uri, name, tags={k: v for k, v in tags.items() if v})
        if manifest.get("description"):
            client.update_model_version(name, registered.version, description=manifest["description"])
        if alias:
            client.set_registered_model_alias(name, alias, registered.version)
        print(f"{name}: registered version {registered.version} (run {run.info.run_id})"
              + (f", alias '{alias}'" if alias else ""))
        return str(registered.version)


def register(folder: pathlib.Path | str, tracking_uri: str | None = None, alias: str | None = None) -> str:
    """Registers a version folder (model.onnx + manifest.json, as `models/train.py` writes them)."""
    folder = pathlib.Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    model = onnx.load_model_from_string((folder / manifest.get("model_file", "model.onnx")).read_bytes())
    return log_and_register(model, manifest, alias=alias, tracking_uri=tracking_uri)


def log_version(name: str, description: str, estimator, onnx_model: onnx.ModelProto, task: dict, data: dict,
                x_train, x_test, y_test, backends_note: str = "", alias: str | None = None,
                tracking_uri: str | None = None) -> str:
    """Computes the manifest as `models/train.py` does (holdout metrics, reference rows, profile)
    and logs and registers the version."""
    import train
    _, manifest = train.build_manifest(name, "0", description, estimator, onnx_model, task, data,
                                       x_train, x_test, y_test, backends_note)
    return log_and_register(onnx_model, manifest, alias=alias, tracking_uri=tracking_uri)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=pathlib.Path, help="version folders: model.onnx + manifest.json")
    parser.add_argument("--tracking-uri", help="the MLflow tracking server (default: MLFLOW_TRACKING_URI)")
    parser.add_argument("--alias", help="an alias to give the (last) registered version, e.g. challenger")
    args = parser.parse_args()
    for i, folder in enumerate(args.folders):
        last = i == len(args.folders) - 1
        register(folder, tracking_uri=args.tracking_uri, alias=args.alias if last else None)


if __name__ == "__main__":
    main()
