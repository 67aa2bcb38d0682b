"""Docstring conventions (the ament_pep257 check, through pydocstyle).

ament's default ignore list, plus D213: this code puts the summary on the docstring's
first line (D212 style), and D212/D213 are mutually exclusive. D401 (imperative mood) is
also not enforced yet: many summaries describe what a function returns ("The ... of ...").
"""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AMENT_IGNORE = ['D100', 'D101', 'D102', 'D103', 'D104', 'D105', 'D106', 'D107',
                'D203', 'D212', 'D404']
PROJECT_IGNORE = ['D213', 'D401']


@pytest.mark.linter
def test_pep257():
    result = subprocess.run(
        [sys.executable, '-m', 'pydocstyle', '--ignore=' + ','.join(AMENT_IGNORE + PROJECT_IGNORE),
         'mtdp_ros', 'test', 'launch', 'scripts', 'setup.py'],
        cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, f'pydocstyle found problems:\n{result.stdout}{result.stderr}'
