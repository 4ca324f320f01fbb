#!/usr/bin/env bash
# Pre-push check: the README's test command on fresh clones, as a new user or CI would run it.
#
# Each of N rounds (default 3) clones the committed HEAD into a new temporary folder, creates a new
# virtual environment there, installs the test extra exactly as the README says, and runs the test
# suite twice: with OPENBLAS_NUM_THREADS / NUMBA_NUM_THREADS unset, then with both set to 1. Every run
# starts with an empty Numba cache (a new NUMBA_CACHE_DIR) and no .hypothesis/ example database, so
# nothing from this working tree (uncommitted files, compiled kernels, stored examples) can make it pass.
#
#   bash scripts/fresh_clone_check.sh [ROUNDS]        # exit 0 only if every run passed
#
# Uncommitted changes are not tested: commit first. Prints one summary line per run and a final line.
set -uo pipefail

rounds="${1:-3}"
if ! [[ "$rounds" =~ ^[1-9][0-9]*$ ]]; then
    echo "fresh_clone_check: ROUNDS must be a positive integer, got '$rounds'" >&2
    exit 2
fi
repo="$(cd "$(dirname "$0")/.." && pwd)"
head="$(git -C "$repo" rev-parse --short HEAD)" || { echo "fresh_clone_check: $repo is not a git checkout" >&2; exit 2; }
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
    echo "fresh_clone_check: note: uncommitted changes in $repo are not part of the check (HEAD $head is)" >&2
fi
python="${PYTHON:-python3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/refsnn-fresh.XXXXXX")"
trap 'rm -rf "$work"' EXIT
failures=0
summaries=()

for round in $(seq 1 "$rounds"); do
    clone="$work/clone$round"
    git clone -q --no-local "$repo" "$clone" || { echo "fresh_clone_check: git clone failed" >&2; exit 1; }
    # shared/ sits beside the checkout for developers and CI: give the clone the same neighbour.
    if [ -d "$repo/../shared" ] && [ ! -e "$work/shared" ]; then ln -s "$(cd "$repo/../shared" && pwd)" "$work/shared"; fi
    start=$(date +%s)
    if ! (cd "$clone" && "$python" -m venv .venv && .venv/bin/pip install -q -e ".[test]") > "$work/install$round.log" 2>&1; then
        echo "round $round: installation FAILED (log below)"; tail -20 "$work/install$round.log"
        failures=$((failures + 1)); continue
    fi
    for threads in unset 1; do
        rm -rf "$clone/.hypothesis" "$clone/.pytest_cache"
        find "$clone" -name "*.nbi" -delete -o -name "*.nbc" -delete
        cache="$work/numba-cache-$round-$threads"
        mkdir -p "$cache"
        log="$work/pytest-$round-$threads.log"
        if [ "$threads" = unset ]; then
            env -u OPENBLAS_NUM_THREADS -u NUMBA_NUM_THREADS -u OMP_NUM_THREADS NUMBA_CACHE_DIR="$cache" \
                bash -c "cd '$clone' && .venv/bin/python -m pytest -q" > "$log" 2>&1
        else
            env OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 NUMBA_CACHE_DIR="$cache" \
                bash -c "cd '$clone' && .venv/bin/python -m pytest -q" > "$log" 2>&1
        fi
        status=$?
        line="$(grep -E '(passed|failed|error)' "$log" | tail -1)"
        summary="round $round (HEAD $head, threads $threads): exit $status: $line"
        echo "$summary"
        summaries+=("$summary")
        if [ "$status" -ne 0 ]; then
            failures=$((failures + 1))
            grep -E '^(FAILED|ERROR)' "$log" | head -20
        fi
    done
    echo "round $round: $(( $(date +%s) - start )) s including installation"
done

if [ "$failures" -eq 0 ]; then
    echo "fresh_clone_check: all $((rounds * 2)) runs passed on $rounds fresh clones of $head"
    exit 0
fi
echo "fresh_clone_check: $failures run(s) FAILED on fresh clones of $head"
exit 1
