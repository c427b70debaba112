import pytest
from mmrank_testkit import tiny_model_dir


@pytest.fixture(scope="session")
def jina_dir():
    return tiny_model_dir("jina")


@pytest.fixture(scope="session")
def jina_reranker(jina_dir):
    from mmrank import JinaRerankerM0

    return JinaRerankerM0(jina_dir, device="cpu", dtype="float32")
