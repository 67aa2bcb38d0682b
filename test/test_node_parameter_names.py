"""Parameters that match nothing are named, over real DDS.

A params-file key no parameter takes (``engine.devise``) and a params file whose node key
names another node are warned about at start-up, naming them; a run-time set of an
undeclared parameter is refused with its name (rclpy's own message lists ``[]``).
"""

import pytest

from ros_harness import NODE_NAME, TINY_MLORE, domain_id, node_processes, write_config

pytestmark = pytest.mark.slow


def test_unknown_parameters_and_params_files_of_other_nodes_are_named(tmp_path):
    config = write_config(tmp_path, TINY_MLORE)
    ours = tmp_path / 'ours.yaml'
    ours.write_text(f'/{NODE_NAME}:\n  ros__parameters:\n    model.preset: {config}\n'
                    f'    engine.devise: cpu\n    autostart: false\n')
    other = tmp_path / 'other.yaml'
    other.write_text('wrong_node:\n  ros__parameters:\n    engine.device: cpu\n')
    specs = {'node': {'ros_args': ['--params-file', str(ours), '--params-file', str(other)]}}
    with node_processes(domain_id(__name__), tmp_path, specs) as (started, client):
        node = started['node']
        assert node.wait_for_log('autostart is false', 60.0), node.log()
        log = node.log()
        assert ('ignored: no parameter of this node is named engine.devise '
                '(did you mean engine.device?)') in log, log
        assert (f'params file {other} sets parameters of wrong_node but none of this node '
                f'(/{NODE_NAME})') in log, log
        assert f'params file {ours}' not in log, log

        result = client.set_parameters(NODE_NAME, {'engine.devise': 'cuda'}, timeout=60.0)
        assert not result[0].successful
        assert 'engine.devise (did you mean engine.device?)' in result[0].reason, \
            result[0].reason
