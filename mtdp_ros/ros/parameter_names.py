"""Parameter names that match nothing: params-file typos, wrong node names, undeclared sets.

rclpy silently ignores an override whose name the node never declares (``engine.devise``
for ``engine.device``) and a params file whose node keys name another node; and its
"undeclared parameter(s)" error for a run-time set lists ``[]`` (it tests a generator
with ``any()`` before listing it). These helpers word what to warn about, naming the
parameters, with the closest declared name as a suggestion.

Nothing here needs rclpy.
"""

import difflib
import re

# Overrides that are declared later, or by ROS itself, not by the node's declare_all.
LATER_DECLARED_PREFIXES = ('qos_overrides.',)


def suggestion(name, declared):
    """' (did you mean X?)' for the declared name closest to ``name``, or ''."""
    close = difflib.get_close_matches(name, sorted(declared), n=1, cutoff=0.6)
    return f' (did you mean {close[0]}?)' if close else ''


def unknown_names(names, declared):
    """``names`` (sorted) that are not declared and not declared later by ROS."""
    return sorted(name for name in set(names) - set(declared)
                  if not name.startswith(LATER_DECLARED_PREFIXES))


def describe_unknown(names, declared):
    """'a (did you mean b?), c' for the unknown ``names``."""
    return ', '.join(name + suggestion(name, declared) for name in names)


def params_files(args):
    """The paths given with --params-file in the command line ``args``."""
    files = []
    for index, arg in enumerate(args[:-1]):
        if arg == '--params-file':
            files.append(args[index + 1])
    return files


def _matches(key, node_fqn):
    """Whether the params-file node key ``key`` applies to the node named ``node_fqn``."""
    key = '/' + key.lstrip('/')
    # rcl: '**' stands for any number of name tokens, '*' for one.
    pattern = re.escape(key).replace(r'/\*\*', '(/[^/]+)*').replace(r'\*', '[^/]+')
    return re.fullmatch(pattern, node_fqn) is not None


def params_file_problem(path, node_fqn):
    """Why the params file ``path`` sets nothing of node ``node_fqn``, or None."""
    import yaml
    try:
        with open(path, 'r', encoding='utf-8') as handle:
            content = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError):
        return None                      # rcl has refused it already, with its reason
    if not isinstance(content, dict) or not content:
        return None
    keys = [str(key) for key in content]
    if any(_matches(key, node_fqn) for key in keys):
        return None
    return (f'params file {path} sets parameters of {", ".join(keys)} but none of this '
            f'node ({node_fqn}): check the node name (and namespace) in it')
