#!/usr/bin/env bash
# Start or stop the local services of the portable runner (Beam's job service and a worker pool).
#
#   eval "$(bash scripts/portable_services.sh start)"    # exports STEPLABEL_JOB_ENDPOINT and
#                                                         # STEPLABEL_WORKER_POOL
#   .venv/bin/steplabel run jobs/demo.yaml --runner portable \
#       --runner-profile jobs/runners/portable.yaml --out out/demo-portable
#   bash scripts/portable_services.sh stop
#
# STATE_DIR (default .portable-services) keeps pids, ports and logs. Extra arguments go to the
# service module (for example --pythonpath tests for the tests' scripted engines).
set -euo pipefail
cd "$(dirname "$0")/.."
command="${1:?usage: portable_services.sh start|stop [--pythonpath DIR ...]}"
shift
exec .venv/bin/python -m steplabel.pipelines.services "$command" \
    --state-dir "${STATE_DIR:-.portable-services}" "$@"
