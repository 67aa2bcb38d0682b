"""requirements.lock pins, with hashes, a release within every range the project declares.

`make demo`, `make test` and CI install from the lock alone; a range changed in
requirements*.txt or setup.py without `make lock` would leave it stale, and these tests say
which requirement it no longer satisfies.
"""

import ast
import os
import re

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCK = os.path.join(REPO, 'requirements.lock')
REQUIREMENT_FILES = ('requirements.txt', 'requirements-dev.txt', 'requirements-torch.txt')
LOCKED_EXTRAS = ('mtcp', 'ray')       # installed by make test so that their tests run
_PIN = re.compile(r'^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)')
_HASH = re.compile(r'--hash=sha256:[0-9a-f]{64}\b')


def read_lock(path=LOCK):
    """{canonical name: (version, number of sha256 hashes)} of a uv/pip-tools lock."""
    pins, current = {}, None
    with open(path, encoding='utf-8') as handle:
        for line in handle:
            match = _PIN.match(line)
            if match:
                current = canonicalize_name(match.group(1))
                pins[current] = [match.group(2), 0]
            elif line[:1] not in (' ', '\t'):
                current = None          # a comment, an option line or a blank line
            if current is not None:
                pins[current][1] += len(_HASH.findall(line))
    return {name: tuple(value) for name, value in pins.items()}


def declared_requirements():
    """Each requirement of the requirement files and of the locked setup.py extras."""
    declared = []
    for name in REQUIREMENT_FILES:
        with open(os.path.join(REPO, name), encoding='utf-8') as handle:
            for line in handle:
                line = line.split('#', 1)[0].strip()
                if line and not line.startswith('-'):
                    declared.append((name, Requirement(line)))
    with open(os.path.join(REPO, 'setup.py'), encoding='utf-8') as handle:
        tree = ast.parse(handle.read())
    extras = next(ast.literal_eval(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.keyword) and node.arg == 'extras_require')
    for extra in LOCKED_EXTRAS:
        declared += [(f'setup.py [{extra}]', Requirement(text)) for text in extras[extra]]
    return declared


def test_every_declared_requirement_is_pinned_within_its_range():
    pins = read_lock()
    problems = []
    for source, requirement in declared_requirements():
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f'{requirement} ({source}) is not in the lock')
        elif not requirement.specifier.contains(Version(pin[0]), prereleases=True):
            problems.append(f'{requirement} ({source}) is pinned to {pin[0]}')
    assert not problems, 'run `make lock`: ' + '; '.join(problems)


def test_every_pin_is_exact_and_hashed():
    pins = read_lock()
    assert len(pins) > 100            # transitive dependencies included (ROS wheels, ...)
    assert not [name for name, (_, hashes) in pins.items() if hashes == 0]
    # What the editable install and pip itself need is pinned too.
    assert {'pip', 'setuptools'} <= set(pins)


def test_torch_is_the_cpu_build_on_the_machines_disk():
    version, hashes = read_lock()['torch']
    assert version == '2.13.0+cpu' and hashes == 1
    with open(LOCK, encoding='utf-8') as handle:
        assert '--find-links /opt/wheels\n' in handle.read()


def test_the_lock_reader_counts_hashes_per_package(tmp_path):
    lock = tmp_path / 'x.lock'
    lock.write_text('--find-links /somewhere\n\na-b==1.0 \\\n    --hash=sha256:' + 'a' * 64
                    + ' \\\n    --hash=sha256:' + 'b' * 64 + '\n    # via c\n'
                    + 'C_d==2.0\n    # via x\n')
    assert read_lock(str(lock)) == {'a-b': ('1.0', 2), 'c-d': ('2.0', 0)}
