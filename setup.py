"""ament_python setup for mtdp_ros (also installs into a plain virtual environment)."""

from glob import glob
import os

from setuptools import find_packages, setup
from setuptools.command.develop import develop
from setuptools.command.install_scripts import install_scripts

package_name = 'mtdp_ros'
# Console scripts that belong on PATH after `source install/setup.bash` as well.
PATH_SCRIPTS = ('mtdp',)


def _files(pattern):
    return [path for path in glob(pattern) if os.path.isfile(path)]


def copy_to_bin(command, directory):
    """Copy PATH_SCRIPTS from ``directory`` (<prefix>/lib/<package>) to <prefix>/bin.

    Only when ``directory`` is lib/<package> (the ament_python layout of setup.cfg); the
    copies' paths, for ``--record``.
    """
    directory = os.path.normpath(directory)
    lib, package = os.path.split(directory)
    if package != package_name or os.path.basename(lib) != 'lib':
        return []
    bin_dir = os.path.join(os.path.dirname(lib), 'bin')
    command.mkpath(bin_dir)
    copies = []
    for name in PATH_SCRIPTS:
        source = os.path.join(directory, name)
        if os.path.isfile(source):
            target = os.path.join(bin_dir, name)
            command.copy_file(source, target)
            copies.append(target)
    return copies


class InstallScriptsAlsoOnPath(install_scripts):
    """ament_python layout: every script in lib/<package> (ros2 run), and `mtdp` in bin.

    setup.cfg sends the scripts to <prefix>/lib/mtdp_ros, where `ros2 run` looks for them
    and which is not on PATH; the `mtdp` command is copied to <prefix>/bin as well. Only
    when the scripts go to lib/<package> (colcon's install); a wheel (pip, `pip install
    -e .`) has pip write the entry points to the environment's bin, as always.
    """

    def run(self):
        """Install the scripts, then copy PATH_SCRIPTS to <prefix>/bin."""
        super().run()
        self._on_path = [] if self.no_ep else copy_to_bin(self, self.install_dir)

    def get_outputs(self):
        """The installed scripts, the copies in bin included (for `--record`)."""
        return super().get_outputs() + getattr(self, '_on_path', [])


class DevelopAlsoOnPath(develop):
    """`colcon build --symlink-install` (setup.py develop): `mtdp` in bin as well."""

    def install_wrapper_scripts(self, dist):
        """Write the scripts to script_dir (lib/mtdp_ros), then copy PATH_SCRIPTS to bin."""
        result = super().install_wrapper_scripts(dist)
        copy_to_bin(self, self.script_dir)
        return result


setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    package_data={package_name: ['data/*.json', 'data/*.safetensors', 'data/*.md']},
    include_package_data=False,   # package_data lists the data files (no MANIFEST.in)
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', _files('launch/*.launch.py')),
        ('share/' + package_name + '/config', _files('config/*.yaml')),
        ('share/' + package_name + '/rviz', _files('rviz/*.rviz')),
    ],
    install_requires=['setuptools'],
    zip_safe=False,
    maintainer='mtdp_ros developers',
    maintainer_email='mtdp-ros@example.com',
    description='Multi-task dense prediction (MLoRE, TaskDiffusion) as a ROS 2 perception node.',
    license='Apache-2.0',
    extras_require={
        # colcon picks its pytest step from extras_require['test'] (current setuptools drops
        # tests_require); launch_testing's pytest plugin cannot load under pytest 9.
        'test': ['pytest>=8,<9'],
        # mtcp: the MT-CP family's Mask2Former backbone (transformers 5 names; the authors'
        # 4.x checkpoints are renamed on load). make test installs it (the lock) so that its
        # tests always run.
        'mtcp': ['transformers>=5.25,<6'],
        # `mtdp bag --ray`: bags processed on a Ray cluster (Ray core, no dashboard).
        'ray': ['ray>=2.60,<3'],
    },
    cmdclass={'install_scripts': InstallScriptsAlsoOnPath, 'develop': DevelopAlsoOnPath},
    entry_points={
        'console_scripts': [
            'perception_node = mtdp_ros.perception_node:main',
            'demo_camera = mtdp_ros.demo_camera:main',
            'mtdp = mtdp_ros.cli:main',
            'mtdp-demo = mtdp_ros.demo:main',
        ],
    },
)
