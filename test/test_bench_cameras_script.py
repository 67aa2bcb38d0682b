"""scripts/bench_cameras.py runs end to end (a tiny model, one node, 1 and 2 cameras, 1 s).

The figures are the benchmark's business; this only keeps the script from rotting (it
once waited forever on a renamed depth topic).
"""

import ast
import subprocess
import sys

import pytest

from ros_harness import domain_id, TINY_MLORE, write_checkpoint

pytestmark = pytest.mark.slow  # a node process over real DDS


def test_one_node_with_one_and_two_cameras_gives_table_rows(tmp_path):
    preset = write_checkpoint(tmp_path, TINY_MLORE)
    done = subprocess.run(
        [sys.executable, 'scripts/bench_cameras.py', '--model', preset, '--cameras', '1', '2',
         '--modes', 'one', '--rate', '0', '--seconds', '1', '--warmup', '1', '--width', '64',
         '--height', '48', '--threads', '1', '--thread-cpu',
         '--domain', str(domain_id(__name__))],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {}
    for line in done.stdout.splitlines():
        cells = [cell.strip() for cell in line.split('|')[1:-1]]
        if cells and cells[0] in ('1', '2'):
            rows[cells[0]] = cells
    assert set(rows) == {'1', '2'}, done.stdout
    for cells in rows.values():
        assert cells[1] == '1' and float(cells[2]) > 0, cells     # one node, frames/s
        assert float(cells[7].rstrip('x')) > 0, cells             # memory ratio
        assert float(cells[8]) > 0, cells                         # node CPU, cores
    assert rows['1'][7] == '1.00x'        # the reference of the ratios
    # The engine's status of the two-camera node: milliseconds per batch.
    assert float(rows['2'][9]) > 0, rows['2']
    # --thread-cpu: one node process, the cores of its busy threads, busiest first; the
    # threads together used no more than the process.
    done_rows = [ast.literal_eval(line.split('# done: ', 1)[1])
                 for line in done.stderr.splitlines() if line.startswith('# done: ')]
    assert [row['cameras'] for row in done_rows] == [1, 2], done.stderr[-3000:]
    for row in done_rows:
        [threads] = row['threads']
        cores = list(threads.values())
        assert cores and all(used > 0 for used in cores), row
        assert cores == sorted(cores, reverse=True), row
        assert sum(cores) <= row['node_cpu'] + 0.05, row
