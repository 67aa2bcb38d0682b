"""MT-CP everywhere the other families go: engines, ONNX Runtime, training losses, the node.

The node test runs the tiny MT-CP over real DDS (its own domain and namespace) and checks
the node's semantic labels against the in-process engine on the same image and weights.
"""

import importlib.util

import numpy as np
import pytest
import torch
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from conftest import load_reference
from mtdp_ros.models import build_model, load_checkpoint, PRESETS, save_checkpoint
from mtdp_ros.ros.image_output import image_msg_to_numpy
from mtdp_ros.runtime import create_engine
from mtdp_ros.runtime.onnx_export import export_onnx
from mtdp_ros.runtime.postprocess import postprocess_task_reference
from mtdp_ros.runtime.preprocess import plan_letterbox
from mtdp_ros.training.losses import balanced_cross_entropy_loss, MultiTaskLoss

from ros_harness import (NodeProcess, RosClient, domain_id, image_msg, make_stamp,
                         pattern_image)

# MT-CP needs the optional extra ``mtcp`` (transformers): skipped where it is not installed.
pytestmark = pytest.mark.skipif(importlib.util.find_spec('transformers') is None,
                                reason='MT-CP needs the optional extra mtcp (transformers)')
RELIABLE = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
NAMESPACE = '/mtcp_test'


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(5)
    model = build_model(PRESETS['mtcp_nyud_tiny'])
    path = tmp_path_factory.mktemp('mtcp') / 'tiny.safetensors'
    return save_checkpoint(model, str(path))


@pytest.mark.slow  # a minute-long ONNX export
def test_onnx_runtime_matches_the_authors_outputs(tmp_path):
    import onnxruntime as ort
    reference = load_reference('mtcp_nyud_tiny.pt')
    model = build_model(reference['config'])
    load_checkpoint(model, reference['checkpoint'])
    weights = save_checkpoint(model, str(tmp_path / 'ref.safetensors'))
    info = export_onnx(weights, str(tmp_path / 'ref.onnx'), verify=True)
    assert info['family'] == 'mtcp' and info['outputs'] == ['semseg', 'depth', 'normals']
    session = ort.InferenceSession(str(tmp_path / 'ref.onnx'),
                                   providers=['CPUExecutionProvider'])
    for index in range(reference['input'].shape[0]):
        image = reference['input'][index:index + 1].numpy()
        outputs = session.run(None, {'images': image})
        for task, got in zip(info['outputs'], outputs):
            expected = reference['outputs'][task][index:index + 1].numpy()
            assert np.abs(got - expected).max() <= 1e-4, task


@pytest.mark.slow  # exports the tiny model into the engine's cache
def test_torch_and_onnxruntime_engines_agree(tiny_checkpoint, tmp_path):
    rgb = pattern_image(96, 128, seed=4)
    torch_engine = create_engine('mtcp_nyud_tiny', checkpoint=tiny_checkpoint, device='cpu')
    ort_engine = create_engine('mtcp_nyud_tiny', checkpoint=tiny_checkpoint, device='cpu',
                               backend='onnxruntime', cache_dir=str(tmp_path / 'cache'))
    first = torch_engine.infer(rgb)
    second = ort_engine.infer(rgb)
    # Only the task outputs reach the runtime, never the deep-supervision keys.
    assert set(first) == set(second) == {'semseg', 'depth', 'normals'}
    assert first['semseg'].shape == (96, 128) and first['normals'].shape == (96, 128, 3)
    assert np.mean(first['semseg'] == second['semseg']) > 0.99
    finite = np.isfinite(first['depth']) & np.isfinite(second['depth'])
    assert np.abs(first['depth'][finite] - second['depth'][finite]).max() < 1e-3


def test_one_logit_saliency_is_a_sigmoid_and_a_balanced_binary_loss():
    logit = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
    plan = plan_letterbox((2, 2), (2, 2))
    probability = postprocess_task_reference('sal', logit, plan)
    assert torch.allclose(probability, torch.sigmoid(logit)[0, 0])
    target = torch.tensor([[[[1, 0], [255, 1]]]])
    # Two positives and one negative: negatives weigh 2/3, positives 1/3.
    w_pos = 1.0 / 3.0
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = (w_pos * bce(torch.tensor(0.0), torch.tensor(1.0))
                + (1 - w_pos) * bce(torch.tensor(2.0), torch.tensor(0.0))
                + w_pos * bce(torch.tensor(3.0), torch.tensor(1.0))) / 3
    assert torch.allclose(balanced_cross_entropy_loss(logit, target), expected)


