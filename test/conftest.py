"""Shared fixtures: the authors' reference vectors in ../shared/reference."""

import os

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_DIR = os.environ.get(
    'MTDP_REFERENCE_DIR', os.path.join(os.path.dirname(REPO), 'shared', 'reference'))


def reference_path(name):
    return os.path.join(REFERENCE_DIR, name)


def load_reference(name):
    path = reference_path(name)
    if not os.path.isfile(path):
        pytest.fail(f'reference file {path} is missing: CI runs with ../shared beside the repo '
                    f'(set MTDP_REFERENCE_DIR to point elsewhere)')
    return torch.load(path, weights_only=True)


@pytest.fixture(scope='session')
def mlore_reference():
    return load_reference('mlore_nyud_tiny.pt')


@pytest.fixture(scope='session')
def taskdiffusion_reference():
    return load_reference('taskdiffusion_nyud_tiny.pt')


@pytest.fixture(scope='session')
def taskdiffusion_mlore_reference():
    return load_reference('taskdiffusion_mlore_nyud_tiny.pt')
