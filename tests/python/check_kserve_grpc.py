"""KServe's own `InferenceGRPCClient` against a running gateway's gRPC port, in a process (and an
environment, target/python-kserve) of its own: kserve cannot be imported beside tritonclient.grpc
(kserve#3099).

Run by tests/tritonclient.rs as
    python tests/python/check_kserve_grpc.py --url 127.0.0.1:GRPC_PORT
Prints one JSON line: the answers, which the Rust test compares with REST's.
"""

import argparse
import asyncio
import csv
import json
import pathlib

import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest

MODELS = pathlib.Path(__file__).resolve().parents[2] / "models"


def holdout(model):
    with open(MODELS / model / "holdout.csv") as f:
        rows = list(csv.reader(f))[1:]
    return np.array([[float(v) for v in r[:-1]] for r in rows], dtype=np.float32)


async def main(url):
    client = InferenceGRPCClient(url)
    out = {"server_ready": await client.is_server_ready(), "model_ready": await client.is_model_ready("breast-cancer")}
    x = holdout("breast-cancer")[:2]
    for binary in [True, False]:
        inp = InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        response = await client.infer(InferRequest(model_name="breast-cancer", infer_inputs=[inp], request_id=f"kserve-{binary}"))
        out[f"binary={binary}"] = {
            "id": response.id,
            "model_version": response.model_version,
            "outputs": {o.name: o.as_numpy().tolist() for o in response.outputs},
        }
    inp = InferInput("input", [1, 29], "FP32")
    inp.set_data_from_numpy(x[:1, :29])
    try:
        await client.infer(InferRequest(model_name="breast-cancer", infer_inputs=[inp]))
        out["wrong_shape"] = "accepted"
    except grpc.aio.AioRpcError as error:
        out["wrong_shape"] = {"code": error.code().name, "details": error.details()}
    await client.close()
    print(json.dumps(out))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="host:port of the gateway's gRPC listener")
    asyncio.run(main(parser.parse_args().url))
