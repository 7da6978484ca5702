#!/usr/bin/env bash
# `make images`: builds the CPU images with podman and prints each one's size (docker/README.md).
#
#   docker/build-images.sh [IMAGE...]     IMAGE: app trainer triton-cpu postgres devtools (default: all)
#
# Environment (all optional): BASE_IMAGE (default debian:bookworm-20251117-slim; here
# localhost/debian-base:bookworm), CONTEXT_EXTRAS (a folder with ca/*.crt and wheels/torch-*.whl, passed as
# the `extras` build context: what podman-setup.sh prints here), TORCH_SPEC / TORCH_INDEX_URL (default: the
# torch wheel in CONTEXT_EXTRAS if there is one, else torch==2.13.0 from PyTorch's CPU index), TAG (dev).
# Every image is built with --format docker (the OCI format drops HEALTHCHECK).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_IMAGE=${BASE_IMAGE:-debian:bookworm-20251117-slim}
TAG=${TAG:-dev}
args=(--format docker --build-arg "BASE_IMAGE=$BASE_IMAGE")
if [ -n "${CONTEXT_EXTRAS:-}" ]; then
  args+=(--build-context "extras=$CONTEXT_EXTRAS")
  wheel=$(cd "$CONTEXT_EXTRAS" && ls wheels/torch-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "${TORCH_SPEC:-}" ] && [ -n "$wheel" ]; then TORCH_SPEC=/extras/$wheel TORCH_INDEX_URL=; fi
fi
torch=(--build-arg "TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}" --build-arg "TORCH_INDEX_URL=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}")

build() {  # NAME IMAGE podman-build-args...
  local name=$1 image=$2 start
  shift 2
  start=$(date +%s)
  podman build "${args[@]}" "$@" -t "$image" . >&2
  printf '%-12s %-42s %8s  built in %ss\n' "$name" "$image" \
    "$(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')" "$(( $(date +%s) - start ))"
}

for what in "${@:-app trainer triton-cpu postgres devtools}"; do
  for one in $what; do
    case $one in
      app) build app "localhost/faceharmony:$TAG" -f docker/Dockerfile --target app "${torch[@]}" ;;
      # Production: the same target on BASE_IMAGE=nvidia/cuda:...-ubuntu24.04 with a CUDA TORCH_INDEX_URL.
      trainer) build trainer "localhost/faceharmony-trainer:$TAG" -f docker/Dockerfile --target app "${torch[@]}" ;;
      triton-cpu) build triton-cpu "localhost/faceharmony-triton-cpu:$TAG" -f docker/Dockerfile --target triton-cpu "${torch[@]}" ;;
      postgres) build postgres "localhost/faceharmony-postgres:$TAG" -f docker/dev/postgres.Dockerfile ;;
      devtools) build devtools "localhost/faceharmony-devtools:$TAG" -f docker/dev/emulators.Dockerfile ;;
      *) echo "build-images.sh: unknown image $one (app trainer triton-cpu postgres devtools)" >&2; exit 2 ;;
    esac
  done
done
