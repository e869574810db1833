"""fasttricks.optim in the corners: copies and pickles, gradients left alone, complex parameters,
maximize, the fused and foreach paths agreeing, old state dicts, the cheatsheet's mapping and
plain torch classes in the registry. References are torch's own optimizers and formulas here."""

from __future__ import annotations

import copy
import io
import math
import pickle

import pytest
import torch
from torch import nn

from fasttricks.optim import _ranger
from fasttricks.optim import (
    Ranger,
    RangerAdaBelief,
    create_optimizer,
    get_optimizer,
    optimizer_config_mapping,
    register_optimizer,
)

NINE = ["adamw", "ranger", "ranger_nogc", "rangeradabelief", "rangeradabelief_nogc", "sgd",
        "sgd_momentum", "sgd_nesterov", "rmsprop"]
RANGERS = ["ranger", "ranger_nogc", "rangeradabelief", "rangeradabelief_nogc"]
TOL = {"atol": 1e-6, "rtol": 1e-6}


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3)).double()


def backward(model: nn.Module, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 2, 6, 6, generator=gen, dtype=torch.float64)
    for p in model.parameters():
        p.grad = None
    (model(x).tanh() ** 2).mean().backward()


def same_params(a: nn.Module, b: nn.Module, **tol: float) -> None:
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, **(tol or TOL))


# ------------------------------------------------------------------ copies
@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
@pytest.mark.parametrize("name", RANGERS)
def test_copied_ranger_variants_step_like_the_original(name, how):
    model = make_model()
    opt = create_optimizer(model, name, 1e-2, wd=0.1)
    for step in range(8):
        backward(model, step)
        opt.step()
    bundle = {"model": model, "opt": opt}
    if how == "deepcopy":
        clone = copy.deepcopy(bundle)
    elif how == "pickle":
        clone = pickle.loads(pickle.dumps(bundle))
    else:
        buffer = io.BytesIO()
        torch.save(bundle, buffer)
        buffer.seek(0)
        clone = torch.load(buffer, weights_only=False)
    for step in range(8, 16):
        for pair in (bundle, clone):
            backward(pair["model"], step)
            pair["opt"].step()
        same_params(bundle["model"], clone["model"], atol=0, rtol=0)


def test_an_old_state_dict_without_the_new_group_keys_loads_and_continues():
    model = make_model()
    opt = create_optimizer(model, "ranger", 1e-2, wd=0.1)
    for step in range(8):
        backward(model, step)
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    for group in saved["param_groups"]:  # what 0.1 wrote
        group.pop("maximize")
        group.pop("fused")
    clone = copy.deepcopy(model)
    opt2 = create_optimizer(clone, "ranger", 1e-3)
    opt2.load_state_dict(saved)
    for step in range(8, 16):
        for m, o in ((model, opt), (clone, opt2)):
            backward(m, step)
            o.step()
    same_params(model, clone, atol=0, rtol=0)


# ------------------------------------------------------------------ gradients are left alone
@pytest.mark.parametrize("name", NINE)
def test_l2_rule_never_changes_p_grad(name):
    model = make_model()
    opt = create_optimizer(model, name, 1e-2, wd=0.3, true_wd=False)
    backward(model)
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    opt.step()
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g)


@pytest.mark.parametrize(("name", "ref"), [("sgd_momentum", torch.optim.SGD),
                                           ("adamw", torch.optim.Adam),
                                           ("rmsprop", torch.optim.RMSprop)])
def test_two_steps_on_one_backward_count_l2_decay_once_per_step(name, ref):
    lr, wd = 1e-2, 0.3
    ours, theirs = make_model(), make_model()
    opt = create_optimizer(ours, name, lr, wd=wd, true_wd=False, bn_wd=False)
    nd = [p for p in theirs.parameters() if p.ndim > 1]
    one_d = [p for p in theirs.parameters() if p.ndim <= 1]
    kwargs = dict(optimizer_config_mapping[name].hyperparameters)
    hp = {"lr": lr, "foreach": False}
    if name == "adamw":
        hp.update(betas=(kwargs["mom"], kwargs["sqr_mom"]), eps=kwargs["eps"])
    elif name == "rmsprop":
        hp.update(momentum=kwargs["mom"], alpha=kwargs["sqr_mom"], eps=kwargs["eps"])
    else:
        hp.update(momentum=kwargs["mom"])
    ref_opt = ref([{"params": nd, "weight_decay": wd}, {"params": one_d, "weight_decay": 0.0}],
                  **hp)
    for _ in range(3):
        backward(ours)
        backward(theirs)
        for _ in range(2):  # two steps on the same gradients
            opt.step()
            ref_opt.step()
        same_params(ours, theirs)


