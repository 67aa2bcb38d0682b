"""Check every rosdep key of package.xml against rosdep's own YAML files; write the list.

rosdep resolves a key either from its rule files (``rosdep/base.yaml``,
``rosdep/python.yaml`` of ros/rosdistro) or, for a ROS package, from the released packages
of the distribution (``<distro>/distribution.yaml``). This script reads an offline copy of
ros/rosdistro (no network), says which file defines each key of package.xml and whether
that rule resolves on the target OS, and (``--write``) writes ``test/rosdep_keys.txt``:
the list the test suite checks package.xml against (the suite cannot download).

    python scripts/check_rosdep_keys.py --rosdistro /path/to/rosdistro [--write]

Exit status 1 when a key is unknown or has no rule for the OS.
"""

import argparse
import hashlib
import os
import sys
import xml.etree.ElementTree as ElementTree

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS_FILE = os.path.join(REPO, 'test', 'rosdep_keys.txt')
DEPEND_TAGS = ('depend', 'build_depend', 'buildtool_depend', 'build_export_depend',
               'exec_depend', 'test_depend', 'doc_depend')
RULE_FILES = ('rosdep/base.yaml', 'rosdep/python.yaml')


def package_keys(path):
    """The rosdep keys package.xml at ``path`` names, in file order, each once."""
    root = ElementTree.parse(path).getroot()
    keys = []
    for element in root:
        if element.tag in DEPEND_TAGS and element.text and element.text.strip() not in keys:
            keys.append(element.text.strip())
    return keys


def released_packages(distribution):
    """Names of the ROS packages released in a distribution.yaml (parsed)."""
    names = set()
    for repo_name, repo in (distribution.get('repositories') or {}).items():
        release = repo.get('release')
        if release:
            names.update(release.get('packages') or [repo_name])
    return names


def rule_resolves(rule, os_name, os_version):
    """Whether a rosdep rule (one key's entry) installs something on the OS."""
    if not isinstance(rule, dict):
        return False
    entry = rule.get(os_name, rule.get('*'))
    if isinstance(entry, dict) and not set(entry) & {'apt', 'pip', 'source'}:
        entry = entry.get(os_version, entry.get('*'))
    return entry is not None and entry != []


def file_digest(path):
    """sha256 (hex) of a file: names the rosdistro copy the list was checked against."""
    with open(path, 'rb') as stream:
        return hashlib.sha256(stream.read()).hexdigest()


def check(rosdistro, distro, os_name, os_version, keys):
    """(key -> defining file, problems) of ``keys`` in the rosdistro copy."""
    rules = {}
    for name in RULE_FILES:
        with open(os.path.join(rosdistro, name), encoding='utf-8') as stream:
            for key, rule in (yaml.safe_load(stream) or {}).items():
                rules.setdefault(key, (name, rule))
    distribution_file = f'{distro}/distribution.yaml'
    with open(os.path.join(rosdistro, distribution_file), encoding='utf-8') as stream:
        released = released_packages(yaml.safe_load(stream))
    found, problems = {}, []
    for key in keys:
        if key in released:
            found[key] = distribution_file
        elif key in rules:
            name, rule = rules[key]
            if rule_resolves(rule, os_name, os_version):
                found[key] = name
            else:
                problems.append(f'{key}: {name} has no rule for {os_name}:{os_version}')
        else:
            problems.append(f'{key}: neither a rosdep rule nor a package released in '
                            f'{distro}')
    return found, problems


def main(argv=None):
    """Check package.xml's keys; with --write, write test/rosdep_keys.txt."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rosdistro', required=True,
                        help='directory of an offline copy of ros/rosdistro')
    parser.add_argument('--distro', default='jazzy')
    parser.add_argument('--os', default='ubuntu:noble', help='OS name:version')
    parser.add_argument('--write', action='store_true', help=f'write {KEYS_FILE}')
    args = parser.parse_args(argv)
    os_name, _, os_version = args.os.partition(':')
    keys = package_keys(os.path.join(REPO, 'package.xml'))
    found, problems = check(args.rosdistro, args.distro, os_name, os_version, keys)
    for problem in problems:
        print(f'package.xml: {problem}', file=sys.stderr)
    if problems:
        return 1
    if args.write:
        digests = [f'#   {name} sha256 {file_digest(os.path.join(args.rosdistro, name))}'
                   for name in RULE_FILES + (f'{args.distro}/distribution.yaml',)]
        lines = ['# rosdep keys of package.xml, each found in rosdep\'s own YAML files of',
                 f'# ros/rosdistro for {args.distro} on {args.os} by '
                 'scripts/check_rosdep_keys.py;',
                 '# checked against the copy whose files have these digests:'] + digests + \
                [f'{key} {found[key]}' for key in sorted(found)]
        with open(KEYS_FILE, 'w', encoding='utf-8') as stream:
            stream.write('\n'.join(lines) + '\n')
    print(f'{len(keys)} keys of package.xml resolve for {args.distro} on {args.os}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
