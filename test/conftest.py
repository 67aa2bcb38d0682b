"""Shared test setup: the harness on sys.path, the authors' reference vectors.

The reference vectors lie in ../shared/reference beside the repository (the development
checkout). A plain ROS workspace (``colcon test`` with only this repository in src/) has no
../shared: the tests that need a reference file then skip, naming the missing directory.
A reference directory that exists but lacks a file, or one named by MTDP_REFERENCE_DIR,
is a broken setup: those tests fail.
"""

import os
import sys

import pytest
import torch

TEST_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TEST_DIR)
# ros_harness.py lies beside the tests; pytest's rootdir insertion puts it on sys.path only
# in some import modes (and not under launch_test), so put it there explicitly.
if TEST_DIR not in sys.path:
    sys.path.insert(0, TEST_DIR)
EXPLICIT_REFERENCE_DIR = os.environ.get('MTDP_REFERENCE_DIR')
REFERENCE_DIR = EXPLICIT_REFERENCE_DIR or os.path.join(
    os.path.dirname(REPO), 'shared', 'reference')


def reference_path(name):
    """Path of reference file ``name``; skip where no reference directory exists at all."""
    path = os.path.join(REFERENCE_DIR, name)
    if not os.path.isfile(path):
        if not EXPLICIT_REFERENCE_DIR and not os.path.isdir(REFERENCE_DIR):
            pytest.skip(f'reference vectors absent: {REFERENCE_DIR} does not exist (a '
                        f'workspace without ../shared; set MTDP_REFERENCE_DIR to run these)')
        pytest.fail(f'reference file {path} is missing: CI runs with ../shared beside the repo '
                    f'(set MTDP_REFERENCE_DIR to point elsewhere)')
    return path


def load_reference(name):
    """The tensors of reference file ``name`` (loaded without running code)."""
    return torch.load(reference_path(name), weights_only=True)


@pytest.fixture(scope='session')
def mlore_reference():
    return load_reference('mlore_nyud_tiny.pt')


@pytest.fixture(scope='session')
def taskdiffusion_reference():
    return load_reference('taskdiffusion_nyud_tiny.pt')


@pytest.fixture(scope='session')
def taskdiffusion_mlore_reference():
    return load_reference('taskdiffusion_mlore_nyud_tiny.pt')
