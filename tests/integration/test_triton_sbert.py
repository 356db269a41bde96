"""SBERT through a real tritonserver: semantics, shape, normalisation, per-request errors."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from services.common.errors import InvalidArgument, Unavailable
from services.inference.ports import SBERT_DIM
from services.inference.triton import TritonInference
from services.launcher import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
async def embedder(triton_url: str):
    client = TritonInference(triton_url, timeout_s=30)
    yield client
    await client.close()


async def test_sbert_is_ready_with_its_model_id(embedder: TritonInference) -> None:
    status = await embedder.model_status("sbert")
    assert (status.state, status.model_id, status.backend) == ("ready", "sbert/all-MiniLM-L6-v2", "triton")
    assert embedder.known_model_id("sbert") == "sbert/all-MiniLM-L6-v2"


async def test_paraphrase_ranks_above_unrelated(embedder: TritonInference) -> None:
    query, paraphrase, unrelated = await embedder.embed_sentences(
        ["the cat sat on the mat", "a kitten is resting on a rug", "quarterly revenue grew 5 percent"]
    )
    assert float(query @ paraphrase) > float(query @ unrelated) + 0.3


async def test_vectors_are_384d_float32_unit_norm(embedder: TritonInference) -> None:
    vectors = await embedder.embed_sentences(["hello world", "ünïcödé text ✓", "x" * 5000])
    assert vectors.shape == (3, SBERT_DIM)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


async def test_large_inputs_are_split_into_batches(embedder: TritonInference) -> None:
    texts = [f"sentence number {i} about topic {i % 7}" for i in range(150)]
    vectors = await embedder.embed_sentences(texts)
    assert vectors.shape == (150, SBERT_DIM)
    single = await embedder.embed_sentences([texts[100]])
    np.testing.assert_allclose(vectors[100], single[0], atol=1e-5)


async def test_empty_input_gives_empty_matrix(embedder: TritonInference) -> None:
    assert (await embedder.embed_sentences([])).shape == (0, SBERT_DIM)


async def test_empty_text_is_invalid_argument(embedder: TritonInference) -> None:
    with pytest.raises(InvalidArgument) as info:
        await embedder.embed_sentences(["fine", "   ", "also fine"])
    assert [v.field for v in info.value.field_violations] == ["texts[1]"]


async def test_model_rejects_empty_text_per_request(triton_url: str) -> None:
    """Server side: the request with an empty text fails alone; requests batched with it succeed."""
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(triton_url)

    async def infer(texts: list[str]):
        batch = np.array([[t.encode()] for t in texts], dtype=np.object_)
        request = grpcclient.InferInput("TEXT", list(batch.shape), "BYTES")
        request.set_data_from_numpy(batch)
        return await client.infer("sbert", [request], client_timeout=30)

    try:
        results = await asyncio.gather(
            infer(["a good sentence"]), infer(["ok", ""]), infer(["another good one"]), return_exceptions=True
        )
    finally:
        await client.close()
    assert isinstance(results[1], InferenceServerException)
    assert "INVALID_ARGUMENT" in str(results[1].status())
    for good in (results[0], results[2]):
        assert good.as_numpy("EMBEDDING").shape == (1, SBERT_DIM)


async def test_unreachable_server_is_unavailable() -> None:
    client = TritonInference(f"127.0.0.1:{free_port()}", timeout_s=3)
    try:
        assert not (await client.model_status("sbert")).usable
        with pytest.raises(Unavailable):
            await client.embed_sentences(["hello"])
    finally:
        await client.close()


def test_tritons_admin_apis_are_refused(triton_url: str) -> None:
    """The mesh only infers: loading or unloading models, the repository index, shared memory, statistics,
    tracing and log settings need a header no client has (Triton's restricted APIs)."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(triton_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live  # health stays open
        assert stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="sbert"), timeout=10).name == "sbert"
        refused = {
            "unload": lambda: stub.RepositoryModelUnload(service_pb2.RepositoryModelUnloadRequest(model_name="sbert"),
                                                         timeout=10),
            "load": lambda: stub.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(model_name="sbert"),
                                                     timeout=10),
            "index": lambda: stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(), timeout=10),
            "statistics": lambda: stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name="sbert"), timeout=10),
            "logging": lambda: stub.LogSettings(service_pb2.LogSettingsRequest(), timeout=10),
        }
        for name, call in refused.items():
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, name
            assert "restricted" in (err.value.details() or "").lower() or "header" in (err.value.details() or ""), name
        assert stub.ModelReady(service_pb2.ModelReadyRequest(name="sbert"), timeout=10).ready  # still loaded
