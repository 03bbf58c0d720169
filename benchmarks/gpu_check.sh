#!/usr/bin/env bash
# GPU check: the GPU tests (pytest -m gpu) and compute-sanitizer (memcheck, racecheck,
# initcheck) over benchmarks/gpu_sanitize_driver.py, then a record in benchmarks/results/:
# device, driver, CuPy / CUDA versions, git commit, kernels/ hash, pytest and sanitizer
# summaries (gpu_check-<UTC stamp>.json, full logs beside it in gpu_check-<stamp>.log).
#
#   bash benchmarks/gpu_check.sh            # from anywhere; PYTHON=... to pick the interpreter
#   SKIP_SANITIZER=1 bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p benchmarks/results
record=benchmarks/results/gpu_check-$stamp.json
log=benchmarks/results/gpu_check-$stamp.log
: > "$log"

echo "== pytest -m gpu" | tee -a "$log"
"$PYTHON" -m pytest -m gpu tests -q -rs -p no:cacheprovider 2>&1 | tee -a "$log.pytest"
pytest_rc=${PIPESTATUS[0]}
cat "$log.pytest" >> "$log"
pytest_summary=$(grep -E "(passed|failed|skipped|error|no tests ran)" "$log.pytest" | tail -1)
rm -f "$log.pytest"

sanitizer=$(command -v compute-sanitizer || true)
[ -z "$sanitizer" ] && [ -x /usr/local/cuda/bin/compute-sanitizer ] && sanitizer=/usr/local/cuda/bin/compute-sanitizer
declare -A san_summary san_rc
for tool in memcheck racecheck initcheck; do
    if [ -n "${SKIP_SANITIZER:-}" ] || [ -z "$sanitizer" ]; then
        san_summary[$tool]="not run (${SKIP_SANITIZER:+SKIP_SANITIZER set}${sanitizer:-compute-sanitizer not found})"
        san_rc[$tool]=null
        continue
    fi
    echo "== compute-sanitizer --tool $tool" | tee -a "$log"
    out=$("$sanitizer" --tool "$tool" --error-exitcode 99 "$PYTHON" benchmarks/gpu_sanitize_driver.py 2>&1)
    san_rc[$tool]=$?
    echo "$out" >> "$log"
    san_summary[$tool]="$(echo "$out" | grep -E "ERROR SUMMARY|RACECHECK SUMMARY" | tail -1) / $(echo "$out" | grep -E "wrong results" | tail -1)"
    echo "${san_summary[$tool]} (exit ${san_rc[$tool]})"
done

kernels_sha256=$(find kernels -type f | sort | xargs cat | sha256sum | cut -d' ' -f1)
RECORD="$record" LOG="$log" PYTEST_RC="$pytest_rc" PYTEST_SUMMARY="$pytest_summary" \
KERNELS_SHA256="$kernels_sha256" \
MEMCHECK="${san_summary[memcheck]}" MEMCHECK_RC="${san_rc[memcheck]}" \
RACECHECK="${san_summary[racecheck]}" RACECHECK_RC="${san_rc[racecheck]}" \
INITCHECK="${san_summary[initcheck]}" INITCHECK_RC="${san_rc[initcheck]}" \
"$PYTHON" - <<'PY'
import json, os, subprocess, datetime

def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except Exception as exc:
        return f"unavailable ({type(exc).__name__})"

def rc(name):
    v = os.environ[name]
    return None if v == "null" else int(v)

info = {}
try:
    import cupy
    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    info = {
        "device": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
        "compute_capability": dev.compute_capability,
        "driver_version": cupy.cuda.runtime.driverGetVersion(),
        "cuda_runtime_version": cupy.cuda.runtime.runtimeGetVersion(),
        "nvrtc_version": list(cupy.cuda.nvrtc.getVersion()),  # CuPy's (its fallback compiles)
        "cupy_version": cupy.__version__,
    }
except Exception as exc:
    info = {"device": f"unavailable ({type(exc).__name__}: {exc})"}
try:  # the NVRTC that builds the kernels (sepconv_gpu/backends/nvrtc.py)
    from sepconv_gpu.backends import nvrtc
    toolkit = nvrtc.toolkit()
    info["sepconv_nvrtc"] = {"version": list(toolkit.version), "library": toolkit.library}
except Exception as exc:
    info["sepconv_nvrtc"] = f"unavailable ({type(exc).__name__}: {exc})"
record = {
    "kind": "gpu_check",
    "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    **info,
    "nvidia_smi": sh("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"),
    "git_commit": sh("git", "rev-parse", "HEAD"),
    "git_dirty": bool(sh("git", "status", "--porcelain", "--", "kernels", "sepconv_gpu")),
    "kernels_sha256": os.environ["KERNELS_SHA256"],
    "pytest": {"exit_code": int(os.environ["PYTEST_RC"]), "summary": os.environ["PYTEST_SUMMARY"]},
    "sanitizer": {
        tool: {"exit_code": rc(tool.upper() + "_RC"), "summary": os.environ[tool.upper()]}
        for tool in ("memcheck", "racecheck", "initcheck")
    },
    "log": os.path.basename(os.environ["LOG"]),
}
with open(os.environ["RECORD"], "w") as fh:
    json.dump(record, fh, indent=2)
print(json.dumps(record, indent=2))
PY
echo "record: $record"
failed=$(( pytest_rc != 0 ))
for tool in memcheck racecheck initcheck; do
    [ "${san_rc[$tool]}" != null ] && [ "${san_rc[$tool]}" != 0 ] && failed=1
done
exit $failed
