#!/usr/bin/env bash
# Checks of the Ansible collection hvds.replication (the repo root is the collection root):
#   tree    copy the collection's files to build/ansible_collections/hvds/replication
#   sanity  ansible-test sanity --python 3.11 --venv, with an empty tests/sanity/ignore-2.19.txt
#   lint    ansible-lint --profile production
#   galaxy  ansible-galaxy collection build of the tree, install of the tarball into build/,
#           and every module of plugins/modules listed by `ansible-doc -l hvds.replication`
#   units   ansible-test units --python 3.11 --venv (tests/unit/plugins)
#   pytest  the same tests with the project's pytest, quicker while working on them
# With no argument: tree, sanity, lint, galaxy. Runs as root on a fresh Debian 12 once scripts/setup.sh
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
  tests/sanity tests/unit tests/integration tests/config.yml docs/docsite extensions/molecule
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
  # build/ on the collections path lets playbooks and roles name hvds.replication's roles and
  # its module_defaults group; the default paths stay (the lab's collections are there).
  (cd "$tree" &&
    ANSIBLE_COLLECTIONS_PATH="$repo/build:$HOME/.ansible/collections:/usr/share/ansible/collections" \
      ansible-lint --profile production --offline --nocolor)
}

galaxy() {
  local dist="$repo/build/dist" installed="$repo/build/installed"
  rm -rf "$dist" "$installed"
  ansible-galaxy collection build --output-path "$dist" "$tree"
  ansible-galaxy collection install --offline -p "$installed" "$dist"/hvds-replication-*.tar.gz
  local listed want missing=()
  listed="$(ANSIBLE_COLLECTIONS_PATH="$installed" ansible-doc -t module -l hvds.replication)"
  for want in "$tree"/plugins/modules/*.py; do
    want="hvds.replication.$(basename "$want" .py)"
    grep -q "^$want " <<<"$listed" || missing+=("$want")
  done
  if ((${#missing[@]})); then
    echo "ansible-check: not listed by ansible-doc from the installed tarball: ${missing[*]}" >&2
    exit 1
  fi
  echo "ansible-check: the tarball installs; ansible-doc lists its $(grep -c '^hvds\.replication\.' <<<"$listed") modules"
}

units() {
  provide_get_pip
  # Like sanity: a virtualenv of ansible-test's own (pytest, pytest-xdist, pytest-mock), reused.
  (cd "$tree" && ansible-test units --python 3.11 --venv --color no)
}

run_pytest() {
  # The tree's parent of ansible_collections/ on sys.path makes the collection importable as
  # ansible_collections.hvds.replication, as ansible-test units does.
  (cd "$tree" && PYTHONPATH="$repo/build" python -m pytest -q -p no:cacheprovider tests/unit)
}

inventories() {
  # playbooks/validate_inventory.yml passes the lab's and the example production inventories, and
  # fails the broken one with every problem of its expected-problems.txt listed.
  local inventory output
  # The collection as built in build/ (tree), as the other steps use it.
  local -x ANSIBLE_COLLECTIONS_PATH="$repo/build:/usr/share/ansible/collections"
  for inventory in inventory/lab inventory/example-production; do
    ansible-playbook -i "$repo/$inventory" "$repo/playbooks/validate_inventory.yml" >/dev/null ||
      { echo "ansible-check: $inventory does not validate" >&2; return 1; }
  done
  inventory="$repo/tests/inventories/broken"
  if output="$(ansible-playbook -i "$inventory" "$repo/playbooks/validate_inventory.yml" 2>&1)"; then
    echo "ansible-check: the broken inventory validated" >&2; return 1
  fi
  output="${output//\\n/$'\n'}"
  local expected missing=0
  while IFS= read -r expected; do
    grep -qxF -- "- $expected" <<<"$output" || { echo "ansible-check: not reported: $expected" >&2; missing=1; }
  done <"$inventory/expected-problems.txt"
  ((missing == 0)) || return 1
  echo "ansible-check: inventories: lab and example-production valid, the broken one's $(wc -l <"$inventory/expected-problems.txt") problems reported"
}

steps=("$@")
((${#steps[@]})) || steps=(tree sanity lint galaxy inventories)
for step in "${steps[@]}"; do
  case "$step" in
    tree) build_tree ;;
    sanity) sanity ;;
    lint) lint ;;
    galaxy) galaxy ;;
    units) units ;;
    pytest) run_pytest ;;
    inventories) inventories ;;
    *) echo "usage: $0 [tree|sanity|lint|galaxy|units|pytest|inventories]..." >&2; exit 2 ;;
  esac
done
