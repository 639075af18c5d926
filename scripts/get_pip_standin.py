"""Stand-in for the get-pip script that ansible-test downloads from a host this machine cannot reach.

`make ansible-check` copies it to ~/.ansible/test/cache/get_pip_24_2.py (the cache path of
ansible-core 2.19's pip 24.2). ansible-test runs it inside each virtualenv it creates, with pip's
own arguments: `--disable-pip-version-check pip==24.2 [--no-setuptools] [--no-wheel]`.

It bootstraps pip with the standard library's ensurepip, then lets that pip install what it was
asked for. ensurepip removes the PIP_* variables from the environment and points PIP_CONFIG_FILE at
/dev/null; the install runs with the environment as it was before, so that the machine's pip
configuration (its CA bundle, its indexes) applies to it.
"""

import ensurepip
import os
import subprocess
import sys

# get-pip options that `pip install` does not know.
GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}


def main(argv):
    env = dict(os.environ)
    ensurepip.bootstrap(upgrade=True, default_pip=True)
    args = [arg for arg in argv if arg not in GET_PIP_ONLY]
    return subprocess.call([sys.executable, "-m", "pip", "install", *args], env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
