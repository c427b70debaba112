"""mmrank in LlamaIndex: a VectorStoreIndex query engine with MMRankRerank as node postprocessor.

    pip install -e packages/llama-index-postprocessor-mmrank-rerank
    python examples/llamaindex_rerank.py [--model jinaai/jina-reranker-m0] [--device cuda]

The index embeds with a toy offline embedding and answers with MockLLM so that the example runs anywhere;
use your own embed_model / llm in practice.
"""

from __future__ import annotations

import hashlib

from _sample_data import QUERY, TEXTS, make_images, parse_args, run, scorer_options
from llama_index.core import VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.schema import ImageNode, QueryBundle, TextNode
from llama_index.postprocessor.mmrank_rerank import MMRankRerank


class ToyEmbedding(BaseEmbedding):
    """Hashed bag of words: a stand-in for a real embedding model."""

    def _vec(self, text: str) -> list[float]:
        v = [0.0] * 32
        for w in text.lower().split():
            v[hashlib.md5(w.encode()).digest()[0] % 32] += 1.0
        return v

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vec(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vec(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vec(text)


def main() -> None:
    args = parse_args(__doc__)
    images = make_images()
    nodes = [TextNode(text=t) for t in TEXTS]
    nodes.append(ImageNode(image_path=str(images["page"]), text="", metadata={"file_name": "fact sheet"}))
    nodes.append(ImageNode(image_path=str(images["photo"]), text="A small red house."))  # text + image

    rerank = MMRankRerank(model=args.model, device=args.device, top_n=3, reranker_kwargs=scorer_options(args))
    index = VectorStoreIndex(nodes, embed_model=ToyEmbedding())
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=len(nodes), node_postprocessors=[rerank])

    response = engine.query(QUERY)
    print(f"query: {QUERY}")
    for rank, n in enumerate(response.source_nodes, start=1):
        kind = ("text+image" if n.node.get_content() else "image") if isinstance(n.node, ImageNode) else "text"
        print(f"{rank}. score={n.score:.4f} [{kind}] {n.node.get_content()[:60] or n.node.metadata.get('file_name')}")

    # An image query: QueryBundle.image_path.
    out = rerank.postprocess_nodes(index.as_retriever(similarity_top_k=len(nodes)).retrieve("capital"),
                                   query_bundle=QueryBundle(query_str="", image_path=str(images["page"])))
    print(f"image query -> score={out[0].score:.4f} {out[0].node.get_content()[:60]}")


if __name__ == "__main__":
    run(main)
