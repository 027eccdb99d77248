# syntax=docker/dockerfile:1.7
# The ingest image: python -m services.ingest on python:3.11-slim, as user 10001, read-only root
# filesystem ready (no writes outside /tmp and /var/lib/ragchat, both volumes in k8s/).
# Build from the repository root:  docker build -f docker/ingest.Dockerfile -t ragchat/ingest .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: the virtual environment and the generated gRPC code ---------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
RUN python -m venv /opt/venv
COPY requirements.txt requirements-dev.txt constraints.txt ./
COPY docker/requirements/ingest.txt docker/requirements/image.txt
# Versions pinned by requirements.txt and constraints.txt; grpcio-tools (pinned by
# requirements-dev.txt) only here, to generate the code.
RUN /opt/venv/bin/pip install -r docker/requirements/image.txt -c requirements.txt -c constraints.txt \
 && pip install --target /opt/protoc "$(grep -i '^grpcio-tools==' requirements-dev.txt)" -c constraints.txt
COPY protos/ protos/
RUN mkdir -p gen \
 && PYTHONPATH=/opt/protoc python -m grpc_tools.protoc -Iprotos --python_out=gen --grpc_python_out=gen protos/ragchat/v1/*.proto \
 && touch gen/ragchat/__init__.py gen/ragchat/v1/__init__.py
COPY services/ services/

# ---- runtime -------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install --no-install-recommends -y tesseract-ocr tesseract-ocr-kor \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 ragchat \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin ragchat \
 && install -d -o 10001 -g 10001 /var/lib/ragchat
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app/gen /app/gen
COPY --from=build /app/services /app/services
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
EXPOSE 50052
ENTRYPOINT ["python", "-m", "services.ingest"]
