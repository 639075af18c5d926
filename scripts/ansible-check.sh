#!/usr/bin/env bash
# Checks of the Ansible collection hvds.replication (the repo root is the collection root):
#   tree    copy the collection's files to build/ansible_collections/hvds/replication
#   sanity  ansible-test sanity --python 3.11 --venv, with an empty tests/sanity/ignore-2.19.txt
#   lint    ansible-lint --profile production
#   units   pytest on tests/unit, importing the collection as ansible_collections.hvds.replication
# With no argument: tree, sanity, lint. Runs as root on a fresh Debian 12 once scripts/setup.sh
# has made .venv; safe to run again (the tree is rebuilt from scratch each time).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${HVDS_VENV:-$repo/.venv}"
export PATH="$venv/bin:$PATH"
tree="$repo/build/ansible_collections/hvds/replication"

# What the collection is made of; everything else in the repo (agent/, bench/, scripts/, the
# project's docs/) is not part of it.
collection_paths=(
  galaxy.yml meta plugins roles playbooks changelogs README.md COPYING .ansible-lint
  tests/sanity tests/unit tests/integration tests/config.yml docs/docsite
)

build_tree() {
  rm -rf "$repo/build/ansible_collections"
  mkdir -p "$tree"
  # Tracked files and new ones not yet committed (not ignored ones): the tree is what would be
  # committed. In CI's fresh clone that is exactly what is committed.
  (cd "$repo" && git ls-files -z --cached --others --exclude-standard -- "${collection_paths[@]}" |
    while IFS= read -r -d '' f; do [[ -e "$f" ]] && printf '%s\0' "$f"; done |
    tar --null -T - -cf -) | tar -xf - -C "$tree"
  # ansible-test takes a collection's files from git (`git ls-files --cached --others
  # --exclude-standard`) when a .git is at or above its root; above this one is the project's
  # repo, which ignores build/, so ansible-test would see no file. A repo of its own, with nothing
  # committed, makes every file of the tree count, and what ansible-test and ansible-lint write.
  printf '%s\n' /tests/output/ /.ansible/ > "$tree/.gitignore"
  git -C "$tree" init -q
  echo "ansible-check: built $tree ($(find "$tree" -type f | wc -l) files)"
}

provide_get_pip() {
  # ansible-test puts pip into the virtualenvs it makes with a get-pip script that it downloads
  # from a host this machine cannot reach, unless the script is in its cache: put the stand-in
  # there (see scripts/get_pip_standin.py). ansible-core 2.19 uses pip 24.2.
  local cache="$HOME/.ansible/test/cache"
  mkdir -p "$cache"
  install -m 0644 "$repo/scripts/get_pip_standin.py" "$cache/get_pip_24_2.py"
}

sanity() {
  provide_get_pip
  local ignore="$tree/tests/sanity/ignore-2.19.txt"
  if [[ -s "$ignore" ]]; then
    echo "ansible-check: $ignore must stay empty; fix the code instead" >&2
    exit 1
  fi
  # --venv: ansible-test makes one virtualenv per sanity test under ~/.ansible/test/venv/ with
  # its own pinned requirements, so the project's .venv keeps its pins (--requirements would
  # install pylint & co. into .venv itself). The virtualenvs are reused on the next run.
  (cd "$tree" && ansible-test sanity --python 3.11 --venv --color no)
}

lint() {
  # In the built tree: it is the collection as installed, and ansible-lint writes .ansible/ there.
  (cd "$tree" && ansible-lint --profile production --offline --nocolor)
}

units() {
  # The tree's parent of ansible_collections/ on sys.path makes the collection importable as
  # ansible_collections.hvds.replication, as ansible-test units does, without its containers.
  (cd "$tree" && PYTHONPATH="$repo/build" python -m pytest -q -p no:cacheprovider tests/unit)
}

steps=("$@")
((${#steps[@]})) || steps=(tree sanity lint)
for step in "${steps[@]}"; do
  case "$step" in
    tree) build_tree ;;
    sanity) sanity ;;
    lint) lint ;;
    units) units ;;
    *) echo "usage: $0 [tree|sanity|lint|units]..." >&2; exit 2 ;;
  esac
done
