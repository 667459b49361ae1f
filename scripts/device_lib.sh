# Shell functions the device scripts share, sourced from the repo root: `. scripts/device_lib.sh`.

# Run "$@" for at most $1 seconds (0: no limit). Being stopped by the limit is not a failure: a stopped training run
# resumes from its last epoch on the next call, a stopped ablation keeps the rows it finished.
limited() {
    local seconds=$1; shift
    if [ "$seconds" -gt 0 ]; then
        timeout --signal=INT --kill-after=15 "$seconds" "$@" || [ $? -eq 124 ]
    else
        "$@"
    fi
}
