"""The official `tritonclient.grpc`, with its default settings, against a running gateway's gRPC port.

Run by tests/tritonclient.rs (which starts the demo gateway on free ports) as
    python tests/python/check_tritonclient_grpc.py --url 127.0.0.1:GRPC_PORT --rest 127.0.0.1:HTTP_PORT
Every answer is compared with the same request's REST answer (tritonclient.http) and with ONNX
Runtime in Python on the same rows and model file.
"""

import argparse
import sys
import unittest

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from check_tritonclient import holdout, manifest, reference

URL = "127.0.0.1:8001"
REST = "127.0.0.1:8000"


class TritonGrpcClientDefaults(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = grpcclient.InferenceServerClient(url=URL)
        cls.rest = httpclient.InferenceServerClient(url=REST)

    def infer(self, model, x, version="", outputs=None, request_id=""):
        inp = grpcclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return self.client.infer(model, [inp], model_version=version, outputs=outputs, request_id=request_id)

    def infer_rest(self, model, x):
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        return self.rest.infer(model, [inp])

    def test_live_ready_and_model_ready(self):
        self.assertTrue(self.client.is_server_live())
        self.assertTrue(self.client.is_server_ready())
        self.assertTrue(self.client.is_model_ready("breast-cancer"))
        self.assertTrue(self.client.is_model_ready("breast-cancer", "3"))
        self.assertFalse(self.client.is_model_ready("breast-cancer", "9"))
        self.assertFalse(self.client.is_model_ready("no-such-model"))

    def test_metadata_equals_rest(self):
        self.assertEqual(self.client.get_server_metadata().name, "gauntlet")
        for model in ["breast-cancer", "diabetes"]:
            meta = self.client.get_model_metadata(model, as_json=True)
            rest = self.rest.get_model_metadata(model)
            self.assertEqual(meta["name"], rest["name"])
            self.assertEqual(meta["versions"], rest["versions"])
            self.assertEqual(meta["platform"], rest["platform"])
            for side in ["inputs", "outputs"]:
                got = [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta[side]]
                want = [(t["name"], t["datatype"], t["shape"]) for t in rest[side]]
                self.assertEqual(got, want)

    def test_one_and_two_rows_equal_rest_and_onnxruntime(self):
        x, _ = holdout("breast-cancer")
        for rows in [x[:1], x[1:3]]:
            result = self.infer("breast-cancer", rows)
            rest = self.infer_rest("breast-cancer", rows)
            response = result.get_response()
            self.assertEqual(response.model_name, "breast-cancer")
            self.assertEqual(response.model_version, "1")
            for output in ["label", "probabilities"]:
                np.testing.assert_array_equal(result.as_numpy(output), rest.as_numpy(output))
            expected = reference("breast-cancer", "1", rows)
            np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
            np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"], atol=1e-5, rtol=0)

    def test_holdout_accuracy_and_request_id(self):
        x, y = holdout("breast-cancer")
        result = self.infer("breast-cancer", x, request_id="tritonclient-grpc-1")
        self.assertEqual(result.get_response().id, "tritonclient-grpc-1")
        accuracy = float((result.as_numpy("label") == y).mean())
        self.assertAlmostEqual(accuracy, manifest("breast-cancer", "1")["holdout_metrics"]["accuracy"], places=12)

    def test_requested_outputs_versions_and_regression(self):
        x, _ = holdout("breast-cancer")
        result = self.infer("breast-cancer", x[:5], outputs=[grpcclient.InferRequestedOutput("probabilities")])
        self.assertIsNone(result.as_numpy("label"))
        self.assertEqual(result.as_numpy("probabilities").shape, (5, 2))
        result = self.infer("breast-cancer", x[:8], version="3")
        self.assertEqual(result.get_response().model_version, "3")
        np.testing.assert_array_equal(result.as_numpy("label"), reference("breast-cancer", "3", x[:8])["label"])
        xd, _ = holdout("diabetes")
        result = self.infer("diabetes", xd)
        np.testing.assert_allclose(result.as_numpy("variable"), reference("diabetes", "1", xd)["variable"], rtol=1e-5, atol=1e-3)

    def check_refused(self, status, needle, call):
        with self.assertRaises(InferenceServerException) as caught:
            call()
        self.assertEqual(caught.exception.status(), status)
        self.assertIn(needle, caught.exception.message())

    def test_error_codes(self):
        x, _ = holdout("breast-cancer")
        # A wrong shape: 30 features for a 10-feature model.
        self.check_refused("StatusCode.INVALID_ARGUMENT", "the model expects [-1, 10]", lambda: self.infer("diabetes", x[:1]))

        def wrong_datatype():
            inp = grpcclient.InferInput("input", [1, 30], "FP64")
            inp.set_data_from_numpy(x[:1].astype(np.float64))
            self.client.infer("breast-cancer", [inp])

        self.check_refused("StatusCode.INVALID_ARGUMENT", "datatype FP64 but the model expects FP32", wrong_datatype)
        self.check_refused("StatusCode.NOT_FOUND", "not served", lambda: self.infer("no-such-model", x[:1]))
        self.check_refused("StatusCode.NOT_FOUND", "no version '9'", lambda: self.infer("breast-cancer", x[:1], version="9"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="host:port of the gateway's gRPC listener")
    parser.add_argument("--rest", required=True, help="host:port of the same gateway's REST listener")
    args, rest = parser.parse_known_args()
    URL, REST = args.url, args.rest
    unittest.main(argv=[sys.argv[0], "-v", *rest])
