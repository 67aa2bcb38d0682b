"""flake8 over the package, tests, launch files and scripts (the ament_flake8 check).

Configuration in setup.cfg: lines of at most 99 characters, as ament's template.
"""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.linter
def test_flake8():
    result = subprocess.run(
        [sys.executable, '-m', 'flake8', 'mtdp_ros', 'test', 'launch', 'scripts', 'setup.py'],
        cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, f'flake8 found problems:\n{result.stdout}{result.stderr}'
