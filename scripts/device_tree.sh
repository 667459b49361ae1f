#!/usr/bin/env bash
# Make the working tree small enough to travel to a lent accelerator, and put it back afterwards.
#
# The device tool sends the tracked files plus the `carry` paths, 64 MiB at most. The tracked tree is about 83 MB
# (the shipped checkpoints and the committed figures), so a device call fails before it starts. The device scripts
# need neither the Imagenette checkpoints (for CIFAR-10 work) nor the committed figures, so:
#
#   bash scripts/device_tree.sh hide [PATH ...]   # default: the Imagenette checkpoints, results/synthesis,
#                                                 # results/adaptive, examples (about 47 MB); prints the size left
#   ... device calls ...
#   bash scripts/device_tree.sh restore           # the index and .git/info/exclude as they were
#
# `hide` takes the paths out of git's index (`git rm --cached`: the files stay on disk) and ignores them in
# .git/info/exclude between two marker lines. Never commit while they are hidden: the commit would delete them.
# `restore` refuses nothing and is safe to run twice.
set -euo pipefail
cd "$(dirname "$0")/.."
EXCLUDE=.git/info/exclude BEGIN="# device_tree.sh hide: begin" END="# device_tree.sh hide: end"
case "${1:-}" in
hide)
    shift
    paths=("$@")
    if [ ${#paths[@]} -eq 0 ]; then
        paths=(checkpoints/imagenette-* results/synthesis results/adaptive examples)
    fi
    if grep -qF "$BEGIN" "$EXCLUDE" 2>/dev/null; then echo "already hidden: run '$0 restore' first" >&2; exit 1; fi
    for path in "${paths[@]}"; do  # before any marker is written: an untracked path failed `git rm` after them,
        # and left the next hide refused ("already hidden") until a restore
        git ls-files --error-unmatch -- "$path" > /dev/null 2>&1 || { echo "$path is not tracked by git: nothing to hide there" >&2; exit 1; }
    done
    mkdir -p "$(dirname "$EXCLUDE")"
    { echo "$BEGIN"; for path in "${paths[@]}"; do echo "/${path%/}/"; done; echo "$END"; } >> "$EXCLUDE"
    git rm -r -q --cached -- "${paths[@]}"
    echo "hidden: ${paths[*]}"
    echo "tracked files now: $(git ls-files -z | du -cb --files0-from=- | tail -n 1 | cut -f1) bytes (limit 67108864 with carry)"
    echo "DO NOT COMMIT until: bash $0 restore"
    ;;
restore)
    hidden=()  # the paths `hide` took out, from between its marker lines: only they go back into the index, so
    # that a change the user had staged stays staged
    if [ -e "$EXCLUDE" ]; then
        while IFS= read -r line; do
            line=${line#/}; hidden+=("${line%/}")
        done < <(sed -n "/^$BEGIN\$/,/^$END\$/p" "$EXCLUDE" | sed '1d;$d')
        sed -i "/^$BEGIN\$/,/^$END\$/d" "$EXCLUDE"
    fi
    if [ ${#hidden[@]} -gt 0 ]; then git reset -q -- "${hidden[@]}"; fi
    git status --short | head -n 5
    ;;
*)
    echo "usage: $0 hide [PATH ...] | restore" >&2; exit 2 ;;
esac
