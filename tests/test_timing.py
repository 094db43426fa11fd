"""StageTimes: order, grouping and totals on a fake clock (no real time is measured)."""

from deploy_unet.timing import StageTimes


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_steps_list_before_their_sub_stages_and_total_counts_steps_only():
    clock = FakeClock()
    times = StageTimes(clock=clock)
    with times.stage("export"):
        clock.now += 3.0
        times.add("torch.onnx.export", 2.0, group="export")
        times.add("parity", 1.0, group="export")
    with times.stage("bench"):
        clock.now += 5.0
    assert [s.name for s in times.stages] == ["export", "torch.onnx.export", "parity", "bench"]
    assert times.as_dict() == {"export": 3.0, "torch.onnx.export": 2.0, "parity": 1.0, "bench": 5.0}
    assert times.total == 8.0  # sub-stages are parts of their step, not added again
    rows = times.rows()
    assert rows[0] == ["export", "3.00", "38%"] and rows[1][0] == "  torch.onnx.export"


def test_a_failing_block_still_records_its_time():
    clock = FakeClock()
    times = StageTimes(clock=clock)
    try:
        with times.stage("quantize"):
            clock.now += 1.5
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert times.as_dict() == {"quantize": 1.5}


def test_extend_takes_another_commands_stages_as_sub_stages():
    inner = StageTimes()
    inner.add("calibration", 4.0)
    outer = StageTimes()
    outer.add("precision", 4.5)
    outer.extend(inner, "precision")
    assert outer.to_list() == [{"stage": "precision", "group": "", "seconds": 4.5},
                               {"stage": "calibration", "group": "precision", "seconds": 4.0}]


def test_a_stage_still_running_is_left_out_of_tables_written_inside_it():
    clock = FakeClock()
    times = StageTimes(clock=clock)
    with times.stage("validate"):
        clock.now += 2.0
    with times.stage("report"):
        clock.now += 1.0
        written_inside = times.to_list()  # what report.json gets
        assert [s["stage"] for s in written_inside] == ["validate"]
        assert times.total == 2.0
    assert times.as_dict() == {"validate": 2.0, "report": 1.0}
