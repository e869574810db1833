"""fasttricks.optim: registry, validation and the maths of every optimizer against references.

References are independent: torch's own optimizers (AdamW, SGD, RMSprop, RAdam), a Lookahead
and gradient centralization written out here, AdaBelief's second moment written out here, and
the ``ranger-adabelief`` package. Numerics run in float64 for 30+ steps with tolerance 1e-6.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import math

import pytest
import torch
from torch import nn

from conftest import skip_without_kernel
from fasttricks.optim import (
    SGD,
    OptimizerConfig,
    Ranger,
    RangerAdaBelief,
    create_optimizer,
    get_optimizer,
    list_optimizers,
    optimizer_config_mapping,
    register_optimizer,
)

NINE = ["adamw", "ranger", "ranger_nogc", "rangeradabelief", "rangeradabelief_nogc", "sgd",
        "sgd_momentum", "sgd_nesterov", "rmsprop"]
STEPS = 36
TOL = {"atol": 1e-6, "rtol": 1e-6}


# ------------------------------------------------------------------ helpers
def make_model(dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    """Conv (4-D weight), BatchNorm (1-D weight/bias), Linear (2-D weight): every kind of param."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 3))
    return model.to(dtype)


def data(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 2, 6, 6, generator=gen).to(dtype)
    y = torch.randn(16, 3, generator=gen).to(dtype)
    return x, y


def backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    for p in model.parameters():
        p.grad = None
    loss = ((model(x) - y) ** 2).mean() + 0.1 * model(x).tanh().sum(1).pow(2).mean()
    loss.backward()
    return loss.item()


def assert_same_params(a: nn.Module, b: nn.Module, step: int, **tol: float) -> None:
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(
            pa, pb, **(tol or TOL), msg=lambda m, name=name: f"step {step} {name}: {m}"
        )


def decoupled_decay(model: nn.Module, lr: float, wd: float, only_nd: bool = True) -> None:
    """Written out: p <- p * (1 - lr*wd) on parameters with ndim > 1 (all if not only_nd)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1 or not only_nd:
                p.mul_(1 - lr * wd)


def l2_decay(model: nn.Module, wd: float, only_nd: bool = True) -> None:
    """Written out: grad <- grad + wd * p on parameters with ndim > 1 (all if not only_nd)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1 or not only_nd:
                p.grad.add_(p, alpha=wd)


def centralize(model: nn.Module) -> None:
    """Gradient centralization written out: g -= g.mean(over all dims but 0) for ndim > 1."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.grad -= p.grad.mean(dim=tuple(range(1, p.ndim)), keepdim=True)


class LookaheadRef:
    """Lookahead written out (Zhang et al. 2019) with a per-parameter step count."""

    def __init__(self, model: nn.Module, k: int, alpha: float) -> None:
        self.k, self.alpha = k, alpha
        self.slow = {p: p.detach().clone() for p in model.parameters()}
        self.count = {p: 0 for p in model.parameters()}

    @torch.no_grad()
    def after_step(self, stepped: list[torch.Tensor]) -> None:
        for p in stepped:
            self.count[p] += 1
            if self.count[p] % self.k == 0:
                slow = self.slow[p]
                slow += self.alpha * (p - slow)
                p.copy_(slow)


def adabelief_radam_reference(
    model: nn.Module, lr: float, betas: tuple[float, float], eps: float
):
    """RAdam with AdaBelief's second moment written out per parameter (no Lookahead/decay)."""
    b1, b2 = betas
    state = {p: {"t": 0, "m": torch.zeros_like(p), "s": torch.zeros_like(p)}
             for p in model.parameters()}

    @torch.no_grad()
    def step() -> None:
        for p in model.parameters():
            st = state[p]
            st["t"] += 1
            t, g = st["t"], p.grad
            st["m"] = b1 * st["m"] + (1 - b1) * g
            st["s"] = b2 * st["s"] + (1 - b2) * (g - st["m"]) ** 2
            rho_inf = 2 / (1 - b2) - 1
            rho_t = rho_inf - 2 * t * b2**t / (1 - b2**t)
            m_hat = st["m"] / (1 - b1**t)
            if rho_t > 5:
                st["s"] = st["s"] + eps  # ranger-adabelief keeps +eps in s on rectified steps
                r = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                              / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
                denom = st["s"].sqrt() + eps
                p -= lr * r * math.sqrt(1 - b2**t) * m_hat / denom
            else:
                p -= lr * m_hat

    return step


