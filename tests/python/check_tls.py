"""The official Triton clients over TLS against a running gateway, with the private CA and without it.

Run by tests/tls.rs (which starts a gateway with `[tls]` on free ports) as
    python tests/python/check_tls.py --rest 127.0.0.1:PORT --grpc 127.0.0.1:PORT --ca ca.pem
Prints one JSON object: what each client did.
"""

import argparse
import json

import gevent.ssl
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from check_tritonclient import holdout

parser = argparse.ArgumentParser()
parser.add_argument("--rest", required=True)
parser.add_argument("--grpc", required=True)
parser.add_argument("--ca", required=True)
args = parser.parse_args()

row = np.asarray(holdout("breast-cancer")[0][:1], dtype=np.float32)
result = {}

# tritonclient.http with secure defaults (verified, host name checked) and the private CA.
rest = httpclient.InferenceServerClient(
    url=args.rest, ssl=True, ssl_options={"ca_certs": args.ca}, ssl_context_factory=gevent.ssl.create_default_context
)
result["http_ready"] = rest.is_server_ready()
inp = httpclient.InferInput("input", list(row.shape), "FP32")
inp.set_data_from_numpy(row, binary_data=True)
result["http_label"] = rest.infer("breast-cancer", [inp]).as_numpy("label").tolist()

# The same without the CA: the system's roots do not know the gateway's certificate.
try:
    httpclient.InferenceServerClient(
        url=args.rest, ssl=True, ssl_context_factory=gevent.ssl.create_default_context
    ).is_server_ready()
    result["http_without_ca"] = "answered"
except Exception as error:  # noqa: BLE001 - any refusal is the point
    result["http_without_ca"] = f"refused: {type(error).__name__}"

# tritonclient.grpc over TLS with the CA as its root certificates.
grpc = grpcclient.InferenceServerClient(url=args.grpc, ssl=True, root_certificates=args.ca)
result["grpc_ready"] = grpc.is_server_ready()
inp = grpcclient.InferInput("input", list(row.shape), "FP32")
inp.set_data_from_numpy(row)
result["grpc_label"] = grpc.infer("breast-cancer", [inp]).as_numpy("label").tolist()

try:
    grpcclient.InferenceServerClient(url=args.grpc, ssl=True).is_server_ready(client_timeout=10)
    result["grpc_without_ca"] = "answered"
except Exception as error:  # noqa: BLE001
    result["grpc_without_ca"] = f"refused: {type(error).__name__}"

print(json.dumps(result))
