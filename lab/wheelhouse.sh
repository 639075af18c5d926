#!/usr/bin/env bash
# The wheelhouse the roles install the agent from (hvds_agent_wheelhouse): the hvds-agent wheel
# of the agent as committed (HEAD:agent, not the work tree: what a fresh clone would deploy),
# and the wheels of its dependencies at the versions requirements.txt pins. Rebuilt only when
# the committed agent or the pins change.
#   lab/wheelhouse.sh [DIR]     default: build/lab/wheels
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${HVDS_VENV:-$repo/.venv}"
out="${1:-$repo/build/lab/wheels}"
want="$(git -C "$repo" rev-parse HEAD:agent) $(sha256sum <"$repo/requirements.txt" | cut -c1-16)"
if [[ -f "$out/.source" && "$(cat "$out/.source")" == "$want" ]]; then
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git -C "$repo" archive HEAD agent | tar -x -C "$work"
echo "wheelhouse: building the agent $(git -C "$repo" rev-parse --short HEAD:agent) and its dependencies" >&2
"$venv/bin/python" -m pip wheel -q --wheel-dir "$work/wheels" \
  --constraint "$repo/requirements.txt" "$work/agent" 2>&1 | grep -v "^WARNING: Location" >&2 || true
ls "$work"/wheels/hvds_agent-*.whl >/dev/null
rm -rf "$out"
mkdir -p "$(dirname "$out")"
mv "$work/wheels" "$out"
echo "$want" >"$out/.source"