# ------------------------------------------------------------------ registry
def test_registry_holds_the_nine_cheatsheet_names_with_their_rules():
    assert set(NINE) <= set(optimizer_config_mapping)
    adamw = optimizer_config_mapping["adamw"]
    assert (adamw.true_wd, adamw.bn_wd, adamw.set_betas) == (True, True, True)
    for name in NINE[1:]:
        cfg = optimizer_config_mapping[name]
        assert (cfg.true_wd, cfg.bn_wd) == (True, False), name
    for name in ["sgd", "sgd_momentum", "sgd_nesterov", "rmsprop"]:
        assert optimizer_config_mapping[name].set_betas is False
    hp = {n: optimizer_config_mapping[n].hyperparameters for n in NINE}
    assert hp["sgd"]["mom"] == 0 and hp["sgd_momentum"]["mom"] == 0.9
    assert hp["sgd_nesterov"]["mom"] == 0.9 and hp["sgd_nesterov"]["nesterov"] is True
    assert hp["rmsprop"]["mom"] == 0.9
    assert hp["ranger"]["use_gc"] and not hp["ranger_nogc"]["use_gc"]
    assert hp["rangeradabelief"]["use_gc"] and not hp["rangeradabelief_nogc"]["use_gc"]
    assert hp["ranger"]["k"] == 6 and hp["ranger"]["alpha"] == 0.5
    assert optimizer_config_mapping["rangeradabelief"].optimizer is RangerAdaBelief


