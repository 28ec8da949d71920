#!/usr/bin/env bash
# Build facerec-rest:$TAG and facerec-worker:$TAG (TAG=dev: the dev overlay's images) on the
# base scripts/base-image.sh picks, one after the other so the second reuses the first's
# layers, then print their sizes and the layers they share. Needs an engine that answers
# (`make images` starts one with scripts/docker-engine.sh).
#   TAG=0.1.0 scripts/images.sh          DOCKER_BUILDKIT=0: the legacy builder
set -euo pipefail
cd "$(dirname "$0")/.."
DOCKER=$(scripts/docker-engine.sh client)
TAG=${TAG:-dev}
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-1}
base=$(scripts/base-image.sh)
# Both images from one snapshot of the sources: the same context gives the same build-stage
# layers (so the second build reuses the first's virtualenv), and a file edited meanwhile
# cannot end up in one image only. .dockerignore still decides what is sent.
context=$(mktemp -d /var/tmp/facerec-context.XXXXXX)
trap 'rm -rf "$context"' EXIT
tar -c --exclude=./.git --exclude=./.venv --exclude=./.run --exclude=./.cache \
    --exclude=__pycache__ . \
    | tar -x -C "$context"

progress=()
[ "$DOCKER_BUILDKIT" = 1 ] && progress=(--progress=plain)
for name in rest worker; do
    start=$(date +%s%N)
    # --network host: pip reaches PyPI from the build stage (the engine may have no bridge).
    "$DOCKER" build "${progress[@]}" --network host --build-arg "PYTHON_IMAGE=$base" \
        -f "$context/Dockerfile.$name" -t "facerec-$name:$TAG" "$context"
    echo "built facerec-$name:$TAG on $base in $(( ($(date +%s%N) - start) / 1000000 )) ms"
done

mb() { echo "$(( ($1 + 500000) / 1000000 )) MB"; }
layers() { "$DOCKER" image inspect -f '{{range .RootFS.Layers}}{{println .}}{{end}}' "$1"; }
rest=facerec-rest:$TAG worker=facerec-worker:$TAG
# The virtualenv is each image's top layer (see the Dockerfiles); its size in bytes:
venv_layer() { layers "$1" | grep . | tail -n 1; }
venv_size=$("$DOCKER" history --no-trunc --human=false --format '{{.Size}} {{.CreatedBy}}' \
            "$worker" | awk '/COPY .*\/opt\/venv \/opt\/venv/ {print $1; exit}')
printf '%-22s %8s %7s  %s\n' image size layers "virtualenv layer ($(mb "$venv_size"))"
for image in "$rest" "$worker"; do
    printf '%-22s %8s %7s  %s\n' "$image" \
        "$(mb "$("$DOCKER" image inspect -f '{{.Size}}' "$image")")" \
        "$(layers "$image" | grep -c .)" "$(venv_layer "$image")"
done
if [ "$(layers "$rest")" = "$(layers "$worker")" ]; then
    echo "the two images have the same layers, the virtualenv included"
else
    echo "the images' layers differ: they do not share the virtualenv layer" >&2
    exit 1
fi
