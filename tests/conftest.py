import pytest
from mmrank_testkit import sample_image_bytes, tiny_model_dir
from mmrank_testkit.http_server import image_routes, serve

IMAGE_HOST_PNG = sample_image_bytes(6)


@pytest.fixture(scope="session")
def jina_dir():
    return tiny_model_dir("jina")


@pytest.fixture(scope="module")
def image_host():
    """An image host on 127.0.0.1 (``image_routes``: /ok.png, /redirect.png, /slow.png?delay=S,
    /trickle.png) for tests that make ``mmrank serve`` fetch image URLs; ``.url``, ``.paths()``, ``.png``."""
    with serve(image_routes(IMAGE_HOST_PNG)) as server:
        server.png = IMAGE_HOST_PNG
        yield server


@pytest.fixture(scope="session")
def jina_reranker(jina_dir):
    from mmrank import JinaRerankerM0

    return JinaRerankerM0(jina_dir, device="cpu", dtype="float32")