def test_mapping_and_configs_are_read_only():
    with pytest.raises(TypeError):
        optimizer_config_mapping["x"] = optimizer_config_mapping["sgd"]  # type: ignore[index]
    cfg = optimizer_config_mapping["ranger"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.true_wd = False  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.hyperparameters["eps"] = 1.0  # type: ignore[index]


def test_list_optimizers_sorts_and_filters_with_case_insensitive_globs():
    assert list_optimizers() == sorted(list_optimizers())
    assert list_optimizers("RANGER*") == ["ranger", "ranger_nogc", "rangeradabelief",
                                          "rangeradabelief_nogc"]
    assert list_optimizers("sgd_*") == ["sgd_momentum", "sgd_nesterov"]


def test_register_optimizer_adds_a_usable_name_and_refuses_duplicates():
    cfg = OptimizerConfig(SGD, {"mom": 0.5, "wd": 0.0}, true_wd=True, bn_wd=False,
                          set_betas=False)
    register_optimizer("Test_SGD_Half", cfg)
    try:
        assert "test_sgd_half" in list_optimizers()
        opt = create_optimizer(nn.Linear(2, 2), "test_sgd_half", lr=0.1)
        assert opt.param_groups[0]["momentum"] == 0.5
        with pytest.raises(ValueError, match="already registered"):
            register_optimizer("test_sgd_half", cfg)
        with pytest.raises(TypeError, match="OptimizerConfig"):
            register_optimizer("other", {"optimizer": SGD})  # type: ignore[arg-type]
    finally:
        from fasttricks.optim._config import _REGISTRY

        _REGISTRY.pop("test_sgd_half", None)


def test_config_rejects_hyperparameters_its_optimizer_does_not_know():
    with pytest.raises(TypeError, match="'k'"):
        OptimizerConfig(SGD, {"mom": 0.9, "k": 6})


# ------------------------------------------------------------------ validation
def test_unknown_name_is_key_error_listing_known_names_and_closest_match():
    with pytest.raises(KeyError) as info:
        get_optimizer("rangr")
    msg = str(info.value)
    assert "'rangr'" in msg and all(f"'{n}'" in msg for n in NINE)
    assert "Did you mean 'ranger'?" in msg


def test_unknown_override_is_type_error_listing_allowed_keys():
    with pytest.raises(TypeError) as info:
        get_optimizer("ranger", epss=1e-6)
    msg = str(info.value)
    assert "'epss'" in msg and "'eps'?" in msg
    for key in ["mom", "sqr_mom", "eps", "wd", "k", "alpha", "use_gc", "true_wd", "bn_wd"]:
        assert key in msg
    with pytest.raises(TypeError, match="nesterov"):
        create_optimizer(nn.Linear(2, 2), "adamw", 1e-3, nesterov=True)


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("adamw", {"lr": -1e-3}, "lr must be >= 0, got -0.001"),
        ("ranger", {"mom": 1.0}, "mom must be >= 0 and < 1, got 1.0"),
        ("rangeradabelief", {"sqr_mom": -0.1}, "sqr_mom must be >= 0 and < 1, got -0.1"),
        ("ranger", {"eps": 0.0}, "eps must be > 0, got 0.0"),
        ("sgd", {"wd": -0.01}, "wd must be >= 0, got -0.01"),
        ("ranger", {"k": 0}, "k must be an integer >= 1, got 0"),
        ("ranger", {"alpha": 1.5}, "alpha must be >= 0 and <= 1, got 1.5"),
    ],
)
def test_bad_values_raise_value_error_naming_argument_and_value(name, kwargs, expected):
    kwargs = dict(kwargs)
    lr = kwargs.pop("lr", 1e-3)
    with pytest.raises(ValueError) as info:
        create_optimizer(nn.Linear(2, 2), name, lr, **kwargs)
    assert str(info.value) == expected
    if not isinstance(lr, float) or lr >= 0:
        with pytest.raises(ValueError):
            get_optimizer(name, **kwargs)


def test_optimizer_classes_validate_their_own_arguments():
    with pytest.raises(ValueError, match=r"betas\[0\] must be >= 0 and < 1, got 1.0"):
        Ranger(nn.Linear(2, 2).parameters(), betas=(1.0, 0.99))
    with pytest.raises(ValueError, match="eps must be > 0, got -1"):
        RangerAdaBelief(nn.Linear(2, 2).parameters(), eps=-1)


# ------------------------------------------------------------------ torch-based optimizers
def _run_pair(ours_factory, ref_factory, before_ref=None, steps=STEPS, dtype=torch.float64):
    x, y = data(dtype)
    m_ours, m_ref = make_model(dtype), make_model(dtype)
    ours, ref = ours_factory(m_ours), ref_factory(m_ref)
    for step in range(steps):
        backward(m_ours, x, y)
        backward(m_ref, x, y)
        ours.step()
        if before_ref is not None:
            before_ref(m_ref)
        ref.step()
        assert_same_params(m_ours, m_ref, step)
    return m_ours


def test_adamw_matches_torch_adamw_step_by_step():
    lr, wd = 1e-2, 0.1
    _run_pair(lambda m: create_optimizer(m, "adamw", lr, wd=wd, eps=1e-8, sqr_mom=0.999),
              lambda m: torch.optim.AdamW(m.parameters(), lr, (0.9, 0.999), 1e-8, wd,
                                          foreach=False))


def test_adamw_without_bn_wd_matches_torch_adamw_with_decay_only_on_nd_params():
    lr, wd = 1e-2, 0.1

    def ref(m):
        nd = [p for p in m.parameters() if p.ndim > 1]
        one_d = [p for p in m.parameters() if p.ndim <= 1]
        return torch.optim.AdamW([{"params": nd}, {"params": one_d, "weight_decay": 0.0}],
                                 lr, (0.9, 0.99), 1e-5, wd, foreach=False)

    def ours(m):
        opt = create_optimizer(m, "adamw", lr, wd=wd, bn_wd=False)
        assert len(opt.param_groups) == 1  # the rule does not split groups
        return opt

    _run_pair(ours, ref)


