"""The task table (mtdp_ros.models.tasks) and the consumers that read it.

The table check: every task is complete and the output topics are the contract's. The
consumer check: a task registered at run time under a new name (a copy of a built-in
task's spec) goes through configuration, label encoding, post-processing, output topics
and messages, colouring, RViz remapping, losses, meters and the data pipeline exactly as
the original does. A consumer that still tests task names fails here.
"""

import dataclasses
import os
import random
import re

import numpy as np
import pytest
import torch
from std_msgs.msg import Header

from mtdp_ros.models import tasks
from mtdp_ros.models.config import ModelConfig
from mtdp_ros.models.label_encoder import CrossTaskLabelEncoder
from mtdp_ros.ros import launch_support
from mtdp_ros.ros.colormaps import colorize
from mtdp_ros.ros.outputs import OutputBuilder, output_topics
from mtdp_ros.runtime import plan_letterbox
from mtdp_ros.runtime.postprocess import (cpu_path_applies, host_to_numpy, postprocess_task,
                                          postprocess_task_reference)
from mtdp_ros.training import evaluate
from mtdp_ros.training.datasets import _resize_labels_to_image, collate, TrainTransform
from mtdp_ros.training.losses import MultiTaskLoss
from mtdp_ros.training.metrics import (metric_directions, MultiTaskMeter, predictions_from_raw,
                                       primary_metrics)

RVIZ_FILE = os.path.join(os.path.dirname(__file__), '..', 'rviz', 'perception.rviz')
# The output topics of DESIGN.md (relative to the node's namespace): raw, colour.
CONTRACT_TOPICS = {
    'semseg': ('semantic/labels', 'semantic/color'),
    'depth': ('depth/image', 'depth/color'),
    'human_parts': ('human_parts/labels', 'human_parts/color'),
    'sal': ('saliency', 'saliency/color'),
    'normals': ('normals', 'normals/color'),
    'edge': ('edges', 'edges/color'),
}
NUM_OUTPUTS = {'semseg': 5, 'human_parts': 7, 'sal': 2, 'depth': 1, 'normals': 3, 'edge': 1}


def test_every_task_has_a_complete_spec_and_the_contract_topics():
    assert tasks.TASK_ORDER == ('semseg', 'depth', 'human_parts', 'sal', 'normals', 'edge')
    assert tasks.task_names() == tasks.TASK_ORDER
    for name in tasks.TASK_ORDER:
        spec = tasks.get_task(name)
        for field in dataclasses.fields(spec):
            assert getattr(spec, field.name) is not None, (name, field.name)
        assert (spec.raw_topic, spec.color_topic) == CONTRACT_TOPICS[name]
        assert (name, spec.primary_metric) in metric_directions([name])
    ranks = [tasks.get_task(n).display_rank for n in tasks.TASK_ORDER]
    assert len(set(ranks)) == len(ranks)


def test_the_rviz_layout_displays_every_colour_topic():
    with open(RVIZ_FILE, encoding='utf-8') as handle:
        shown = re.findall(r'Value: /(\S+)', handle.read())
    assert set(shown) == set(launch_support.rviz_topics())
    assert launch_support.rviz_topics() == (
        'semantic/color', 'depth/color', 'normals/color', 'edges/color',
        'human_parts/color', 'saliency/color', 'points')


@pytest.mark.parametrize('bad, problem', [
    ({'kind': 'flow'}, 'kind'),
    ({'activation': 'sigmoid'}, 'activation'),
    ({'topic_stem': '/abs'}, 'topic_stem'),
    ({'target': 'mask'}, 'target'),
    ({'loss': 'l2'}, 'loss'),
    ({'meter': 'psnr'}, 'meter'),
    ({'summary_metrics': ()}, 'summary_metrics'),
])
def test_an_incomplete_spec_is_refused_naming_the_field(bad, problem):
    with pytest.raises(ValueError, match=problem):
        dataclasses.replace(tasks.get_task('depth'), **bad)


def test_unknown_tasks_and_taken_names_or_topics_are_refused(table):
    with pytest.raises(ValueError, match="unknown task 'flow'"):
        tasks.get_task('flow')
    with pytest.raises(ValueError, match='already registered'):
        tasks.register_task(tasks.get_task('edge'))
    with pytest.raises(ValueError, match='edges/color'):
        tasks.register_task(dataclasses.replace(tasks.get_task('edge'), name='edge2'))


@pytest.fixture
def table(monkeypatch):
    """A copy of the task table that registrations go to (restored afterwards)."""
    monkeypatch.setattr(tasks, '_TASKS', dict(tasks._TASKS))
    return tasks


def copy_of(original, table):
    """Register a copy of built-in task ``original`` as ``x_<original>`` on new topics."""
    spec = tasks.get_task(original)
    return table.register_task(dataclasses.replace(
        spec, name=f'x_{original}', topic_stem=f'x_{spec.topic_stem}',
        display_rank=spec.display_rank + 100)).name


def raw_output(task, size=(16, 24), seed=0):
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randn((1, NUM_OUTPUTS[task]) + size, generator=generator) * 3
    if task == 'depth':
        raw = raw.abs() + 0.5
        raw[0, 0, 2, 3] = -1.0                      # invalid
    return raw


