#!/usr/bin/env bash
# `molecule test` of the collection's roles, one scenario per role in extensions/molecule/<role>
# (docs/decisions/0016-molecule.md): systemd containers from the lab's image (lab/image.sh) under
# rootful podman, on their own network hvds-mol (10.90.8.0/24), containers hvds-mol-*.
#   scripts/molecule.sh                      every role's scenario, one after the other
#   scripts/molecule.sh agent manager        those only
#   MOLECULE_ARGS="--destroy=never" scripts/molecule.sh agent   keep the containers to look at
# Installs what it needs first (Debian packages for the lab, the pinned molecule virtualenv
# build/molecule-venv, the wheelhouse build/molecule/wheels, the image); safe to run again. The
# time of each scenario at the end; each scenario's output in build/molecule/logs/<role>.log.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
roles=(manager agent replication_link protection_groups recovery)
(($#)) && roles=("$@")
for role in "${roles[@]}"; do
  [[ -f "extensions/molecule/$role/molecule.yml" ]] ||
    { echo "molecule: no scenario extensions/molecule/$role" >&2; exit 2; }
done

bash scripts/setup.sh lab

# molecule in its own virtualenv, pinned (requirements-molecule.txt), made again when the pins change.
venv="$repo/build/molecule-venv"
want="$(sha256sum <requirements-molecule.txt | cut -c1-16)"
if [[ ! -x "$venv/bin/molecule" || "$(cat "$venv/.requirements" 2>/dev/null)" != "$want" ]]; then
  echo "molecule: installing requirements-molecule.txt into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r requirements-molecule.txt 2>&1 |
    grep -v "^WARNING: Location" >&2 || true
  "$venv/bin/molecule" --version >/dev/null
  echo "$want" >"$venv/.requirements"
fi

# The lab's environment (CONTAINERS_CONF, the collection on ANSIBLE_COLLECTIONS_PATH), with
# molecule's virtualenv first on PATH.
# shellcheck source=/dev/null
source lab/env.sh
export PATH="$venv/bin:$PATH"
# The agent's wheelhouse (the committed agent), apart from the lab's so that neither run
# disturbs the other; extensions/molecule/shared/inventory points the roles at it.
bash lab/wheelhouse.sh "$repo/build/molecule/wheels"
HVDS_MOL_IMAGE="$(bash lab/image.sh)"
export HVDS_MOL_IMAGE

logs="$repo/build/molecule/logs"
mkdir -p "$logs"
timings=() failed=()
for role in "${roles[@]}"; do
  echo "== molecule test -s $role"
  started=$SECONDS
  # shellcheck disable=SC2086
  if molecule test -s "$role" ${MOLECULE_ARGS:-} 2>&1 | tee "$logs/$role.log"; then
    result=passed
  else
    result=FAILED
    failed+=("$role")
  fi
  timings+=("$(printf '%4ds  %-18s %s' $((SECONDS - started)) "$role" "$result")")
done
printf '\n== molecule timings\n'
printf '%s\n' "${timings[@]}"
if ((${#failed[@]})); then
  echo "molecule: FAILED: ${failed[*]} (logs in $logs)" >&2
  exit 1
fi
