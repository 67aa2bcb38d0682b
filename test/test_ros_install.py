"""The colcon (ament_python) install layout: scripts in lib/mtdp_ros, ``mtdp`` on PATH.

Runs the setuptools command colcon's Python build runs (``setup.py egg_info build install
--install-scripts <prefix>/lib/mtdp_ros --single-version-externally-managed``, the path
from setup.cfg) into a temporary prefix; nothing is written into the source tree.
"""

import configparser
import os
import subprocess
import sys
import sysconfig

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_colcon_install_puts_the_scripts_in_lib_and_mtdp_in_bin(tmp_path):
    parser = configparser.ConfigParser()
    parser.read(os.path.join(REPO, 'setup.cfg'))
    install_scripts = parser.get('install', 'install_scripts')
    assert install_scripts == '$base/lib/mtdp_ros'     # where `ros2 run` looks
    prefix = tmp_path / 'install'
    site = sysconfig.get_path('purelib', vars={'base': str(prefix)})
    os.makedirs(site)
    env = dict(os.environ, PYTHONPATH=site + os.pathsep + os.environ.get('PYTHONPATH', ''))
    command = [sys.executable, 'setup.py', '-q', 'egg_info', '--egg-base', str(tmp_path),
               'build', '--build-base', str(tmp_path / 'build'), 'install',
               '--prefix', str(prefix), '--record', str(tmp_path / 'install.log'),
               '--install-scripts', str(prefix / 'lib' / 'mtdp_ros'),
               '--single-version-externally-managed']
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lib_scripts = set(os.listdir(prefix / 'lib' / 'mtdp_ros'))
    assert {'perception_node', 'demo_camera', 'mtdp', 'mtdp-demo'} <= lib_scripts
    assert os.listdir(prefix / 'bin') == ['mtdp']
    assert str(prefix / 'bin' / 'mtdp') in open(tmp_path / 'install.log').read().split()
    shown = subprocess.run([str(prefix / 'bin' / 'mtdp'), '--help'], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shown.stdout.startswith('usage: mtdp')