@pytest.mark.parametrize(
    ("name", "torch_kwargs"),
    [
        ("sgd", {"momentum": 0.0}),
        ("sgd_momentum", {"momentum": 0.9}),
        ("sgd_nesterov", {"momentum": 0.9, "nesterov": True}),
        ("rmsprop", {"momentum": 0.9, "alpha": 0.99, "eps": 1e-8}),
    ],
)
def test_sgd_and_rmsprop_match_torch_with_decoupled_decay_written_out(name, torch_kwargs):
    lr, wd = 1e-2, 0.2
    cls = torch.optim.RMSprop if name == "rmsprop" else torch.optim.SGD
    _run_pair(lambda m: create_optimizer(m, name, lr, wd=wd),
              lambda m: cls(m.parameters(), lr=lr, foreach=False, **torch_kwargs),
              before_ref=lambda m: decoupled_decay(m, lr, wd))


def test_l2_rule_without_bn_wd_adds_wd_times_param_to_nd_gradients_only():
    lr, wd = 1e-2, 0.2
    _run_pair(lambda m: create_optimizer(m, "sgd_momentum", lr, wd=wd, true_wd=False),
              lambda m: torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9, foreach=False),
              before_ref=lambda m: l2_decay(m, wd))


def test_native_l2_rule_passes_weight_decay_to_torch():
    lr, wd = 1e-2, 0.2
    _run_pair(lambda m: create_optimizer(m, "rmsprop", lr, wd=wd, true_wd=False, bn_wd=True),
              lambda m: torch.optim.RMSprop(m.parameters(), lr=lr, momentum=0.9,
                                            weight_decay=wd, foreach=False))


def test_weight_decay_value_is_restored_after_each_step():
    opt = create_optimizer(make_model(), "sgd_momentum", 0.1, wd=0.3)
    model_params = opt.param_groups[0]["params"]
    for p in model_params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert opt.param_groups[0]["weight_decay"] == 0.3


def test_adamw_uses_the_fused_kernel_on_cpu_and_foreach_when_the_rule_is_custom():
    model = make_model(torch.float32)
    assert create_optimizer(model, "adamw", 1e-3).defaults["fused"] is True
    for custom in ({"bn_wd": False}, {"true_wd": False}):
        opt = create_optimizer(model, "adamw", 1e-3, **custom)
        assert opt.defaults["foreach"] is True and not opt.defaults["fused"], custom
    for name in ["sgd_nesterov", "rmsprop"]:
        opt = create_optimizer(model, name, 1e-3)
        assert opt.defaults["foreach"] is True, name
        assert not opt.defaults.get("fused"), name


def test_step_hooks_run_once_per_step():
    for name in ["adamw", "sgd", "ranger"]:
        model = make_model()
        opt = create_optimizer(model, name, 1e-3, wd=0.1, bn_wd=False)
        calls = []
        opt.register_step_pre_hook(lambda *a, calls=calls: calls.append("pre"))
        opt.register_step_post_hook(lambda *a, calls=calls: calls.append("post"))
        backward(model, *data())
        opt.step()
        assert calls == ["pre", "post"], name


# ------------------------------------------------------------------ Ranger family
def use_path(opt, path, monkeypatch):
    """Send ``opt``'s steps through one of its three CPU paths: the C kernel ("native"), torch's
    fused kernels ("torch"), or foreach calls in blocks of 7 elements ("foreach")."""
    from fasttricks.optim import _ranger

    if path == "native":
        skip_without_kernel()
        calls = []
        real = _ranger.native_update

        def counted(*args):
            calls.append(1)
            done = real(*args)
            assert done, "the C kernel declined tensors it should take"
            return done

        monkeypatch.setattr(_ranger, "native_update", counted)
        return calls
    monkeypatch.setattr(_ranger, "native_update", lambda *args: False)
    if path == "foreach":
        opt.block_numel = 7
        for group in opt.param_groups:
            group["fused"] = False
    return None


