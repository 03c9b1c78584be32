# kindchat GPU deployment image: CUDA PyTorch, the package, `kindchat serve` as the entry point.
#
#   docker build -t kindchat .
#   docker run --gpus all -p 8000:8000 -v /srv/kindchat:/var/lib/kindchat \
#     -e KINDCHAT_BACKEND=deepspeed kindchat
#
# Models come from the volume (a registry written by `kindchat bootstrap` / `kindchat train …`,
# or a real KULLM / Polyglot-Ko directory passed with --model); nothing is fetched from a hub.
# The devel image carries nvcc, which DeepSpeed needs to JIT-build its inference kernels.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-devel

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    KINDCHAT_HOME=/var/lib/kindchat \
    KINDCHAT_DATA_DIR=/data/vaiv \
    KINDCHAT_HOST=0.0.0.0 \
    KINDCHAT_PORT=8000 \
    KINDCHAT_BACKEND=hf

WORKDIR /opt/kindchat
COPY pyproject.toml README.md ./
COPY kindchat ./kindchat
# Keep the image's CUDA torch: a constraint stops pip from swapping it for another build.
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/torch.txt \
 && pip install --constraint /tmp/torch.txt . \
 && useradd --create-home --uid 1000 kindchat \
 && mkdir -p "$KINDCHAT_HOME" && chown kindchat "$KINDCHAT_HOME"

USER kindchat
VOLUME ["/var/lib/kindchat"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
  CMD python -c "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"KINDCHAT_PORT\"]}/healthz')"
ENTRYPOINT ["kindchat"]
CMD ["serve"]
