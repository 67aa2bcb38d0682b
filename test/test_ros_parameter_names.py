"""Parameter names that match nothing: unknown overrides and params files of other nodes."""

from mtdp_ros.ros.parameter_names import (describe_unknown, params_file_problem,
                                          params_files, unknown_names)

DECLARED = ('engine.device', 'engine.backend', 'model.preset', 'use_sim_time')


def test_unknown_overrides_are_named_with_the_closest_parameter():
    overrides = ['engine.devise', 'model.preset', 'qos_overrides./image.subscription.depth',
                 'zzz']
    unknown = unknown_names(overrides, DECLARED)
    assert unknown == ['engine.devise', 'zzz']
    assert describe_unknown(unknown, DECLARED) == \
        'engine.devise (did you mean engine.device?), zzz'


def test_params_files_of_other_nodes_are_found(tmp_path):
    args = ['--ros-args', '-p', 'a:=1', '--params-file', 'one.yaml', '--params-file']
    assert params_files(args) == ['one.yaml']
    path = tmp_path / 'params.yaml'
    # What rcl does (checked with rclpy: which keys give node /cam/mtdp_perception the
    # file's parameters).
    for key, applies in (('/cam/mtdp_perception', True), ('cam/mtdp_perception', True),
                         ('/**', True), ('/cam/*', True), ('/**/mtdp_perception', True),
                         ('mtdp_perception', False), ('/mtdp_perception', False),
                         ('/*', False), ('/other/mtdp_perception', False)):
        path.write_text(f'{key}:\n  ros__parameters:\n    engine.device: cpu\n')
        problem = params_file_problem(str(path), '/cam/mtdp_perception')
        assert (problem is None) == applies, (key, problem)
    assert 'check the node name' in problem
    assert params_file_problem(str(tmp_path / 'missing.yaml'), '/x') is None