PATHS = ["native", "torch", "foreach"]


def _radam_lookahead_pair(name, lr, wd, gc, monkeypatch, path="native", true_wd=True):
    """ours vs torch RAdam + Lookahead (+ decay and GC written out) composed here."""
    betas, eps = (0.9, 0.99), 1e-7
    x, y = data()
    m_ours, m_ref = make_model(), make_model()
    ours = create_optimizer(m_ours, name, lr, mom=betas[0], sqr_mom=betas[1], eps=eps, wd=wd,
                            true_wd=true_wd)
    calls = use_path(ours, path, monkeypatch)
    radam = torch.optim.RAdam(m_ref.parameters(), lr, betas, eps, foreach=False)
    lookahead = LookaheadRef(m_ref, k=6, alpha=0.5)
    for step in range(STEPS):
        backward(m_ours, x, y)
        backward(m_ref, x, y)
        ours.step()
        if true_wd:
            decoupled_decay(m_ref, lr, wd)
        else:
            l2_decay(m_ref, wd)
        if gc:
            centralize(m_ref)
        radam.step()
        lookahead.after_step(list(m_ref.parameters()))
        assert_same_params(m_ours, m_ref, step)
    assert calls is None or len(calls) == STEPS


@pytest.mark.parametrize("path", PATHS)
def test_ranger_nogc_matches_torch_radam_plus_lookahead(path, monkeypatch):
    _radam_lookahead_pair("ranger_nogc", lr=1e-2, wd=0.0, gc=False, monkeypatch=monkeypatch,
                          path=path)


@pytest.mark.parametrize("path", PATHS)
def test_ranger_matches_radam_lookahead_with_centralized_gradients_and_decoupled_decay(
    path, monkeypatch,
):
    _radam_lookahead_pair("ranger", lr=1e-2, wd=0.1, gc=True, monkeypatch=monkeypatch, path=path)


@pytest.mark.parametrize("path", PATHS)
def test_ranger_l2_rule_adds_decay_to_gradient_before_centralization(path, monkeypatch):
    _radam_lookahead_pair("ranger", lr=1e-2, wd=0.1, gc=True, monkeypatch=monkeypatch, path=path,
                          true_wd=False)


def test_rectification_switches_on_when_rho_exceeds_five():
    # with beta2 = 0.99, rho_t > 5 first at t = 6: steps 1..5 are momentum SGD
    from fasttricks.optim._ranger import _rectification

    assert [_rectification(t, 0.99) is None for t in range(1, 8)] == [True] * 5 + [False] * 2
    b2, t = 0.999, 50
    rho_inf = 2 / (1 - b2) - 1
    rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
    expected = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
    assert _rectification(t, b2) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("name", "wd"), [("rangeradabelief", 0.0), ("rangeradabelief", 0.1),
                                          ("rangeradabelief_nogc", 0.05)])
def test_rangeradabelief_matches_written_out_adabelief_formula(name, wd, path, monkeypatch):
    lr, betas, eps = 1e-2, (0.9, 0.999), 1e-6
    gc = not name.endswith("nogc")
    x, y = data()
    m_ours, m_ref = make_model(), make_model()
    ours = create_optimizer(m_ours, name, lr, mom=betas[0], sqr_mom=betas[1], eps=eps, wd=wd)
    use_path(ours, path, monkeypatch)
    ref_step = adabelief_radam_reference(m_ref, lr, betas, eps)
    lookahead = LookaheadRef(m_ref, k=6, alpha=0.5)
    for step in range(STEPS):
        backward(m_ours, x, y)
        backward(m_ref, x, y)
        ours.step()
        decoupled_decay(m_ref, lr, wd)
        if gc:
            centralize(m_ref)
        ref_step()
        lookahead.after_step(list(m_ref.parameters()))
        assert_same_params(m_ours, m_ref, step)


