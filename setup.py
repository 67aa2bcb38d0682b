"""ament_python setup for mtdp_ros (also installs into a plain virtual environment)."""

from glob import glob
import os

from setuptools import find_packages, setup

package_name = 'mtdp_ros'


def _files(pattern):
    return [path for path in glob(pattern) if os.path.isfile(path)]


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
    entry_points={
        'console_scripts': [
            'perception_node = mtdp_ros.perception_node:main',
            'demo_camera = mtdp_ros.demo_camera:main',
            'mtdp = mtdp_ros.cli:main',
            'mtdp-demo = mtdp_ros.demo:main',
        ],
    },
)