def test_deep_supervision_adds_half_the_plain_intermediate_losses():
    model = build_model(PRESETS['mtcp_nyud_tiny']).train()
    x = torch.randn(2, 3, 96, 128)
    outputs = model.forward_train(x)
    targets = {'semseg': torch.randint(0, 40, (2, 1, 96, 128)),
               'depth': torch.rand(2, 1, 96, 128) + 0.5,
               'normals': torch.nn.functional.normalize(torch.randn(2, 3, 96, 128), dim=1)}
    weights = {'semseg': 1.0, 'depth': 2.0, 'normals': 3.0}
    with_deep = MultiTaskLoss(model.config.tasks, weights)(outputs, targets)
    without = MultiTaskLoss(model.config.tasks, weights, deep_weight=0.0)(outputs, targets)
    plain = MultiTaskLoss(model.config.tasks, {t: 1.0 for t in weights})
    deep = sum(sum(plain.task_losses(level, targets).values()) for level in outputs['deep'])
    assert torch.allclose(with_deep['total'] - without['total'], 0.5 * deep)
    assert torch.allclose(with_deep['deep'], deep)


@pytest.fixture(scope='module')
def mtcp_node(tmp_path_factory, tiny_checkpoint):
    directory = tmp_path_factory.mktemp('node_mtcp')
    domain = domain_id(__name__)
    node = NodeProcess(domain, directory / 'node.log', namespace=NAMESPACE, params={
        'model.preset': 'mtcp_nyud_tiny', 'model.checkpoint': tiny_checkpoint,
        'engine.device': 'cpu', 'input.qos': 'reliable'})
    client = RosClient(domain, namespace=NAMESPACE)
    try:
        for topic in ('semantic/labels', 'depth/image', 'normals'):
            client.subscribe(Image, topic, RELIABLE)
        publisher = client.publisher(Image, 'image', reliable=True)
        assert node.wait_for_log('ready', 180), node.log()
        assert client.wait_for_subscribers('image'), node.log()
        assert client.wait_for_publishers('semantic/labels')
        yield node, client, publisher
    finally:
        client.close()
        node.close()


@pytest.mark.slow  # a node process over DDS
def test_node_serves_mtcp_over_dds(mtcp_node, tiny_checkpoint):
    node, client, publisher = mtcp_node
    rgb = pattern_image(120, 160, seed=9)
    topics = ['semantic/labels', 'depth/image', 'normals']
    for _ in range(10):
        stamp = make_stamp()
        publisher.publish(image_msg(rgb, stamp=stamp))
        if client.wait_for_stamp(topics, stamp, 15.0):
            break
    else:
        raise AssertionError('no answer from the MT-CP node: ' + node.log())
    labels = image_msg_to_numpy(client.messages_with_stamp('semantic/labels', stamp)[0])
    normals = image_msg_to_numpy(client.messages_with_stamp('normals', stamp)[0])
    assert labels.shape == (120, 160) and normals.shape == (120, 160, 3)
    expected = create_engine('mtcp_nyud_tiny', checkpoint=tiny_checkpoint,
                             device='cpu').infer(rgb, tasks=['semseg'])['semseg']
    assert np.mean(labels == expected) > 0.99


@pytest.mark.parametrize('name', ['mtcp_nyud', 'mtcp_pascal'])
def test_recipes_follow_the_authors(name):
    import os
    from mtdp_ros.training.config import load_config
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        'mtdp_ros', 'training', 'configs', f'{name}.yaml')
    with open(path, encoding='utf-8') as handle:
        assert 'github.com/Klodivio355/MT-CP' in handle.read().splitlines()[1]
    config = load_config(path)
    assert config['model'] == name and list(config['init']) == ['backbone']
    train, loss = config['train'], config['loss']
    assert train['optimizer'] == 'adamw' and train['lr'] == pytest.approx(5e-5)
    assert train['weight_decay'] == pytest.approx(1e-4) and train['batch_size'] == 2
    assert loss['balancing'] == 'lps' and loss['deep_supervision'] == 0.5
    assert loss['lps']['history'] == 1 and 1 + loss['lps']['alpha'] == pytest.approx(7.5)
    assert set(loss['weights']) == set(PRESETS[name].tasks)


def test_init_mapping_names_encoder_or_backbone():
    from mtdp_ros.training.config import validate_init
    validate_init({'backbone': 'pretrained/m2f'})
    validate_init({'encoder': 'pretrained/vit.npz'})
    for bad in ({'backbone': ''}, {'backbone': 'a', 'encoder': 'b'}, {'weights': 'a'}):
        with pytest.raises(ValueError, match=r'\{backbone: PATH\}'):
            validate_init(bad)
