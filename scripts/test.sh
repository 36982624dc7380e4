#!/usr/bin/env bash
# Install what the tests need and run them: the README's test command, and what CI runs.
#   scripts/test.sh                 default suite (slow tests left out)
#   scripts/test.sh -m slow         the slow tests
#   scripts/test.sh tests/test_x.py any pytest arguments
# As root on Debian it installs and starts a single-node SLURM cluster (slurm-wlm, munge) and
# pdflatex (texlive) so the SLURM and LaTeX tests run for real; elsewhere those tests are skipped.
# A cluster it started is stopped again when it exits (its jobs cancelled), so that afterwards
# `cluster: auto` runs locally as on a fresh machine; a cluster that was already up is left up.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  command -v slurmctld >/dev/null || need+=(slurm-wlm)
  command -v munged >/dev/null || need+=(munge)
  command -v pdflatex >/dev/null || need+=(texlive-latex-base texlive-latex-recommended)
  if [ ${#need[@]} -gt 0 ]; then
    echo "[test.sh] apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  if ! scripts/slurm_local.sh status; then
    trap 'scripts/slurm_local.sh stop' EXIT
    scripts/slurm_local.sh
  fi
  export NPEDIT_REQUIRE_SLURM=1
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first: the CPU-capable pinned pair that this machine serves from disk when available
python -m pip install -q "torch>=2.4" "torchvision>=0.19"
python -m pip install -q -e ".[test]"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
python -m pytest "$@"
