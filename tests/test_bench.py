"""bench: statistics on runners with known delays (fake and real clocks), phases, memory, ratios."""

from __future__ import annotations

import time

import numpy as np
import pytest
from helpers_runners import ConstantRunner, thin_artifacts

from deploy_unet.bench import (
    BenchResult,
    LatencyStats,
    WallPhaseClock,
    add_ratios,
    bench,
    bench_rounds,
    bench_runner,
    parse_batches,
    parse_sizes,
)
from deploy_unet.errors import ConfigError, ShapeContractError


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class DelayRunner(ConstantRunner):
    """Each call 'takes' the next delay (ms) from a list, on a fake clock; optional phase split."""

    def __init__(self, delays_ms, clock: FakeClock | None = None, phases_ms=None, sleep=False, **kw):
        super().__init__([np.zeros((1, 2, 8, 8), np.float32)], **kw)
        self.delays_ms, self.clock, self.phases_ms, self.sleep = list(delays_ms), clock, phases_ms, sleep
        self.device_kind = "cpu"

    def _infer(self, feeds):
        self._spend(self.delays_ms[self.calls % len(self.delays_ms)])
        return super()._infer(feeds)

    def _spend(self, ms):
        if self.sleep:
            time.sleep(ms / 1e3)
        else:
            self.clock.now += ms / 1e3

    def infer_phased(self, feeds, mark):
        for phase, ms in self.phases_ms.items():
            self._spend(ms)
            mark(phase)
        self.calls += 1
        return {"logits": self.outputs[0]}


def test_percentiles_match_known_delays_exactly_on_a_fake_clock():
    clock = FakeClock()
    first, then = [250.0], [float(d) for d in range(1, 101)]  # the first call is slow (lazy init)
    runner = DelayRunner(first + [7.0] * 3 + then, clock=clock)  # 3 warmup calls of 7 ms
    result = bench_runner(runner, batch=4, height=8, width=8, warmup=3, iters=100, clock=clock, phase_clock=None)
    assert result.first_run_ms == pytest.approx(250.0)
    stats = result.latency_ms
    assert result.iters == 100 and runner.calls == 104
    assert stats.min == pytest.approx(1.0) and stats.max == pytest.approx(100.0)
    assert stats.mean == pytest.approx(50.5)
    assert stats.median == pytest.approx(np.percentile(then, 50))
    assert stats.p90 == pytest.approx(np.percentile(then, 90))
    assert stats.p95 == pytest.approx(np.percentile(then, 95))
    assert stats.p99 == pytest.approx(np.percentile(then, 99))
    assert result.throughput_ips == pytest.approx(4 * 1000 / 50.5)


def test_real_sleep_delays_are_measured_within_tolerance():
    runner = DelayRunner([5.0], sleep=True)
    result = bench_runner(runner, height=8, width=8, warmup=1, iters=12, phase_clock=None)
    # sleep never returns early; the upper slack absorbs scheduling on a busy 2-core machine
    assert 5.0 <= result.latency_ms.median < 15.0
    assert 5.0 <= result.latency_ms.min <= result.latency_ms.p90 <= result.latency_ms.max


def test_phases_are_timed_separately_with_an_injected_clock():
    clock = FakeClock()
    runner = DelayRunner([0.0], clock=clock, phases_ms={"h2d": 1.0, "compute": 5.0, "d2h": 2.0})
    result = bench_runner(runner, height=8, width=8, warmup=0, iters=5, clock=clock,
                          phase_clock=lambda r: WallPhaseClock(clock))
    assert {p: s.median for p, s in result.phases_ms.items()} == pytest.approx({"h2d": 1.0, "compute": 5.0, "d2h": 2.0})
    assert result.latency_ms.median == pytest.approx(8.0)


def test_duration_mode_stops_at_the_deadline():
    clock = FakeClock()
    runner = DelayRunner([10.0], clock=clock)
    result = bench_runner(runner, height=8, width=8, warmup=0, iters=None, duration=0.1, clock=clock, phase_clock=None)
    assert result.iters == 10  # 100 ms of 10 ms calls
    assert result.latency_ms.mean == pytest.approx(10.0)


