"""ChatImageOptions: how ChatReranker sizes and sends images, as one object (``images=``) or as the flat
keywords it always took (``min_pixels=``, ``max_pixels=``, ``image_factor=``, ``allow_remote_urls=``). Checked
on the messages the scorer sends: the image sizes inside the ``data:`` URIs and the URLs passed through."""

from __future__ import annotations

import base64
import io

import pytest
from mmrank import ChatImageOptions, ChatReranker, Document, InputError
from mmrank.scorers.chat import fit_size
from PIL import Image

URL = "http://127.0.0.1:9/v1"
REMOTE_IMAGE = "http://93.184.216.34/page.png"  # a public address literal: no DNS, never fetched here


def sent_images(r: ChatReranker, page: Image.Image, remote: bool = True) -> list:
    """The image parts of the listwise window ``[page, remote URL image, text]`` (without the remote image
    when not ``remote``) as ``r`` would send it: the pixel size of a ``data:`` URI, or the URL itself."""
    docs = [Document(image=page), *([Document(image=REMOTE_IMAGE)] if remote else []), "text"]
    messages, _ = r.window_messages("q", docs)
    out = []
    for m in messages:
        for part in m["content"] if isinstance(m["content"], list) else []:
            if part["type"] == "image_url":
                url = part["image_url"]["url"]
                if url.startswith("data:"):
                    out.append(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size)
                else:
                    out.append(url)
    return out


@pytest.mark.parametrize("method", ["listwise", "pairwise"])
def test_images_and_flat_keywords_send_the_same_images(method):
    page = Image.new("RGB", (1800, 1000), (10, 120, 240))
    knobs = {"min_pixels": 32 * 32, "max_pixels": 200 * 32 * 32, "image_factor": 32, "allow_remote_urls": True}
    flat = ChatReranker(URL, "m", method=method, **knobs)
    grouped = ChatReranker(URL, "m", method=method, images=ChatImageOptions(**knobs))
    if method == "pairwise":
        docs = [Document(image=page)]
        assert flat.pair_messages("q", docs[0]) == grouped.pair_messages("q", docs[0])
        return
    got = sent_images(flat, page)
    assert got == sent_images(grouped, page)
    w, h = got[0]
    assert (w, h) == fit_size(1800, 1000, 32, 32 * 32, 200 * 32 * 32) and w % 32 == 0 and w * h <= 200 * 32 * 32
    assert got[1] == REMOTE_IMAGE  # passed through to the server
    # a flat keyword replaces that field of images=
    mixed = ChatReranker(URL, "m", images=ChatImageOptions(**knobs), image_factor=28, allow_remote_urls=False)
    assert mixed.images == ChatImageOptions(**{**knobs, "image_factor": 28, "allow_remote_urls": False})
    w, h = sent_images(mixed, page, remote=False)[0]
    assert (w, h) == fit_size(1800, 1000, 28, 32 * 32, 200 * 32 * 32) and w % 28 == 0


def test_max_pixels_defaults_to_the_local_scorers_budget_per_method():
    from mmrank.models.options import LISTWISE_MAX_PIXELS, MAX_PIXELS

    assert ChatReranker(URL, "m").max_pixels == LISTWISE_MAX_PIXELS
    assert ChatReranker(URL, "m", method="pairwise").max_pixels == MAX_PIXELS
    assert ChatReranker(URL, "m", images=ChatImageOptions(max_pixels=5000)).max_pixels == 5000


@pytest.mark.parametrize("kw,message", [
    ({"min_pixels": 0}, "min_pixels must be an integer >= 1, got 0"),
    ({"max_pixels": -5}, "max_pixels must be an integer >= 1, got -5"),
    ({"image_factor": 2.5}, "image_factor must be an integer >= 1, got 2.5"),
    ({"image_factor": True}, "image_factor must be an integer >= 1, got True"),
    ({"min_pixels": 5000, "max_pixels": 4000}, r"min_pixels \(5000\) must not exceed max_pixels \(4000\)"),
    ({"allow_remote_urls": "no"}, "allow_remote_urls must be True or False, got 'no'"),
])
def test_bad_image_options_are_refused_with_a_message(kw, message):
    with pytest.raises(InputError, match=message):
        ChatImageOptions(**kw)
    with pytest.raises(InputError, match=message):
        ChatReranker(URL, "m", **kw)


def test_a_min_pixels_above_the_method_default_needs_max_pixels():
    with pytest.raises(InputError, match=r"min_pixels \(300000\) exceeds the listwise default max_pixels "
                                         r"\(200704\); pass max_pixels too"):
        ChatReranker(URL, "m", min_pixels=300_000)
    assert ChatReranker(URL, "m", method="pairwise", min_pixels=300_000).min_pixels == 300_000
    with pytest.raises(InputError, match="images must be a ChatImageOptions, got dict"):
        ChatReranker(URL, "m", images={"max_pixels": 5000})
