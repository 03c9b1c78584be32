# kindchat GPU deployment image: CUDA PyTorch, the package, `kindchat serve` as the entry point.
#
#   docker build -t kindchat .
#   docker run --gpus all -p 8000:8000 -v /srv/kindchat:/var/lib/kindchat \
#     -e KINDCHAT_BACKEND=deepspeed kindchat
#   # or a TGI server as the generator (KULLM template applied by kindchat):
#   docker run -p 8000:8000 -v /srv/kindchat:/var/lib/kindchat kindchat \
#     serve --backend tgi --tgi-url http://tgi:80
#
# KINDCHAT_BACKEND: hf (transformers, continuous batching), deepspeed (init_inference, fused
# kernels injected on the GPU) or tgi. The served registry aliases are KINDCHAT_SERVE_ALIASES
# (default ["rlhf","sft"], API names kindchat-rlhf / kindchat-sft); when the nightly job moves an
# alias the server hot-swaps without a restart. Batch and queue: KINDCHAT_MAX_BATCH_SIZE,
# KINDCHAT_MAX_QUEUE (full queue -> 429 + Retry-After).
# Models come from the volume (a registry written by `kindchat bootstrap` / `kindchat train …`);
# nothing is fetched from a hub.
# The devel image carries nvcc, which DeepSpeed needs to JIT-build its inference kernels.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-devel

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    KINDCHAT_HOME=/var/lib/kindchat \
    KINDCHAT_DATA_DIR=/data/vaiv \
    KINDCHAT_HOST=0.0.0.0 \
    KINDCHAT_PORT=8000 \
    KINDCHAT_BACKEND=hf \
    KINDCHAT_MAX_BATCH_SIZE=32 \
    KINDCHAT_MAX_QUEUE=256

WORKDIR /opt/kindchat
COPY pyproject.toml README.md requirements.lock ./
COPY kindchat ./kindchat
# The versions of requirements.lock (what CI tests), as constraints; the image's CUDA torch is
# kept (the lock's CPU torch line is left out, and a constraint stops pip swapping the build).
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/torch.txt \
 && grep -v '^torch==' requirements.lock > /tmp/lock.txt \
 && pip install --constraint /tmp/torch.txt --constraint /tmp/lock.txt ".[postgres]" \
 && useradd --create-home --uid 1000 kindchat \
 && mkdir -p "$KINDCHAT_HOME" && chown kindchat "$KINDCHAT_HOME"

USER kindchat
VOLUME ["/var/lib/kindchat"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
  CMD python -c "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"KINDCHAT_PORT\"]}/healthz')"
ENTRYPOINT ["kindchat"]
CMD ["serve"]
