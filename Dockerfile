# mmrank serve — the Jina-compatible /v1/rerank API — in a CPU container.
#
#   docker build -t mmrank-serve .                      # from the repository root
#   docker run --rm -p 8080:8080 \
#       -v "$HOME/.cache/huggingface:/home/mmrank/.cache/huggingface" \
#       -e MMRANK_SERVE_API_KEY=change-me \
#       mmrank-serve --model jinaai/jina-reranker-m0
#
# Arguments after the image name are passed to `mmrank serve` (see `mmrank serve --help`); the container
# always listens on 0.0.0.0:8080. The model is downloaded from the Hugging Face hub on first start into the
# mounted cache (or mount a local copy and pass `--model /models/jina-reranker-m0`; set HF_HUB_OFFLINE=1 to
# forbid downloads). jina-reranker-m0, the default model, is licensed CC-BY-NC-4.0: non-commercial use only.
#
# GPU (documented, not built here): start from an image with the CUDA runtime and install a CUDA build of
# PyTorch instead of python:3.11-slim + the CPU wheel, e.g.
#     FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04    # then install Python 3.11+ and pip
#     RUN pip install --index-url https://download.pytorch.org/whl/cu128 "torch==${TORCH_VERSION}"
# or a pytorch/pytorch:<version>-cuda<version>-cudnn9-runtime image (PyTorch already in it: skip the torch
# step). Keep the rest, and run with `docker run --gpus all ... mmrank-serve --device cuda`; the host needs
# the NVIDIA driver and the NVIDIA Container Toolkit.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/home/mmrank/.cache/huggingface

# PyTorch first, from PyTorch's CPU index: the default wheel on PyPI is the multi-GB CUDA build.
ARG TORCH_VERSION=2.13.0
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"

# The core with the server extra, from this checkout (`pip install "mmrank[serve]"` once it is on PyPI).
COPY packages/mmrank /tmp/mmrank
RUN pip install "/tmp/mmrank[serve,metrics]" && rm -rf /tmp/mmrank

RUN useradd --create-home --uid 1000 mmrank
USER mmrank
WORKDIR /home/mmrank

EXPOSE 8080
# Loading the model can take minutes on CPU: the start period covers it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]
ENTRYPOINT ["mmrank", "serve", "--host", "0.0.0.0", "--port", "8080"]
CMD []
