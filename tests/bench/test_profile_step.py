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
        {"ph": "X", "name": "ynn_fusion.2", "dur": 3e6},
        {"ph": "X", "name": "ynn_fusion.9", "dur": 1e6},
        {"ph": "X", "name": "select_fusion", "dur": 0.5e6},
        {"ph": "X", "name": "sort.3", "dur": 0.25e6},
        {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 9e6},  # runtime, not an op
        {"ph": "X", "name": "while.7", "dur": 9e6},  # contains the loop's ops: not counted twice
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
    assert "total op time (step wall time 4.50 s) | 4.75" in table
