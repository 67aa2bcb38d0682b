"""Frames lost before the image callback, from gaps in the writer's sequence numbers."""

from mtdp_ros.ros.input_loss import UNSUPPORTED, SequenceGaps


def test_gaps_after_the_first_frame_are_counted():
    gaps = SequenceGaps()
    assert gaps.seen(40) == 0           # the first frame: what came before is not known
    assert gaps.seen(41) == 0
    assert gaps.seen(45) == 3
    assert gaps.seen(46) == 0


def test_unknown_numbers_new_writers_and_several_publishers_count_nothing():
    gaps = SequenceGaps()
    assert [gaps.seen(n) for n in (None, 0, UNSUPPORTED)] == [0, 0, 0]
    gaps.seen(100)
    assert gaps.seen(3) == 0            # a restarted (new) writer
    assert gaps.seen(5) == 1
    gaps.publishers_changed(2)
    assert gaps.seen(90) == 0 and gaps.seen(7) == 0
    gaps.publishers_changed(1)          # one writer again: counting restarts
    assert gaps.seen(20) == 0
    assert gaps.seen(30) == 9
