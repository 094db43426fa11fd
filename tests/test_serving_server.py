"""`deploy-unet serve` on the real Triton server PyTriton bundles: loopback only, free ports, bounded in time.

One server per module scope (start ~3 s, stop ~4 s on 2 cores). The tests compare served outputs with the
same runner called in this process, send concurrent and malformed traffic, and check that shutdown leaves
no process, workspace or shared memory behind.
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import TOKEN, ServeProcess, alive, command_name, require_serve_extra

pytestmark = pytest.mark.serve
require_serve_extra()

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from deploy_unet.runtime import open_runner  # noqa: E402

MODEL = "thin_unet"
SIZES = [(16, 16), (32, 32), (24, 40), (40, 24), (8, 64)]


@pytest.fixture(scope="module")
def onnx_path(thin_unet_onnx):
    return thin_unet_onnx[1]


@pytest.fixture(scope="module")
def reference(onnx_path):
    with open_runner(onnx_path, threads=1) as runner:
        yield lambda x: runner.infer({"input": x})["logits"]


@pytest.fixture(scope="module")
def server(onnx_path):
    proc = ServeProcess.ready(onnx_path, "--threads", "1", "--max-size", "64x64", "--max-queue-delay-us", "3000",
                              model=MODEL)
    try:
        yield proc
    finally:
        proc.cleanup()


def http_infer(client, x, dtype="FP32", name="input", model=MODEL):
    inp = httpclient.InferInput(name, list(x.shape), dtype)
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp]).as_numpy("logits")


def grpc_infer(client, x, model=MODEL):
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp]).as_numpy("logits")


def close_to(served, expected):
    """Equal to the in-process runner up to float reordering (the server may batch requests together), with
    the same argmax mask."""
    assert served.shape == expected.shape and served.dtype == np.float32
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5 * max(1.0, float(np.abs(expected).max())))
    np.testing.assert_array_equal(served.argmax(1), expected.argmax(1))


def left_in(tmpdir: Path) -> list[str]:
    """What a run left in its TMPDIR, less the ``.ses`` file ONNX Runtime 1.32 writes there at import (not ours)."""
    return sorted(p.name for p in tmpdir.iterdir() if p.name != ".ses")


def images(seed, n, h, w):
    return np.random.default_rng(seed).standard_normal((n, 3, h, w)).astype(np.float32)


def test_http_and_grpc_answers_equal_a_direct_runner_call(server, reference):
    x = images(0, 2, 32, 48)
    with httpclient.InferenceServerClient(server.http_url) as h:
        close_to(http_infer(h, x), reference(x))
        meta = h.get_model_metadata(MODEL)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        close_to(grpc_infer(grpc, x), reference(x))
    finally:
        grpc.close()
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [("input", "FP32", [-1, 3, -1, -1])]
    assert [(t["name"], t["shape"]) for t in meta["outputs"]] == [("logits", [-1, 2, -1, -1])]
    ready = server.stderr()
    assert "serving model 'thin_unet' (onnxruntime, 2 instances x 1 thread)" in ready  # the CPU default and "127.0.0.1:" in ready


def test_eight_clients_times_25_mixed_requests_each_get_their_own_answer(server, reference):
    clients, per_client = 8, 25
    plan = {(c, i): (SIZES[(c + i) % len(SIZES)], 1 + (c * 7 + i) % 2) for c in range(clients) for i in range(per_client)}
    inputs = {key: images(1000 * key[0] + key[1], n, h, w) for key, ((h, w), n) in plan.items()}
    expected = {key: reference(x) for key, x in inputs.items()}
    received: dict = {}
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client(c):
        use_grpc = c % 2 == 1
        conn = grpcclient.InferenceServerClient(server.grpc_url) if use_grpc else \
            httpclient.InferenceServerClient(server.http_url, network_timeout=60)
        try:
            start.wait(30)
            for i in range(per_client):
                x = inputs[(c, i)]
                out = grpc_infer(conn, x) if use_grpc else http_infer(conn, x)
                with lock:
                    received[(c, i)] = out
        finally:
            conn.close()

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, c) for c in range(clients)]
        for f in futures:
            f.result(timeout=180)
    assert len(received) == clients * per_client  # none lost
    for key, out in received.items():  # none swapped: every input is distinct, so is every answer
        close_to(out, expected[key])
    # Triton's dynamic batcher merged concurrent requests of equal shape into fewer model executions.
    with httpclient.InferenceServerClient(server.http_url) as h:
        stats = h.get_inference_statistics(MODEL, headers={"triton-access-token": TOKEN})["model_stats"][0]
    assert stats["inference_count"] >= clients * per_client
    assert stats["execution_count"] < stats["inference_count"], stats


def _raw_http_infer(server, header: dict, body: bytes, declared_json_size: int | None = None):
    """A binary-tensor HTTP request built by hand, so its body can disagree with its header."""
    head = json.dumps(header).encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.ports["http"], timeout=30)
    try:
        conn.request("POST", f"/v2/models/{MODEL}/infer", body=head + body, headers={
            "Inference-Header-Content-Length": str(declared_json_size or len(head)),
            "Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def test_malformed_requests_get_errors_and_the_server_keeps_serving(server, reference):
    good = images(7, 1, 16, 16)
    x = images(8, 1, 32, 32)
    cases = {
        "wrong dtype": (x.astype(np.float64), "FP64", "expects 'FP32'"),
        "wrong channels": (images(9, 1, 32, 32)[:, :1].repeat(4, 1), "FP32", "[-1,3,-1,-1]"),
        "wrong rank": (x[0], "FP32", "[-1,3,-1,-1]"),
        "size the contract refuses": (images(10, 1, 30, 32), "FP32", "height 30 is not divisible by 8 (= 2**3 for UNet "
                                      "depth 3); nearest valid: 32 or 24; or serve with --input image, which takes any image size"),
        "over the size limit": (images(11, 1, 72, 72), "FP32", "72x72 exceeds 64x64, the largest --max-size takes"),
        "batch over max_batch_size": (images(12, 9, 16, 16), "FP32", "batch-size must be <= 8"),
        "NaN values": (np.full((1, 3, 16, 16), np.nan, np.float32), "FP32", "NaN or Inf"),
    }
    with httpclient.InferenceServerClient(server.http_url) as h:
        for what, (array, dtype, message) in cases.items():
            with pytest.raises(InferenceServerException) as info:
                http_infer(h, array, dtype)
            assert message in str(info.value), (what, str(info.value)[-400:])
            close_to(http_infer(h, good), reference(good))  # and the next good request is answered

        # A body larger than its header declares (8 extra bytes after the tensor): Triton refuses it.
        header = {"inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32",
                              "parameters": {"binary_data_size": good.nbytes}}],
                  "outputs": [{"name": "logits", "parameters": {"binary_data": False}}]}
        status, text = _raw_http_infer(server, header, good.tobytes() + b"\0" * 8)
        assert status == 400 and "unexpected" in text.lower(), (status, text[:300])
        status, text = _raw_http_infer(server, header, good.tobytes())  # the same request, well formed
        assert status == 200, text[:300]
        close_to(np.asarray(json.loads(text)["outputs"][0]["data"], np.float32).reshape(1, 2, 16, 16),
                 reference(good))
        close_to(http_infer(h, good), reference(good))
    assert "refused 1 request(s): height 30 is not divisible by 8" in server.stderr()  # one line in the server log


def test_admin_endpoints_need_the_token_and_inference_does_not(server):
    with httpclient.InferenceServerClient(server.http_url) as h:
        with pytest.raises(InferenceServerException, match="(?i)permission|restricted|denied|unauthori"):
            h.get_model_repository_index()
        with pytest.raises(InferenceServerException, match="(?i)permission|restricted|denied|unauthori"):
            h.unload_model(MODEL)
        assert h.is_model_ready(MODEL)  # the unload above was refused
        index = h.get_model_repository_index(headers={"triton-access-token": TOKEN})
        assert [(m["name"], m["state"]) for m in index] == [(MODEL, "READY")]


def test_sigterm_stops_the_server_and_leaves_nothing_behind(server):
    tritons = [pid for pid in server.children if command_name(pid) == "tritonserver"]
    assert len(tritons) == 1 and server.children  # the real server, with its python-backend stub below it
    (workspace,) = [p for p in server.tmpdir.iterdir() if p.name.startswith("deploy-unet-serve-")]
    assert (workspace / "workspace" / "model-store").is_dir() and str(workspace) in server.stderr()
    started = time.monotonic()
    assert server.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 20
    assert "stopped (signal 15)" in server.stderr()
    assert not [pid for pid in server.children if alive(pid)]  # no orphan tritonserver, stub or helper
    assert left_in(server.tmpdir) == []  # no workspace, model store, socket or log left
    leftover = [p.name for p in Path("/dev/shm").iterdir() if f"pytrtion{server.proc.pid}-" in p.name]
    assert leftover == []


def test_a_port_in_use_is_one_error_line_and_nothing_starts(onnx_path):
    import socket

    from click.testing import CliRunner

    from deploy_unet.cli import cli
    from deploy_unet.serving.server import free_port

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", str(onnx_path), "--http-port", str(free_port()),
                                          "--grpc-port", str(port), "--metrics-port", str(free_port())])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: --grpc-port {port}: 127.0.0.1:{port} cannot be bound")
    assert result.output.count("\n") == 1


# --- a second server: raw images in, masks out -------------------------------------------------------------


@pytest.fixture(scope="module")
def image_server(onnx_path):
    proc = ServeProcess.ready(onnx_path, "--input", "image", "--output", "mask", "--model-name", "seg", "--threads",
                              "1", "--instances", "2", model="seg")
    try:
        yield proc
    finally:
        proc.cleanup()


def test_image_in_mask_out_equals_predict_processing(image_server, onnx_path):
    from deploy_unet.describe import read_model_info
    from deploy_unet.processing import Preprocessing, postprocess, preprocess

    spec = Preprocessing.from_model_info(read_model_info(onnx_path))
    rgb = (np.random.default_rng(3).random((2, 30, 45, 3)) * 255).astype(np.uint8)  # not a multiple of 8
    grey = (np.random.default_rng(4).random((1, 17, 23, 1)) * 255).astype(np.uint8)
    with open_runner(onnx_path, threads=1) as runner, httpclient.InferenceServerClient(image_server.http_url) as h:
        for image in (rgb, grey):
            prepared = preprocess(image, spec)
            expected = postprocess(runner.infer({"input": prepared.array})["logits"], prepared.geometry)
            inp = httpclient.InferInput("image", list(image.shape), "UINT8")
            inp.set_data_from_numpy(image)
            mask = h.infer("seg", [inp]).as_numpy("mask")
            assert mask.dtype == np.uint8 and mask.shape == image.shape[:3]
            np.testing.assert_array_equal(mask, expected)
        config = h.get_model_config("seg")
        assert [g["count"] for g in config["instance_group"]] == [2]  # --instances 2: two runners
        bad = np.zeros((1, 8, 8, 5), np.uint8)
        inp = httpclient.InferInput("image", list(bad.shape), "UINT8")
        inp.set_data_from_numpy(bad)
        with pytest.raises(InferenceServerException, match="image has 5 channels but the model takes 3"):
            h.infer("seg", [inp])
    assert image_server.stop(signal.SIGINT) == 0  # Ctrl-C stops it the same way
    assert "stopped (signal 2)" in image_server.stderr()
    assert left_in(image_server.tmpdir) == []
