"""The node's allocator setting that returns memory of a rare large frame."""

import subprocess
import sys

from mtdp_ros.ros import memory_return


def test_the_mmap_threshold_is_fixed_unless_the_user_chose_one():
    assert memory_return.prepare({'MALLOC_MMAP_THRESHOLD_': '65536'}) == ''
    # In a child: mallopt changes the process for good.
    code = ('import sys; from mtdp_ros.ros import memory_return as m; '
            'sys.exit(0 if m.prepare({}) else 1)')
    assert subprocess.run([sys.executable, '-c', code]).returncode == 0