def test_sgd_nesterov_leaves_p_grad_alone_and_matches_torch():
    ours, theirs = make_model(), make_model()
    opt = create_optimizer(ours, "sgd_nesterov", 1e-2)
    ref = torch.optim.SGD(theirs.parameters(), lr=1e-2, momentum=0.9, nesterov=True,
                          foreach=False)
    for step in range(5):
        backward(ours, step)
        backward(theirs, step)
        grads = [p.grad.clone() for p in ours.parameters()]
        opt.step()
        ref.step()
        for p, g in zip(ours.parameters(), grads):
            assert torch.equal(p.grad, g)
        same_params(ours, theirs)


# ------------------------------------------------------------------ complex parameters
def _complex_pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(4, 3, dtype=torch.complex128, generator=gen).requires_grad_()
    twin = torch.view_as_real(z.detach().clone()).requires_grad_()
    return z, twin


def _complex_grad(step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(100 + step)
    return torch.randn(4, 3, dtype=torch.complex128, generator=gen)


@pytest.mark.parametrize("name", RANGERS)
def test_complex_parameters_step_as_their_real_view(name, monkeypatch):
    # both through torch's kernels (the C kernel takes real tensors only, so it would step the
    # twin alone, rounding differently)
    monkeypatch.setattr(_ranger, "native_update", lambda *args: False)
    # the twin is the real view (4, 3, 2) run without GC on a gradient centralized here with
    # the complex mean, which is what GC means for a complex (4, 3) parameter
    z, twin = _complex_pair()
    gc = not name.endswith("nogc")
    opt = create_optimizer([z], name, 1e-2, wd=0.1)
    ref = create_optimizer([twin], name.replace("_nogc", "") + "_nogc", 1e-2, wd=0.1)
    for step in range(14):
        g = _complex_grad(step)
        z.grad = g.clone()
        if gc:
            g = g - g.mean(dim=1, keepdim=True)
        twin.grad = torch.view_as_real(g).clone()
        opt.step()
        ref.step()
        torch.testing.assert_close(torch.view_as_real(z.detach()), twin.detach(),
                                   atol=1e-12, rtol=1e-12)


def test_complex_ranger_nogc_matches_torch_radam_plus_lookahead():
    z, _ = _complex_pair()
    w = z.detach().clone().requires_grad_()
    betas, eps, lr = (0.9, 0.99), 1e-7, 1e-2
    opt = create_optimizer([z], "ranger_nogc", lr, mom=betas[0], sqr_mom=betas[1], eps=eps,
                           wd=0.0)
    radam = torch.optim.RAdam([w], lr, betas, eps, foreach=False)
    slow = w.detach().clone()
    for step in range(1, 15):
        z.grad = _complex_grad(step)
        w.grad = z.grad.clone()
        opt.step()
        radam.step()
        if step % 6 == 0:  # Lookahead written out
            with torch.no_grad():
                slow += 0.5 * (w - slow)
                w.copy_(slow)
        torch.testing.assert_close(z.detach(), w.detach(), **TOL)


# ------------------------------------------------------------------ maximize
@pytest.mark.parametrize("name", RANGERS + ["sgd_momentum", "rmsprop", "adamw"])
def test_maximize_is_the_step_on_the_negated_gradient(name):
    up, down = make_model(), make_model()
    opt_up = create_optimizer(up, name, 1e-2, wd=0.1, maximize=True)
    opt_down = create_optimizer(down, name, 1e-2, wd=0.1)
    for step in range(14):
        backward(up, step)
        backward(down, step)
        for p in down.parameters():
            p.grad.neg_()
        opt_up.step()
        opt_down.step()
    same_params(up, down, atol=1e-12, rtol=1e-12)


def test_maximize_with_l2_follows_torch_sign_convention():
    lr, wd = 1e-2, 0.3
    ours, theirs = make_model(), make_model()
    opt = create_optimizer(ours, "sgd_momentum", lr, wd=wd, true_wd=False, bn_wd=False,
                           maximize=True)
    nd = [p for p in theirs.parameters() if p.ndim > 1]
    one_d = [p for p in theirs.parameters() if p.ndim <= 1]
    ref = torch.optim.SGD([{"params": nd, "weight_decay": wd}, {"params": one_d}], lr=lr,
                          momentum=0.9, maximize=True, foreach=False)
    for step in range(5):
        backward(ours, step)
        backward(theirs, step)
        opt.step()
        ref.step()
    same_params(ours, theirs)


# ------------------------------------------------------------------ fused and foreach paths
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cls", [Ranger, RangerAdaBelief])
@pytest.mark.parametrize("true_wd", [True, False])
def test_fused_path_matches_the_foreach_path(cls, dtype, true_wd, monkeypatch):
    # torch's fused kernels: the C kernel (tests/test_optim_native.py) is switched off here
    monkeypatch.setattr(_ranger, "native_update", lambda *args: False)
    fused_m, foreach_m = make_model().to(dtype), make_model().to(dtype)
    kw = {"lr": 1e-2, "weight_decay": 0.1, "true_wd": true_wd}
    fused = cls(fused_m.parameters(), **kw)
    plain = cls(foreach_m.parameters(), fused=False, **kw)
    calls = []
    original = type(fused)._fused_update

    def counting(self, *args):
        calls.append(1)
        return original(self, *args)

    type(fused)._fused_update = counting
    try:
        for step in range(20):
            backward(fused_m.double(), step)
            backward(foreach_m.double(), step)
            fused_m.to(dtype), foreach_m.to(dtype)
            for m in (fused_m, foreach_m):
                for p in m.parameters():
                    p.grad = p.grad.to(dtype)
            fused.step()
            plain.step()
    finally:
        type(fused)._fused_update = original
    assert calls  # the rectified steps went through the kernel
    # AdaBelief's fused path scales g - m by b1 through the kernel's float32 grad_scale: about
    # 1e-8 relative in float64
    tol = {"atol": 1e-9, "rtol": 1e-7} if dtype == torch.float64 else {"atol": 2e-6,
                                                                        "rtol": 1e-4}
    same_params(fused_m, foreach_m, **tol)


def test_fused_path_writes_adabeliefs_second_moment_formula():
    # s_t = b2*s + (1-b2)*(g - m_t)^2 + eps on a rectified step, m_t = b1*m + (1-b1)*g
    torch.manual_seed(0)
    p = torch.randn(50, 7, dtype=torch.float64, requires_grad=True)
    b1, b2, eps = 0.9, 0.999, 1e-6
    opt = RangerAdaBelief([p], lr=1e-3, betas=(b1, b2), eps=eps, use_gc=False)
    for step in range(1, 9):
        p.grad = torch.randn_like(p)
        state = opt.state[p]
        m0 = state["exp_avg"].clone() if state else torch.zeros_like(p)
        s0 = state["exp_avg_sq"].clone() if state else torch.zeros_like(p)
        opt.step()
        m1 = b1 * m0 + (1 - b1) * p.grad
        rho_inf = 2 / (1 - b2) - 1
        rho = rho_inf - 2 * step * b2**step / (1 - b2**step)
        s1 = b2 * s0 + (1 - b2) * (p.grad - m1) ** 2 + (eps if rho > 5 else 0.0)
        # the kernel runs with beta1 = 1 - 2**-40: m moves by 2**-40 * (g - m), about 1e-12
        torch.testing.assert_close(state["exp_avg"], m1, atol=1e-11, rtol=1e-10)
        torch.testing.assert_close(state["exp_avg_sq"], s1, atol=1e-12, rtol=1e-7)
    assert math.isfinite(p.sum().item())


# ------------------------------------------------------------------ errors
def test_create_optimizer_without_lr_is_a_clear_type_error():
    with pytest.raises(TypeError, match="lr must be a number >= 0.*got None"):
        create_optimizer(nn.Linear(2, 2), "ranger", lr=None)


def test_get_optimizer_of_none_is_a_type_error_naming_the_argument():
    with pytest.raises(TypeError, match=r"name .*must be a string.*got None"):
        get_optimizer(None)


# ------------------------------------------------------------------ the cheatsheet's mapping
def test_the_cheatsheet_snippet_reads_every_entry():
    cfg = optimizer_config_mapping["ranger_nogc"]
    got = (cfg["optimizer"], cfg["hyperparameters"], cfg["wd"]["true_wd"], cfg["wd"]["bn_wd"],
           cfg.get("set_betas", True))
    assert got == (Ranger, cfg.hyperparameters, True, False, True)
    assert cfg["hyperparameters"]["use_gc"] is False
    assert optimizer_config_mapping["sgd"].get("set_betas", True) is False
    assert optimizer_config_mapping["adamw"]["wd"] == {"true_wd": True, "bn_wd": True}
    assert cfg.get("missing", 7) == 7 and "wd" in cfg
    with pytest.raises(KeyError, match="'nope'.*optimizer, hyperparameters, wd"):
        cfg["nope"]
    with pytest.raises(TypeError):
        cfg["wd"]["true_wd"] = False  # type: ignore[index]
    with pytest.raises(TypeError):
        cfg["optimizer"] = Ranger  # type: ignore[index]


def test_a_plain_torch_class_registers_and_steps_like_torch():
    from fasttricks.optim._config import _REGISTRY

    register_optimizer("NAdam_Test", torch.optim.NAdam)
    try:
        cfg = optimizer_config_mapping["nadam_test"]
        assert cfg["hyperparameters"]["mom"] == 0.9 and cfg["hyperparameters"]["sqr_mom"] == 0.999
        assert cfg["wd"] == {"true_wd": False, "bn_wd": True} and cfg.set_betas
        ours, theirs = make_model(), make_model()
        opt = create_optimizer(ours, "nadam_test", 1e-2, mom=0.8, wd=0.1)
        ref = torch.optim.NAdam(theirs.parameters(), lr=1e-2, betas=(0.8, 0.999),
                                weight_decay=0.1, foreach=False)
        for step in range(6):
            backward(ours, step)
            backward(theirs, step)
            opt.step()
            ref.step()
        same_params(ours, theirs)
        fastai_opt = get_optimizer("nadam_test")(list(ours.parameters()), lr=1e-3)
        assert fastai_opt.hypers[0]["mom"] == 0.9 and fastai_opt.hypers[0]["wd"] == 0
    finally:
        _REGISTRY.pop("nadam_test", None)
    register_optimizer("rms_test", torch.optim.RMSprop)
    try:
        hp = optimizer_config_mapping["rms_test"]["hyperparameters"]
        assert hp["sqr_mom"] == 0.99 and hp["mom"] == 0
    finally:
        _REGISTRY.pop("rms_test", None)


def test_registering_what_cannot_be_mapped_is_a_clear_type_error():
    class NoLr(torch.optim.Optimizer):
        def __init__(self, params, scale=1.0):
            super().__init__(params, {"scale": scale})

    class NeedsArg(torch.optim.Optimizer):
        def __init__(self, params, lr, rho):
            super().__init__(params, {"lr": lr, "rho": rho})

    with pytest.raises(TypeError, match="NoLr.*takes no `lr`"):
        register_optimizer("x_nolr", NoLr)
    with pytest.raises(TypeError, match="'rho' has no default"):
        register_optimizer("x_needs", NeedsArg)
    with pytest.raises(TypeError, match="OptimizerConfig or a torch.optim.Optimizer"):
        register_optimizer("x_dict", {"optimizer": Ranger})  # type: ignore[arg-type]
    assert "x_nolr" not in optimizer_config_mapping