def test_rangeradabelief_matches_ranger_adabelief_package_with_zero_weight_decay():
    from ranger_adabelief import RangerAdaBelief as PackageRangerAdaBelief

    # the package computes in float32 whatever the parameter dtype, so compare in float32
    lr, betas, eps = 1e-2, (0.95, 0.999), 1e-5
    x, y = data(torch.float32)
    m_ours, m_ref = make_model(torch.float32), make_model(torch.float32)
    ours = create_optimizer(m_ours, "rangeradabelief", lr, mom=betas[0], sqr_mom=betas[1],
                            eps=eps, wd=0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        ref = PackageRangerAdaBelief(m_ref.parameters(), lr=lr, betas=betas, eps=eps)
    for step in range(STEPS):
        backward(m_ours, x, y)
        backward(m_ref, x, y)
        ours.step()
        ref.step()
        assert_same_params(m_ours, m_ref, step, atol=2e-6, rtol=1e-5)
        for p_ours, p_ref in zip(m_ours.parameters(), m_ref.parameters()):
            s_ours, s_ref = ours.state[p_ours], ref.state[p_ref]
            assert s_ours["step"] == s_ref["step"]
            torch.testing.assert_close(s_ours["exp_avg_sq"], s_ref["exp_avg_sq"],
                                       atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("name", ["ranger", "rangeradabelief", "adamw", "sgd_momentum",
                                  "rmsprop"])
def test_no_weight_decay_on_1d_params_is_decided_inside_the_step(name):
    lr, wd, steps = 0.1, 0.5, 4
    model = make_model()
    before = copy.deepcopy(model)
    opt = create_optimizer(model, name, lr, wd=wd, bn_wd=False)
    assert len(opt.param_groups) == 1
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    for p, p0 in zip(model.parameters(), before.parameters()):
        factor = (1 - lr * wd) ** steps if p.ndim > 1 else 1.0
        torch.testing.assert_close(p, p0 * factor, atol=1e-12, rtol=1e-12)


def test_parameters_that_join_late_keep_their_own_step_count():
    lr, betas, eps = 1e-2, (0.9, 0.99), 1e-7
    x, y = data()
    m_ours, m_ref = make_model(), make_model()
    ours = create_optimizer(m_ours, "ranger_nogc", lr, mom=betas[0], sqr_mom=betas[1], eps=eps,
                            wd=0.0)
    radam = torch.optim.RAdam(m_ref.parameters(), lr, betas, eps, foreach=False)
    lookahead = LookaheadRef(m_ref, k=6, alpha=0.5)
    for step in range(20):
        backward(m_ours, x, y)
        backward(m_ref, x, y)
        if step < 8:  # the linear layer is frozen for the first 8 steps
            for m in (m_ours, m_ref):
                m[4].weight.grad = m[4].bias.grad = None
        ours.step()
        radam.step()
        lookahead.after_step([p for p in m_ref.parameters() if p.grad is not None])
        assert_same_params(m_ours, m_ref, step)
    assert ours.state[m_ours[4].weight]["step"] == 12
    assert ours.state[m_ours[0].weight]["step"] == 20


def test_mixed_dtypes_in_one_group_are_updated_like_separate_optimizers():
    torch.manual_seed(0)
    a = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 2, dtype=torch.float32, requires_grad=True)
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    both = Ranger([a, b], lr=1e-2)
    sep = [Ranger([a2], lr=1e-2), Ranger([b2], lr=1e-2)]
    for _ in range(12):
        for p in (a, b, a2, b2):
            p.grad = torch.sin(p.detach() * 3)
        both.step()
        for opt in sep:
            opt.step()
    torch.testing.assert_close(a, a2, atol=0, rtol=0)
    torch.testing.assert_close(b, b2, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["ranger", "rangeradabelief", "adamw", "sgd_nesterov"])
def test_state_dict_roundtrip_continues_identically(name):
    x, y = data()
    model = make_model()
    opt = create_optimizer(model, name, 1e-2, wd=0.1)
    for _ in range(10):
        backward(model, x, y)
        opt.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    clone = make_model(seed=3)
    clone.load_state_dict(saved["model"])
    opt2 = create_optimizer(clone, name, 1e-3)
    opt2.load_state_dict(saved["opt"])
    for step in range(10):
        backward(model, x, y)
        backward(clone, x, y)
        opt.step()
        opt2.step()
        assert_same_params(model, clone, step, atol=0, rtol=0)


def test_step_evaluates_the_closure_and_returns_its_loss():
    x, y = data()
    model = make_model()
    for name in ["ranger", "adamw"]:
        opt = create_optimizer(model, name, 1e-3)
        loss = opt.step(lambda: torch.tensor(backward(model, x, y)))
        assert isinstance(loss, torch.Tensor) and loss.item() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fused", [None, False])
def test_ranger_leaves_p_grad_as_the_backward_pass_made_it(dtype, fused):
    # the reference implementations centralize p.grad in place; here no path writes to it
    model = make_model(dtype)
    opt = create_optimizer(model, "ranger", 1e-3)
    for group in opt.param_groups:
        group["fused"] = fused
    backward(model, *data(dtype))
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    assert model[0].weight.grad.mean(dim=(1, 2, 3)).abs().max() > 1e-4  # not centralized
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g)