@pytest.mark.parametrize('original', tasks.TASK_ORDER)
def test_a_registered_task_is_post_processed_published_and_coloured_like_its_original(
        original, table):
    copy = copy_of(original, table)
    raw = raw_output(original)
    for image_size in ((32, 48), (20, 30), (8, 12)):    # CPU path and the PyTorch one
        plan = plan_letterbox(image_size, (16, 24))
        assert cpu_path_applies(copy, raw, plan) == cpu_path_applies(original, raw, plan)
        ours = host_to_numpy({copy: postprocess_task(copy, raw, plan)})[copy]
        theirs = host_to_numpy({original: postprocess_task(original, raw, plan)})[original]
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_array_equal(postprocess_task_reference(copy, raw, plan),
                                      postprocess_task_reference(original, raw, plan))
    np.testing.assert_array_equal(colorize(copy, ours), colorize(original, theirs))

    stem = tasks.get_task(copy).topic_stem
    suffix = {'labels': '/labels', 'depth': '/image'}.get(tasks.get_task(original).kind, '')
    raw_topic, color_topic = f'{stem}{suffix}', f'{stem}/color'
    topics = dict(output_topics([copy]))
    assert set(topics) == {raw_topic, color_topic}
    header = Header(frame_id='camera')
    ours = list(OutputBuilder().messages({copy: ours}, header, None))
    theirs = list(OutputBuilder().messages({original: theirs}, header, None))
    assert [m.topic for m in ours] == [raw_topic, color_topic]
    for mine, reference in zip(ours, theirs):
        assert mine.kind == reference.kind
        assert mine.msg.encoding == reference.msg.encoding
        assert bytes(mine.msg.data) == bytes(reference.msg.data)
    assert color_topic in launch_support.rviz_topics()
    remapped = dict(launch_support.rviz_arguments('layout.rviz', 'ns', '')[1])
    assert remapped[f'/{color_topic}'] == f'/ns/{color_topic}'


@pytest.mark.parametrize('original', tasks.TASK_ORDER)
def test_a_registered_task_trains_and_is_measured_like_its_original(original, table):
    copy = copy_of(original, table)
    raw = raw_output(original, size=(8, 8))
    target = predictions_from_raw(original, raw_output(original, size=(8, 8), seed=1))
    spec = tasks.get_task(original)
    if spec.target == 'classes':             # argmax labels, or a two-class probability
        target = target if spec.activation == 'argmax' else (target > 0.5)
        target = target.long()
    target = target[:, None] if target.dim() == 3 else target
    torch.testing.assert_close(predictions_from_raw(copy, raw),
                               predictions_from_raw(original, raw))

    losses = {name: MultiTaskLoss([name]).task_losses({name: raw}, {name: target})[name]
              for name in (copy, original)}
    torch.testing.assert_close(losses[copy], losses[original])
    assert MultiTaskLoss([copy]).weights == {copy: tasks.get_task(original).loss_weight}

    scores = {}
    for name in (copy, original):
        meter = MultiTaskMeter([name], {name: NUM_OUTPUTS[original]})
        meter.update({name: raw}, {name: target})
        scores[name] = meter.score()[name]
    assert repr(scores[copy]) == repr(scores[original])          # NaN included
    assert primary_metrics([copy]) == {copy: tasks.get_task(original).primary_metric}
    assert evaluate.summarize({copy: scores[copy]}).keys() == {copy}
    assert set(evaluate.summarize({copy: scores[copy]})[copy]) == \
        set(evaluate.summarize({original: scores[original]})[original])


@pytest.mark.parametrize('original', tasks.TASK_ORDER)
def test_a_registered_task_takes_the_data_pipeline_and_label_encoder_of_its_original(
        original, table):
    copy = copy_of(original, table)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (12, 20, 3), dtype=np.uint8)
    spec = tasks.get_task(original)
    if spec.target == 'vector':
        values = rng.normal(size=(9, 15, 3)).astype(np.float32)
    elif spec.target == 'scalar':
        values = rng.uniform(0.5, 4, (9, 15)).astype(np.float32)
    else:
        values = rng.integers(0, NUM_OUTPUTS[original], (9, 15)).astype(np.int64)
    batches = {}
    for name in (copy, original):
        # Targets of another size are resized, then scaled, cropped, flipped and padded.
        transform = TrainTransform((16, 16), augment=True, rng=random.Random(3))
        sample = _resize_labels_to_image({'name': 'a', 'image': image, name: values})
        batches[name] = collate([transform(sample)])
    torch.testing.assert_close(batches[copy][copy], batches[original][original])

    # Beside semseg (first in the order): the fusing convolution sees both tasks.
    copy_config, original_config = _config(copy, original), _config(original, original)
    assert copy_config.noise_channels == original_config.noise_channels
    assert copy_config.is_class_task(copy) == original_config.is_class_task(original)
    torch.manual_seed(0)
    ours = CrossTaskLabelEncoder(copy_config)
    theirs = CrossTaskLabelEncoder(original_config)
    theirs.load_state_dict({k.replace(copy, original): v for k, v in ours.state_dict().items()})
    beside = {} if original == 'semseg' else {'semseg': raw_output('semseg', (4, 4), 2)}
    raw = raw_output(original, size=(4, 4))
    torch.testing.assert_close(ours.encode_predictions({**beside, copy: raw}),
                               theirs.encode_predictions({**beside, original: raw}))
    beside = {} if original == 'semseg' else {'semseg': torch.randint(0, 5, (1, 1, 16, 16))}
    target = batches[original][original]
    torch.testing.assert_close(ours.encode_targets({**beside, copy: target}, (4, 4)),
                               theirs.encode_targets({**beside, original: target}, (4, 4)))


def _config(task, original):
    tasks_of = [task] if original == 'semseg' else ['semseg', task]
    return ModelConfig.from_dict({
        'family': 'taskdiffusion', 'tasks': tasks_of,
        'num_outputs': {'semseg': NUM_OUTPUTS['semseg'], task: NUM_OUTPUTS[original]},
        'image_size': [32, 32], 'embed_dim': 32, 'depth': 3, 'num_heads': 2,
        'select_layers': [1, 2, 3], 'decoder_dim': 16, 'trained_steps': 2})
