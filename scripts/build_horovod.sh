#!/usr/bin/env bash
# Opt-in (`make horovod`): build Horovod 0.28.1 from the PyPI sdist against this environment's torch — CPU, gloo, no
# MPI/TensorFlow/MXNet — into build/horovod-site (the project's venv is left alone), then run tests/test_horovod.py
# under horovodrun with 2 and 4 processes.
#
# The only source change is scripts/horovod-0.28.1-torch-cxx17.patch, two lines: 0.28.1 compiles its PyTorch plugin
# as C++14 and torch >= 2.1 headers need C++17. Raising only the plugin's standard is not enough: the bundled gloo,
# still C++14, defines gloo::rendezvous::Store::kDefaultTimeout out of line, and C++17 makes that static constexpr
# member an inline definition in the plugin's objects, so the link fails with "multiple definition". The project-wide
# standard is raised too, which compiles gloo as C++17 with the plugin.
#
# Environment: PY (python with torch; default .venv/bin/python), JOBS (parallel compile jobs; default 2),
# HOROVOD_NP (process counts to test; default "2 4").
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PY:-$ROOT/.venv/bin/python}
JOBS=${JOBS:-2}
NPS=${HOROVOD_NP:-2 4}
WORK=$ROOT/build/horovod
SITE=$ROOT/build/horovod-site
VERSION=0.28.1

if [ ! -f "$SITE/.built-$VERSION" ]; then
    start=$(date +%s)
    rm -rf "$WORK" "$SITE"
    mkdir -p "$WORK"
    "$PY" -m pip download --quiet --no-deps --no-binary :all: "horovod==$VERSION" -d "$WORK"
    tar xzf "$WORK/horovod-$VERSION.tar.gz" -C "$WORK"
    patch -d "$WORK/horovod-$VERSION" -p1 < "$ROOT/scripts/horovod-$VERSION-torch-cxx17.patch"
    # --no-build-isolation: the plugin must compile against the torch that will import it
    HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_TENSORFLOW=1 \
        HOROVOD_WITHOUT_MXNET=1 HOROVOD_CPU_OPERATIONS=gloo MAKEFLAGS="-j$JOBS" \
        "$PY" -m pip install --no-build-isolation --no-deps --target "$SITE" "$WORK/horovod-$VERSION"
    # horovodrun's own dependencies (pure Python or self-contained wheels)
    "$PY" -m pip install --quiet --no-deps --target "$SITE" cloudpickle psutil pyyaml packaging
    touch "$SITE/.built-$VERSION"
    echo "horovod $VERSION built in $(( $(date +%s) - start )) s (JOBS=$JOBS)"
fi

export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import horovod, horovod.torch as hvd; print('horovod', horovod.__version__,
      'gloo built:', hvd.gloo_built(), 'mpi built:', hvd.mpi_built())"
for np in $NPS; do
    echo "== tests/test_horovod.py under horovodrun -np $np --gloo"
    # every rank runs the module; the multi-process tests read hvd.size() and compare across ranks
    "$PY" -m horovod.runner.launch -np "$np" --gloo -H "localhost:$np" \
        "$PY" -m pytest -q -p no:cacheprovider tests/test_horovod.py -k "with_horovod" -x
done