# ------------------------------------------------------------------ CUDA
@pytest.mark.cuda
def test_adamw_uses_fused_kernel_on_cuda_and_foreach_when_the_rule_is_custom():
    model = make_model(torch.float32).cuda()
    assert create_optimizer(model, "adamw", 1e-3).defaults["fused"] is True
    custom = create_optimizer(model, "adamw", 1e-3, bn_wd=False)
    assert custom.defaults["foreach"] is True and not custom.defaults["fused"]


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["ranger", "rangeradabelief", "adamw", "sgd_nesterov"])
def test_cuda_steps_match_cpu_steps(name):
    x, y = data(torch.float64)
    m_cpu, m_gpu = make_model(), make_model().cuda()
    o_cpu = create_optimizer(m_cpu, name, 1e-2, wd=0.1)
    o_gpu = create_optimizer(m_gpu, name, 1e-2, wd=0.1)
    for step in range(STEPS):
        backward(m_cpu, x, y)
        backward(m_gpu, x.cuda(), y.cuda())
        o_cpu.step()
        o_gpu.step()
    for p_cpu, p_gpu in zip(m_cpu.parameters(), m_gpu.parameters()):
        torch.testing.assert_close(p_gpu.cpu(), p_cpu, atol=1e-6, rtol=1e-6)


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["ranger", "adamw"])
def test_cuda_mixed_precision_loop_with_grad_scaler_trains(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1)).cuda()
    opt = create_optimizer(model, name, 1e-2)
    scaler = torch.amp.GradScaler("cuda")
    x = torch.randn(256, 16, device="cuda")
    y = x[:, :1] * 2 - x[:, 1:2]
    losses = []
    for _ in range(60):
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = ((model(x).float() - y) ** 2).mean()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.cuda
def test_cuda_parameters_are_not_cut_into_cache_blocks():
    model = nn.Sequential(nn.Linear(1024, 1024), nn.Linear(1024, 1024)).cuda()
    opt = Ranger(model.parameters(), lr=1e-3, fused=False)
    opt.block_numel = 1000
    calls = []
    original = Ranger._foreach_update

    def counting(self, group, block, *args):
        calls.append(len(block.params))
        return original(self, group, block, *args)

    Ranger._foreach_update = counting
    try:
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
    finally:
        Ranger._foreach_update = original
    assert calls == [4]  # one multi-tensor launch per op over all four parameters
