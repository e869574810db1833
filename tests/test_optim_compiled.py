"""The Ranger family's compiled step (``compile=True``): the same numbers as the eager step and
as the independent references, no recompiles when fastai's schedulers change hyperparameters,
the same ``state_dict``, and a clean fallback to the eager step when compiling fails."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
from test_optim import (
    LookaheadRef,
    adabelief_radam_reference,
    backward,
    centralize,
    data,
    decoupled_decay,
    make_model,
)

from fasttricks.optim import Ranger, RangerAdaBelief, create_optimizer, get_optimizer
from fasttricks.optim import _compiled
from fasttricks.optim._compiled import compile_unavailable_reason

needs_compile = pytest.mark.skipif(compile_unavailable_reason() is not None,
                                   reason=f"torch.compile unavailable: "
                                          f"{compile_unavailable_reason()}")
RANGERS = ["ranger", "ranger_nogc", "rangeradabelief", "rangeradabelief_nogc"]
STEPS = 20
TOL = {"atol": 1e-9, "rtol": 1e-7}


def graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def same_params(a, b, step, **tol):
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, **(tol or TOL),
                                   msg=lambda m, name=name: f"step {step} {name}: {m}")


@needs_compile
@pytest.mark.slow
@pytest.mark.parametrize("name", RANGERS)
def test_compiled_step_matches_eager_and_the_references_without_recompiling(name):
    lr, wd, betas, eps = 1e-2, 0.1, (0.9, 0.999), 1e-6
    gc = not name.endswith("nogc")
    x, y = data()
    m_eager, m_comp, m_ref = make_model(), make_model(), make_model()
    kw = {"mom": betas[0], "sqr_mom": betas[1], "eps": eps, "wd": wd}
    eager = create_optimizer(m_eager, name, lr, **kw)
    comp = create_optimizer(m_comp, name, lr, compile=True, **kw)
    if name.startswith("ranger_") or name == "ranger":
        ref = torch.optim.RAdam(m_ref.parameters(), lr, betas, eps, foreach=False)
        ref_step = ref.step
    else:
        ref_step = adabelief_radam_reference(m_ref, lr, betas, eps)
    lookahead = LookaheadRef(m_ref, k=6, alpha=0.5)
    after_first = after_sync = None
    for step in range(STEPS):
        if step == 10:  # a scheduler changes lr and beta1 between steps
            lr = 3e-3
            for opt in (eager, comp):
                opt.param_groups[0]["lr"] = lr
            if name.startswith("rangeradabelief"):
                ref_step = adabelief_radam_reference(m_ref, lr, betas, eps)
                ref_step = None  # the written-out reference keeps its own lr: stop comparing
            else:
                ref.param_groups[0]["lr"] = lr
        for m in (m_eager, m_comp, m_ref):
            backward(m, x, y)
        eager.step()
        comp.step()
        if after_first is None:
            after_first = graphs()
        if step == 5:  # the first Lookahead sync (k=6) adds the update-with-sync graph
            after_sync = graphs()
            assert after_sync == after_first + 1
        same_params(m_comp, m_eager, step)
        if ref_step is not None:
            decoupled_decay(m_ref, lr, wd)
            if gc:
                centralize(m_ref)
            ref_step()
            lookahead.after_step(list(m_ref.parameters()))
            same_params(m_comp, m_ref, step, atol=1e-6, rtol=1e-6)
    assert comp.compile, "the compiled step fell back to eager"
    # un-rectified and rectified steps, later syncs and the lr change: no further graph
    assert graphs() == after_sync
    for p_e, p_c in zip(m_eager.parameters(), m_comp.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "slow_buffer"):
            torch.testing.assert_close(comp.state[p_c][key], eager.state[p_e][key], **TOL)
        assert comp.state[p_c]["step"] == eager.state[p_e]["step"] == STEPS


def _roundtrip(src_compile: bool, dst_compile: bool) -> None:
    x, y = data()
    model, ref_model = make_model(), make_model()
    opt = create_optimizer(model, "ranger", 1e-2, wd=0.1, compile=src_compile)
    ref = create_optimizer(ref_model, "ranger", 1e-2, wd=0.1)
    for _ in range(8):
        backward(model, x, y)
        backward(ref_model, x, y)
        opt.step()
        ref.step()
    saved = opt.state_dict()
    assert saved["param_groups"] == ref.state_dict()["param_groups"]  # the same format
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": saved}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    clone = make_model(seed=3)
    clone.load_state_dict(loaded["model"])
    opt2 = create_optimizer(clone, "ranger", 1e-3, compile=dst_compile)
    opt2.load_state_dict(loaded["opt"])
    assert opt2.compile == dst_compile
    for step in range(8):
        backward(clone, x, y)
        backward(ref_model, x, y)
        opt2.step()
        ref.step()
        same_params(clone, ref_model, step)


@needs_compile
@pytest.mark.slow
@pytest.mark.parametrize(("src", "dst"), [(False, True), (True, False)])
def test_state_dict_moves_between_eager_and_compiled_and_continues(src, dst):
    _roundtrip(src, dst)


@needs_compile
@pytest.mark.slow
def test_fit_flat_cos_trains_with_the_compiled_optimizer():
    from test_optim_fastai import make_learner, quiet_fit, validate

    learn = make_learner("rangeradabelief", compile=True)
    before = validate(learn)
    quiet_fit(learn, "fit_flat_cos", 4, 3e-2)
    after = validate(learn)
    eager = make_learner("rangeradabelief")
    quiet_fit(eager, "fit_flat_cos", 4, 3e-2)
    assert after < 0.8 * before, (before, after)
    assert after == pytest.approx(validate(eager), rel=1e-4)  # the same fit as the eager step
    assert learn.opt.opt.compile, "the compiled step fell back to eager"
    assert len(learn.opt.param_groups) == 3


def test_a_failed_compile_warns_once_and_steps_eagerly(monkeypatch):
    def broken():
        def fail(*args, **kwargs):
            raise RuntimeError("no C++ compiler found")
        return fail

    monkeypatch.setattr(_compiled, "_compiled", broken)
    x, y = data()
    m_comp, m_eager = make_model(), make_model()
    comp = create_optimizer(m_comp, "rangeradabelief", 1e-2, wd=0.1, compile=True)
    eager = create_optimizer(m_eager, "rangeradabelief", 1e-2, wd=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(8):
            backward(m_comp, x, y)
            backward(m_eager, x, y)
            comp.step()
            eager.step()
            same_params(m_comp, m_eager, step, atol=0, rtol=0)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "no C++ compiler found" in messages[0], messages
    assert not comp.compile


@pytest.mark.parametrize("cls", [Ranger, RangerAdaBelief])
def test_compile_flag_survives_copies_and_stays_out_of_the_state_dict(cls):
    opt = cls(make_model().parameters(), lr=1e-3, compile=True)
    for other in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert other.compile == opt.compile
    plain = cls(make_model().parameters(), lr=1e-3)
    assert opt.state_dict() == plain.state_dict()
    assert "compile" not in opt.param_groups[0]


def test_compile_is_an_override_of_the_ranger_family_only():
    assert get_optimizer("ranger", compile=True).overrides == {"compile": True}
    with pytest.raises(TypeError, match="compile"):
        get_optimizer("sgd", compile=True)
    with pytest.raises(ValueError, match="compile must be True or False, got 'yes'"):
        get_optimizer("ranger", compile="yes")
    with pytest.raises(ValueError, match="compile must be True or False"):
        Ranger([torch.zeros(2, requires_grad=True)], compile=1)
