# Two images from one source tree: `api` (FastAPI, no torch: a small image) and `worker`
# (torch; pip's default torch wheel on Linux carries its CUDA libraries, so the worker
# uses the GPUs the NVIDIA container toolkit gives it and falls back to the CPU).
FROM python:3.11-slim AS source
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY capacity_service capacity_service
COPY workers workers
COPY migrations migrations

FROM source AS api
RUN pip install -e ".[server,postgres]"
USER nobody
EXPOSE 8000
CMD ["capacity", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-migrate"]

FROM source AS worker
RUN pip install -e ".[worker,postgres]"
USER nobody
CMD ["capacity", "worker"]
