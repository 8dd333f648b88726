# cliptune images, two targets of one build stage (CUDA libtorch by default):
#
#   serve (the default, last stage): `cliptune serve` as a non-root user, on its own.
#   docker build -t cliptune:0.1.0-cuda .                    # CUDA layout (make setup CUDA=1)
#   docker build --build-arg CUDA=0 -t cliptune:0.1.0-cpu .  # lean CPU layout
#   docker run --gpus all -p 8080:8080 -v cliptune-data:/data \
#     -e CLIPTUNE_API_TOKEN="$(openssl rand -hex 32)" cliptune:0.1.0-cuda
#
#   dataloop: the runner image a Dataloop service runs (docs/dataloop.md, "The runner image").
#   docker build --target dataloop -t <registry>/cliptune-runner:0.1.0 .
#   docker push <registry>/cliptune-runner:0.1.0
#
# The serve image listens on 0.0.0.0, so `serve` refuses to start without CLIPTUNE_API_TOKEN
# (or CLIPTUNE_ALLOW_UNAUTHENTICATED=true, for a trusted network only).
# The CUDA libraries come from the torch wheel's nvidia-* packages, so the runtime images
# need only the host's NVIDIA driver (NVIDIA Container Toolkit, `--gpus all`).
# See docs/operations.md. (Not built in CI: no container engine there.)

ARG CUDA=1
# One of Dataloop's public runner images (Python, dtlpy's agent and its requirements); the
# CPU ones (e.g. hub.dataloop.ai/dtlpy-runner-images/cpu:python3.10_opencv) go with CUDA=0.
ARG RUNNER_IMAGE=hub.dataloop.ai/dtlpy-runner-images/gpu:python3.10_cuda11.8_opencv

FROM rust:1-bookworm AS build
ARG CUDA
# nasm: libjpeg-turbo's SIMD (bit-identical output, JPEG decoding about a third faster;
# docs/preprocessing.md "SIMD JPEG decoding").
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip g++ make nasm \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/cliptune
# libtorch first: this layer (GBs) stays cached while the sources change.
COPY Makefile ./
COPY scripts/setup-libtorch.sh scripts/
RUN make setup CUDA=${CUDA}
COPY . .
RUN cargo build --release --bin cliptune \
 && install -D target/release/cliptune /out/usr/local/bin/cliptune
# Keep only the shared libraries the binary loads, at the paths baked into its rpath.
RUN if [ "$CUDA" = 1 ]; then \
      tar cf - .libtorch-venv/lib/python3*/site-packages/torch/lib \
               .libtorch-venv/lib/python3*/site-packages/nvidia; \
    else \
      tar cf - .libtorch/lib; \
    fi | (mkdir -p /out/opt/cliptune && tar xf - -C /out/opt/cliptune)

# The Dataloop runner image: the agent starts as the base image says (its user, entry point
# and working directory), so this stage adds files only. The runner module (dataloop/) lands
# in the working directory, where the agent resolves the manifest's entry point; the
# binary's rpath points at /opt/cliptune, where the libraries are.
FROM ${RUNNER_IMAGE} AS dataloop
COPY --from=build /out/ /
COPY dataloop/ ./dataloop/

FROM debian:bookworm-slim AS serve
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home --home-dir /home/cliptune cliptune \
 && mkdir -p /data && chown cliptune:cliptune /data
COPY --from=build /out/ /
USER cliptune
ENV CLIPTUNE_HOME=/data \
    CLIPTUNE_ADDR=0.0.0.0:8080 \
    CLIPTUNE_DEVICE=auto \
    CLIPTUNE_LOG=info
VOLUME /data
EXPOSE 8080
# SIGTERM drains: running executions finish within CLIPTUNE_DRAIN_SECONDS or stop at a step
# boundary (training keeps its epoch checkpoint and resumes on the next start). Give the
# container at least that long to stop (docker stop -t, terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["cliptune"]
CMD ["serve"]