class AllocatingRunner(DelayRunner):
    """Touches 64 MiB per call, then frees it: a peak the RSS high-water mark must see."""

    def _infer(self, feeds):
        block = np.ones(64 * 2**20 // 8)
        block.sum()
        return super()._infer(feeds)


def _need_rss_reset():
    try:
        open("/proc/self/clear_refs", "w").close()
    except OSError:
        pytest.skip("RSS high-water mark cannot be reset here")


def test_peak_memory_sees_a_large_allocation():
    _need_rss_reset()
    result = bench_runner(AllocatingRunner([0.0], sleep=True), height=8, width=8, warmup=0, iters=2, phase_clock=None)
    assert result.memory_kind == "rss_peak_delta"
    assert result.peak_memory_mib > 50


def test_bad_arguments_are_config_errors():
    runner = DelayRunner([0.0], clock=FakeClock(), divisor=16)
    with pytest.raises(ShapeContractError, match="height 20 is not divisible by 16"):
        bench_runner(runner, height=20, width=32)
    with pytest.raises(ConfigError, match="exactly one of iters or duration"):
        bench_runner(runner, height=16, width=16, iters=5, duration=1.0)
    with pytest.raises(ConfigError, match="iters 0"):
        bench_runner(runner, height=16, width=16, iters=0)
    with pytest.raises(ConfigError, match="HxW"):
        parse_sizes("256by256")
    with pytest.raises(ConfigError, match=">= 1"):
        parse_batches("1,0")
    assert parse_sizes("256x128, 64") == [(256, 128), (64, 64)]
    assert parse_batches("1,4,8") == [1, 4, 8]


def _result(label, batch, size, median, arch="unet"):
    stats = LatencyStats(median, median, median, median, median, median, median, 0.0)
    return BenchResult(label, label, "fake", "cpu", "fp32", batch, size, size, 0, 1, median, stats, 1.0, None, "rss",
                       arch=arch)


def test_ratios_are_against_the_first_entry_of_the_same_net_batch_and_size():
    results = add_ratios([_result("a", 1, 32, 10.0), _result("a", 4, 32, 40.0),
                          _result("b", 1, 32, 5.0), _result("b", 4, 32, 80.0),
                          _result("fcn", 1, 32, 100.0, arch="fcn8s"), _result("fcn-int8", 1, 32, 50.0, arch="fcn8s")])
    assert [r.speedup_vs_first for r in results] == pytest.approx([1.0, 1.0, 2.0, 0.5, 1.0, 2.0])


def test_bench_over_artifacts_builds_a_report():
    paths = thin_artifacts()
    report = bench([paths["onnx"], paths["pt"]], batches=[1, 2], sizes=[(32, 32)], warmup=1, iters=3,
                   progress=False)
    assert [(r.backend, r.batch) for r in report.results] == [("onnxruntime", 1), ("onnxruntime", 2),
                                                              ("torch", 1), ("torch", 2)]
    assert all(len(r.samples_ms) == 3 and r.latency_ms.min > 0 for r in report.results)
    assert report.results[0].speedup_vs_first == 1.0
    assert report.machine["onnxruntime"] and report.machine["torch"]


# -- interleaved rounds ------------------------------------------------------------------------------
class Machine:
    """A fake clock shared by several runners, with a log of every call and a slowdown factor that a test
    turns on for some rounds (a burst of a busy machine hits whatever runs during it)."""

    def __init__(self):
        self.clock = FakeClock()
        self.log: list[str] = []
        self.factor = 1.0


class RoundRunner(DelayRunner):
    """A named DelayRunner on a shared Machine; ``slow_calls`` (call index -> ms) slows this runner alone."""

    def __init__(self, name, delay_ms, machine: Machine, slow_calls=None):
        super().__init__([delay_ms], clock=machine.clock, name=name)
        self.machine, self.slow_calls = machine, slow_calls or {}

    def _infer(self, feeds):
        self.machine.log.append(self.source)
        ms = self.slow_calls.get(self.calls, self.delays_ms[0]) * self.machine.factor
        self.clock.now += ms / 1e3
        self.calls += 1
        return {"logits": self.outputs[0]}


def _rounds(runners, machine, **kw):
    kw = {"height": 8, "width": 8, "warmup": 1, "iters": 6, "rounds": 3, "phase_clock": None, **kw}
    return bench_rounds(runners, clock=machine.clock, labels=[r.source for r in runners], **kw)


def test_rounds_interleave_the_configurations_turn_by_turn():
    machine = Machine()
    # A's first call of each turn (calls 2, 5, 8) is slow: it is the untimed lead-in and must not count
    runners = [RoundRunner("A", 10.0, machine, slow_calls={2: 99.0, 5: 99.0, 8: 99.0}),
               RoundRunner("B", 5.0, machine), RoundRunner("C", 20.0, machine)]
    results = _rounds(runners, machine)
    warm = ["A", "A", "B", "B", "C", "C"]  # each: first call + 1 warmup, one after another
    assert machine.log == warm + ["A"] * 3 + ["B"] * 3 + ["C"] * 3 + ["A"] * 3 + ["B"] * 3 + ["C"] * 3 \
        + ["A"] * 3 + ["B"] * 3 + ["C"] * 3  # per turn: one untimed lead-in call, then 2 timed
    assert [r.round_iters for r in results] == [[2, 2, 2]] * 3 and all(r.iters == 6 for r in results)
    assert [r.round_medians_ms for r in results] == [pytest.approx([d] * 3) for d in (10.0, 5.0, 20.0)]
    assert [r.speedup_vs_first for r in results] == pytest.approx([1.0, 2.0, 0.5])
    assert all(r.not_separable_from == [] for r in results)


def test_a_runner_slowed_in_some_rounds_shifts_its_own_range_not_its_neighbours():
    machine = Machine()
    # B's calls: 0 first, 1 warmup, then per round a lead-in and 2 timed: round 2's (6, 7) are slowed, B's alone
    a, b = RoundRunner("A", 10.0, machine), RoundRunner("B", 20.0, machine, slow_calls={6: 60.0, 7: 60.0})
    ra, rb = _rounds([a, b], machine)
    assert ra.round_medians_ms == pytest.approx([10.0, 10.0, 10.0])
    assert rb.round_medians_ms == pytest.approx([20.0, 60.0, 20.0]) and rb.round_range_ms == pytest.approx((20.0, 60.0))
    assert rb.speedup_rounds == pytest.approx([0.5, 1 / 6, 0.5]) and rb.speedup_vs_first == pytest.approx(0.5)
    assert rb.speedup_range == pytest.approx((1 / 6, 0.5))
    assert ra.not_separable_from == [] and rb.not_separable_from == []  # B slower in every round


def test_a_burst_of_the_machine_cancels_out_of_the_per_round_speedup_but_not_out_of_one_block():
    def burst_in_round(k):  # every call of round k runs 3x slower, whichever configuration it belongs to
        def on_turn(round_index, rounds, timer):
            machine.factor = 3.0 if round_index == k else 1.0
        return on_turn

    machine = Machine()
    a, b = RoundRunner("A", 10.0, machine), RoundRunner("B", 5.0, machine)
    ra, rb = _rounds([a, b], machine, on_turn=burst_in_round(1))
    assert ra.round_medians_ms == pytest.approx([10.0, 30.0, 10.0]) and rb.round_medians_ms == pytest.approx([5.0, 15.0, 5.0])
    assert rb.speedup_rounds == pytest.approx([2.0, 2.0, 2.0])  # the burst divides out of every round's ratio

    machine = Machine()  # one block each: the burst lands on A's block alone
    a, b = RoundRunner("A", 10.0, machine), RoundRunner("B", 5.0, machine)
    ra, rb = _rounds([a, b], machine, rounds=1, on_turn=lambda k, n, timer: setattr(
        machine, "factor", 3.0 if timer.label == "A" else 1.0))
    assert rb.speedup_vs_first == pytest.approx(6.0) and rb.speedup_range is None


def test_rounds_that_disagree_on_the_order_are_not_separable():
    machine = Machine()
    # A: 10 / 12 / 10 ms by round. B (11 every round) is slower in rounds 1 and 3, faster in round 2: the run
    # cannot rank A and B. C (11 / 13 / 11) overlaps A's range too, but every round has A faster: separable.
    a = RoundRunner("A", 10.0, machine, slow_calls={6: 12.0, 7: 12.0})
    b = RoundRunner("B", 11.0, machine)
    c = RoundRunner("C", 11.0, machine, slow_calls={6: 13.0, 7: 13.0})
    ra, rb, rc = _rounds([a, b, c], machine)
    assert ra.round_range_ms == pytest.approx((10.0, 12.0)) and rc.round_range_ms == pytest.approx((11.0, 13.0))
    assert rb.speedup_range == pytest.approx((10 / 11, 12 / 11)) and rc.speedup_range == pytest.approx((10 / 11, 12 / 13))
    assert ra.not_separable_from == ["B"] and rb.not_separable_from == ["A", "C"] and rc.not_separable_from == ["B"]


def test_duration_is_split_over_the_rounds():
    machine = Machine()
    a, b = RoundRunner("A", 10.0, machine), RoundRunner("B", 25.0, machine)
    ra, rb = _rounds([a, b], machine, iters=None, duration=0.1, rounds=2)  # 50 ms a turn
    assert ra.round_iters == [5, 5] and rb.round_iters == [2, 2]


def test_rounds_are_checked_against_the_iterations():
    from deploy_unet.bench import resolve_rounds

    assert resolve_rounds(None, 50) == 10 and resolve_rounds(None, 3) == 3 and resolve_rounds(None, None) == 10
    assert resolve_rounds(4, 10) == 4
    with pytest.raises(ConfigError, match="--rounds 8 needs at least 8 timed iterations"):
        resolve_rounds(8, 5)
    with pytest.raises(ConfigError, match="--rounds 0 must be >= 1"):
        resolve_rounds(0, 5)
    machine = Machine()
    results = _rounds([RoundRunner("A", 1.0, machine)], machine, iters=7, rounds=3)
    assert results[0].round_iters == [3, 2, 2]  # the remainder goes to the first rounds


def test_peak_memory_is_each_configurations_own_in_rounds():
    _need_rss_reset()
    big, small = AllocatingRunner([0.0], sleep=True), DelayRunner([0.0], sleep=True)
    rbig, rsmall = bench_rounds([big, small], height=8, width=8, warmup=0, iters=2, rounds=2, phase_clock=None)
    assert rbig.peak_memory_mib > 50 and rsmall.peak_memory_mib < 20


def test_bench_records_its_rounds_and_the_wait_policy():
    paths = thin_artifacts()
    report = bench([paths["onnx"], paths["pt"]], sizes=[(32, 32)], warmup=1, iters=4, rounds=2, progress=False)
    assert [r.round_iters for r in report.results] == [[2, 2], [2, 2]]
    assert report.schedule["rounds"] == 2 and "ONNX Runtime spinning" in report.schedule["wait_policy"]["summary"]
    data = report.to_dict()
    assert len(data["results"][1]["speedup_rounds"]) == 2 and data["results"][1]["speedup_range"] is not None
