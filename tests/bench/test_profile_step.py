import pytest

from bench import profile_step

HLO = """
  %ynn_fusion.2 = f32[16384,256]{1,0} fusion(%a), metadata={op_name="jit(step_fn)/jvp()/while/body/closed_call/dot_general"}
  %ynn_fusion.9 = f32[32,64,128]{2,1,0} fusion(%b), metadata={op_name="jit(step_fn)/jvp()/while/body/closed_call/while/body/closed_call/ncd,nwd->ncw/dot_general"}
  %select_fusion = f32[32,64,128]{2,1,0} fusion(%c), metadata={op_name="jit(step_fn)/jvp()/while/body/closed_call/while/body/closed_call/select_n"}
  ROOT %sort.3 = s32[4,16384]{1,0} sort(%d), metadata={op_name="jit(step_fn)/jvp()/while/body/closed_call/jit(argsort)/sort"}
"""  # noqa: E501


def test_ops_are_grouped_by_their_hlo_origin():
    names = profile_step.op_names(HLO)
    assert names["sort.3"].endswith("/sort")
    events = [
        {"ph": "X", "name": "ynn_fusion.2", "ts": 0, "dur": 3e6},
        {"ph": "X", "name": "ynn_fusion.9", "ts": 3e6, "dur": 1e6},
        {"ph": "X", "name": "select_fusion", "ts": 4e6, "dur": 0.5e6},
        {"ph": "X", "name": "sort.3", "ts": 4.5e6, "dur": 0.25e6},
        {"ph": "X", "name": "ThunkExecutor::Execute", "ts": 0, "dur": 9e6},  # runtime, not an op
        {"ph": "X", "name": "while.7", "ts": 0, "dur": 9e6},  # holds the loop's ops: not twice
        {"ph": "X", "name": "end: sort.3", "ts": 4.75e6, "dur": 1},  # completion marker
        {"ph": "i", "name": "ynn_fusion.2"},
    ]
    seconds = profile_step.summarise(events, names)
    assert seconds == {
        "dense matmuls (feed-forward, projections, hashing, LM head)": 3.0,
        "attention: the window loop's chunk matmuls": 1.0,
        "attention: the window loop's masks, softmax and window assembly": 0.5,
        "sorts (bucket order)": 0.25,
    }
    table = profile_step.markdown(seconds, step_s=4.5)
    assert "| dense matmuls (feed-forward, projections, hashing, LM head) | 3.00 | 63% |" in table
    assert "ops' wall time (step wall time 4.50 s) | 4.75" in table


def test_overlapping_ops_share_the_wall_clock():
    # XLA's CPU runtime runs an independent op inside a waiting dot's interval on the same
    # thread. Catches summing raw durations, which counted the dot's 10 ms plus the 6 ms
    # nested in it (16 ms of "op time" in 10 ms of wall clock) and made the dot look 2x slow.
    events = [
        {"ph": "X", "name": "ynn_fusion.14", "ts": 0, "dur": 10e3},
        {"ph": "X", "name": "ynn_fusion.19", "ts": 2e3, "dur": 6e3},
        {"ph": "X", "name": "copy.1", "ts": 12e3, "dur": 1e3},
    ]
    shares = dict(profile_step.attributed_seconds(profile_step.op_events(events)))
    assert shares["ynn_fusion.14"] == pytest.approx(0.007)  # 2 alone, 6 shared, 2 alone
    assert shares["ynn_fusion.19"] == pytest.approx(0.003)
    assert shares["copy.1"] == pytest.approx(0.001)
    assert sum(shares.values()) == pytest.approx(0.011)  # the time any op ran


def test_an_async_dot_lasts_until_its_completion_event():
    # XLA's CPU runtime closes a thread-pool dot's event at dispatch and records an "end:"
    # event when it completes. Catches counting only the dispatch (the weight gradients' dots
    # then look 20x faster than the machine's peak and their work shows up as idle time) and
    # extending other ops to their "end:" events, which the runtime records late.
    events = [
        {"ph": "X", "name": "dot.3", "ts": 0, "dur": 0.5e3},
        {"ph": "X", "name": "copy.1", "ts": 1e3, "dur": 1e3},
        {"ph": "X", "name": "end: dot.3", "ts": 10e3, "dur": 1},
        {"ph": "X", "name": "dot.3", "ts": 20e3, "dur": 0.5e3},  # a later run of the same op
        {"ph": "X", "name": "end: copy.1", "ts": 25e3, "dur": 1},
        {"ph": "X", "name": "end: dot.3", "ts": 30e3, "dur": 1},
    ]
    ops = profile_step.op_events(events)
    assert ops == [
        ("dot.3", 0.0, pytest.approx(0.010001)),
        ("copy.1", 0.001, 0.002),
        ("dot.3", 0.020, pytest.approx(0.030001)),
    ]
    shares = dict(profile_step.attributed_seconds(ops[:2]))
    assert shares["copy.1"] == pytest.approx(0.0005)  # shares its millisecond with the dot
