#!/usr/bin/env bash
# The lab demo: two sites in systemd containers, deployed by the collection's playbooks/site.yml.
#   1. builds the lab image if missing (debootstrap, about a minute) and starts the containers
#   2. builds the agent's wheelhouse (the committed agent, HEAD:agent) if it changed
#   3. runs playbooks/site.yml: certificates, managers, taps and VDSAs, pairing, the VPG
#   4. runs it again: it must report no change (changed=0 on every host)
#   5. lab/demo-check.yml: writes an ext4 file system through hv-a1's tap, checkpoints, and
#      shows hv-b1's mirror equal to the source by sha256, and what the data analyzer reads on it
#   6. lab/demo-recovery.yml: a failover test of site A's VMs at site B (they boot there and find
#      exactly the writes of the checkpoint), then a live failover of site B's VM to a tagged
#      checkpoint with commit and reverse protection (it boots at site A without the writes made
#      after the checkpoint, goes on, and is protected back to site B)
#   7. lab/demo-report.yml: VPGs, RPO, checkpoints, bytes replicated and on the wire, analyzer
#   8. playbooks/collect_logs.yml: a log bundle from each site's manager, into build/lab/logs
# Options: --fresh removes the lab's containers (and CA) first (make demo does: the demo fails a
# VPG over, so a second run starts from a new lab); --down removes the containers at the end. Times of each step at the end; logs in build/lab/logs/.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fresh=false down=false
for arg in "$@"; do
  case "$arg" in
    --fresh) fresh=true ;;
    --down) down=true ;;
    *) echo "usage: $0 [--fresh] [--down]" >&2; exit 2 ;;
  esac
done

cd "$repo"
bash scripts/setup.sh lab
# shellcheck source=/dev/null
source lab/env.sh
logs="$repo/build/lab/logs"
mkdir -p "$logs"
timings=()
started=$SECONDS
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; step_started=$SECONDS; step_name="$*"; }
done_step() { timings+=("$(printf '%4ds  %s' $((SECONDS - step_started)) "$step_name")"); }
finish() {
  local rc=$?
  if $down; then bash lab/lab.sh down >/dev/null 2>&1 || true; fi
  if ((${#timings[@]})); then
    printf '\n\033[1m== timings\033[0m\n'; printf '%s\n' "${timings[@]}"
    printf '%4ds  total\n' $((SECONDS - started))
  fi
  ((rc == 0)) || echo "lab demo FAILED (logs in $logs)" >&2
  exit $rc
}
trap finish EXIT

if $fresh; then
  step "remove the old lab"
  bash lab/lab.sh down
  rm -rf build/lab/pki
  done_step
fi

playbook() { # LOG PLAYBOOK: run it, show the task lines as they come, keep the whole output
  local log="$1"; shift
  ansible-playbook -i inventory/lab "$@" 2>&1 | tee "$log" |
    grep --line-buffered -E '^(PLAY|TASK|changed|fatal|failed|\[ERROR\])| : ok=|MATCH|sha256|VPG|checkpoint|recovered at|analyzer' |
    grep --line-buffered -v '^PLAY RECAP'
  return "${PIPESTATUS[0]}"
}

step "lab containers (image built if missing)"
bash lab/lab.sh up
done_step

step "agent wheelhouse"
bash lab/wheelhouse.sh
done_step

step "the lab VMs' guest (kernel + busybox initramfs), on every hypervisor"
bash tests/guest/build-guest.sh build/lab/guest
playbook "$logs/guest.log" lab/guest.yml
done_step


step "site.yml, first run"
playbook "$logs/site-1.log" playbooks/site.yml
done_step

step "site.yml, second run: must change nothing"
playbook "$logs/site-2.log" playbooks/site.yml
recap="$(sed -n '/^PLAY RECAP/,$p' "$logs/site-2.log")"
echo "$recap"
if grep -E ' : ok=' <<<"$recap" | grep -vq 'changed=0 '; then
  echo "the second run of site.yml changed something" >&2
  grep -B3 '^changed:' "$logs/site-2.log" | grep -E '^(TASK|changed)' >&2 || true
  exit 1
fi
done_step

step "write through the tap at site A, checkpoint, compare the mirror at site B"
playbook "$logs/demo-check.log" lab/demo-check.yml
done_step

step "failover test (site A's VMs booted at site B), live failover with commit and reverse protection (site B's VM to site A)"
playbook "$logs/demo-recovery.log" lab/demo-recovery.yml
done_step

step "report"
ansible-playbook -i inventory/lab lab/demo-report.yml >"$logs/demo-report.log" 2>&1 ||
  { tail -30 "$logs/demo-report.log"; exit 1; }
sed -n '/TASK \[Print it\]/,/^PLAY RECAP/p' "$logs/demo-report.log" | grep -E '^ *"' | sed -E 's/^ *"//; s/",?$//'
done_step

step "a log bundle from each site (playbooks/collect_logs.yml)"
playbook "$logs/collect-logs.log" playbooks/collect_logs.yml -e hvds_logs_dir="$logs"
grep -o '"[^"]*hvds-logs-[^"]*"' "$logs/collect-logs.log" | tr -d '"'
done_step
