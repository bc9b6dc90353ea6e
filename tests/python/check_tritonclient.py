"""The official `tritonclient.http`, with its default settings, against a running gateway.

Run by tests/tritonclient.rs (which starts the demo gateway on a free port) as
    python tests/python/check_tritonclient.py --url 127.0.0.1:PORT
Every prediction is compared with ONNX Runtime in Python on the same rows and model file.
"""

import argparse
import csv
import json
import pathlib
import sys
import unittest

import numpy as np
import onnxruntime
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

MODELS = pathlib.Path(__file__).resolve().parents[2] / "models"
URL = "127.0.0.1:8000"


def holdout(model):
    with open(MODELS / model / "holdout.csv") as f:
        rows = list(csv.reader(f))[1:]
    x = np.array([[float(v) for v in r[:-1]] for r in rows], dtype=np.float32)
    y = np.array([float(r[-1]) for r in rows])
    return x, y


def reference(model, version, x):
    session = onnxruntime.InferenceSession(str(MODELS / model / version / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"input": x})))


def manifest(model, version):
    return json.loads((MODELS / model / version / "manifest.json").read_text())


class TritonClientDefaults(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = httpclient.InferenceServerClient(url=URL)

    def infer(self, model, x, version="", binary=True, outputs=None):
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        return self.client.infer(model, [inp], model_version=version, outputs=outputs)

    def test_server_and_model_ready(self):
        self.assertTrue(self.client.is_server_live())
        self.assertTrue(self.client.is_server_ready())
        self.assertTrue(self.client.is_model_ready("breast-cancer"))
        self.assertTrue(self.client.is_model_ready("breast-cancer", "3"))
        self.assertFalse(self.client.is_model_ready("no-such-model"))

    def test_metadata(self):
        server = self.client.get_server_metadata()
        self.assertEqual(server["name"], "gauntlet")
        meta = self.client.get_model_metadata("breast-cancer")
        self.assertEqual(meta["versions"], ["1", "2", "3", "4"])
        self.assertEqual(meta["inputs"], [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}])
        self.assertEqual([o["name"] for o in meta["outputs"]], ["label", "probabilities"])

    def test_one_row_matches_onnxruntime_in_python(self):
        x, _ = holdout("breast-cancer")
        row = x[:1]
        result = self.infer("breast-cancer", row)
        expected = reference("breast-cancer", "1", row)
        response = result.get_response()
        self.assertEqual(response["model_name"], "breast-cancer")
        self.assertEqual(response["model_version"], "1")
        np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"], atol=1e-5, rtol=0)

    def test_many_rows_match_and_reproduce_holdout_accuracy(self):
        x, y = holdout("breast-cancer")
        result = self.infer("breast-cancer", x)
        expected = reference("breast-cancer", "1", x)
        labels = result.as_numpy("label")
        np.testing.assert_array_equal(labels, expected["label"])
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"], atol=1e-5, rtol=0)
        accuracy = float((labels == y).mean())
        self.assertAlmostEqual(accuracy, manifest("breast-cancer", "1")["holdout_metrics"]["accuracy"], places=12)

    def test_json_tensors_and_requested_outputs(self):
        x, _ = holdout("breast-cancer")
        outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=False)]
        result = self.infer("breast-cancer", x[:5], binary=False, outputs=outputs)
        self.assertIsNone(result.as_numpy("label"))
        np.testing.assert_allclose(result.as_numpy("probabilities"), reference("breast-cancer", "1", x[:5])["probabilities"], atol=1e-5, rtol=0)

    def test_every_version_directly(self):
        x, _ = holdout("breast-cancer")
        for version in ["2", "3", "4"]:
            result = self.infer("breast-cancer", x[:16], version=version)
            self.assertEqual(result.get_response()["model_version"], version)
            expected = reference("breast-cancer", version, x[:16])
            np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
            np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"], atol=1e-5, rtol=0)

    def test_regression(self):
        x, _ = holdout("diabetes")
        for version in ["1", "2"]:
            result = self.infer("diabetes", x, version=version)
            np.testing.assert_allclose(result.as_numpy("variable"), reference("diabetes", version, x)["variable"], rtol=1e-5, atol=1e-3)

    def test_errors_raise_with_the_gateway_message(self):
        x, _ = holdout("breast-cancer")
        with self.assertRaises(InferenceServerException) as caught:
            self.infer("no-such-model", x[:1])
        self.assertIn("not served", str(caught.exception))
        with self.assertRaises(InferenceServerException) as caught:
            self.infer("diabetes", x[:1])  # 30 features for a 10-feature model
        self.assertIn("the model expects [-1, 10]", str(caught.exception))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="host:port of a running gateway")
    args, rest = parser.parse_known_args()
    URL = args.url
    unittest.main(argv=[sys.argv[0], "-v", *rest])
