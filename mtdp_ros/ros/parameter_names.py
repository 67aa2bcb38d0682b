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


def warn_unmatched(node, args):
    """Warn about overrides no parameter of ``node`` takes and params files for other nodes."""
    declared = node._parameters.keys()
    unknown = unknown_names(node._parameter_overrides, declared)
    if unknown:
        node.get_logger().warning('ignored: no parameter of this node is named ' +
                                  describe_unknown(unknown, declared))
    for path in params_files(args):
        problem = params_file_problem(path, node.get_fully_qualified_name())
        if problem:
            node.get_logger().warning(problem)


class NamesUndeclaredParameters:
    """Node mixin: setting an undeclared parameter is refused naming it.

    rclpy's own check lists the names as ``[]`` (a generator consumed by ``any()``).
    """

    def _check_undeclared_parameters(self, parameter_list):
        unknown = [p.name for p in parameter_list if p.name not in self._parameters]
        if unknown:
            from rclpy.exceptions import ParameterNotDeclaredException
            raise ParameterNotDeclaredException(
                describe_unknown(unknown, self._parameters.keys()))
        super()._check_undeclared_parameters(parameter_list)
