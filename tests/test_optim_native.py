"""The Ranger family's C kernel (fasttricks.optim._native): maths, threads, layouts, and the
build under faults (no compiler, unwritable or damaged cache, two processes at once).

The references are the update written out here in float64 and the optimizers' torch paths
(``fused=False``); tests/test_optim.py runs the kernel against torch's RAdam plus a Lookahead
and gradient centralization composed there.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import skip_without_kernel
from fasttricks.optim import Ranger, RangerAdaBelief, _native, _ranger

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _kernel_here():
    skip_without_kernel()


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """A kernel state that has not tried to build yet, with its own cache folder."""
    monkeypatch.setattr(_native, "_state", {"lib": None, "reason": None, "tried": False,
                                            "path": None})
    monkeypatch.setenv("FASTTRICKS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def counted(monkeypatch) -> list[bool]:
    """What each call of the kernel returned (True: it did the update)."""
    calls: list[bool] = []
    real = _ranger.native_update

    def spy(*args):
        calls.append(real(*args))
        return calls[-1]

    monkeypatch.setattr(_ranger, "native_update", spy)
    return calls


def written_out_step(p, g, m, v, w, *, step, lr, betas, eps, wd, gc, l2, adabelief, maximize,
                     k, alpha):
    """One Ranger/RangerAdaBelief step in float64, from the papers' formulas."""
    b1, b2 = betas
    p, g, m, v, w = (t.double().clone() for t in (p, g, m, v, w))
    g = -g if maximize else g
    if l2:
        g = g + wd * p
    elif wd:
        p = p * (1 - lr * wd)
    if gc and g.ndim > 1:
        g = g - g.mean(dim=tuple(range(1, g.ndim)), keepdim=True)
    m = b1 * m + (1 - b1) * g
    rho_inf = 2 / (1 - b2) - 1
    rho = rho_inf - 2 * step * b2**step / (1 - b2**step)
    if adabelief:
        v = b2 * v + (1 - b2) * (g - m) ** 2
    else:
        v = b2 * v + (1 - b2) * g * g
    if rho > 5:
        if adabelief:
            v = v + eps
        r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
        size = lr * r * math.sqrt(1 - b2**step) / (1 - b1**step)
        p = p - size * m / (v.sqrt() + eps)
    else:
        p = p - lr / (1 - b1**step) * m
    if step % k == 0:
        w = w + alpha * (p - w)
        p = w.clone()
    return p, m, v, w


CASES = [
    # (class, step, gc, wd, l2, maximize): step 6 is a Lookahead sync, step 3 un-rectified
    (Ranger, 6, True, 0.1, False, False),
    (Ranger, 7, True, 0.1, True, False),
    (Ranger, 3, True, 0.0, False, True),
    (Ranger, 8, False, 0.05, True, True),
    (RangerAdaBelief, 12, True, 0.1, False, False),
    (RangerAdaBelief, 9, True, 0.2, True, True),
    (RangerAdaBelief, 2, False, 0.1, False, False),
]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("cls", "step", "gc", "wd", "l2", "maximize"), CASES)
def test_one_step_from_a_mid_fit_state_is_the_written_out_update(
    cls, step, gc, wd, l2, maximize, dtype, layout, monkeypatch,
):
    gen = torch.Generator().manual_seed(step)
    shapes = [(6, 5, 3, 3), (7, 40), (11,)]
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
    params = [p.contiguous(memory_format=fmt) if p.ndim == 4 else p for p in params]
    params = [p.requires_grad_() for p in params]
    lr, betas, eps = 0.05, (0.9, 0.99), 1e-4
    opt = cls(params, lr=lr, betas=betas, eps=eps, weight_decay=wd, use_gc=gc, true_wd=not l2,
              bn_wd=True, maximize=maximize)
    before = []
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype)
        p.grad = p.grad.contiguous(memory_format=fmt) if p.ndim == 4 else p.grad
        state = opt.state[p]
        state["step"] = step - 1
        state["exp_avg"] = 0.1 * torch.randn_like(p)
        state["exp_avg_sq"] = torch.rand_like(p) * 0.01
        state["slow_buffer"] = p.detach() + 0.01 * torch.randn_like(p)
        before.append([t.detach().clone() for t in (p, p.grad, state["exp_avg"],
                                                     state["exp_avg_sq"], state["slow_buffer"])])
    calls = counted(monkeypatch)
    opt.step()
    assert calls == [True]  # one call for the three tensors, and it took them
    tol = {"atol": 1e-12, "rtol": 1e-12} if dtype == torch.float64 else {"atol": 2e-6,
                                                                         "rtol": 2e-5}
    for p, (p0, g0, m0, v0, w0) in zip(params, before):
        want = written_out_step(p0, g0, m0, v0, w0, step=step, lr=lr, betas=betas, eps=eps,
                                wd=wd, gc=gc, l2=l2, adabelief=cls.adabelief,
                                maximize=maximize, k=6, alpha=0.5)
        state = opt.state[p]
        got = (p.detach(), state["exp_avg"], state["exp_avg_sq"], state["slow_buffer"])
        for name, a, b in zip(("p", "exp_avg", "exp_avg_sq", "slow"), got, want):
            torch.testing.assert_close(a.double(), b, **tol, msg=lambda m, n=name: f"{n}: {m}")
        assert torch.equal(p.grad, g0)  # the gradient is left as it was
        assert p.is_contiguous(memory_format=fmt) if p.ndim == 4 else p.is_contiguous()


def _big_model_step(threads: int, monkeypatch, name: str) -> list[torch.Tensor]:
    """Five steps over tensors cut into several units of work each, with ``threads`` threads."""
    monkeypatch.setattr(_native, "MIN_NUMEL_PER_THREAD", 1)
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).requires_grad_()
              for s in [(300, 500), (40000,), (3, 7), (2, 70000)]]
    opt = (Ranger if name == "ranger" else RangerAdaBelief)(params, lr=1e-2, weight_decay=0.1)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for step in range(7):
            for p in params:
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step))
            opt.step()
    finally:
        torch.set_num_threads(previous)
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("name", ["ranger", "rangeradabelief"])
def test_results_do_not_depend_on_the_number_of_threads(name, monkeypatch):
    one = _big_model_step(1, monkeypatch, name)
    for threads in (2, 3):
        for a, b in zip(one, _big_model_step(threads, monkeypatch, name)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("cls", [Ranger, RangerAdaBelief])
def test_kernel_and_foreach_path_agree_over_a_fit(cls, monkeypatch):
    gen = torch.Generator().manual_seed(3)
    shapes = [(16, 8, 3, 3), (16,), (10, 64)]
    a = [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in shapes]
    b = [t.detach().clone().requires_grad_() for t in a]
    ours = cls(a, lr=1e-2, weight_decay=0.1)
    plain = cls(b, lr=1e-2, weight_decay=0.1, fused=False)
    calls = counted(monkeypatch)
    for step in range(20):
        for x, y in zip(a, b):
            x.grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(step),
                                 dtype=torch.float64)
            y.grad = x.grad.clone()
        ours.step()
        plain.step()
    assert calls == [True] * 20  # fused=False never asks the kernel
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-10)
    assert ours.state_dict()["state"].keys() == plain.state_dict()["state"].keys()


def test_tensors_it_cannot_take_go_to_the_torch_paths(monkeypatch):
    base = torch.randn(8, 6, dtype=torch.float64)
    strided = base.t().requires_grad_()  # a transposed view: rows are not contiguous
    half = torch.randn(8, 6, dtype=torch.bfloat16, requires_grad=True)
    twins = [strided.detach().clone().contiguous().requires_grad_(),
             half.detach().clone().requires_grad_()]
    ours = Ranger([strided, half], lr=1e-2)
    plain = Ranger(twins, lr=1e-2, fused=False)
    calls = counted(monkeypatch)
    for step in range(8):
        gen = torch.Generator().manual_seed(step)
        for x, y in zip([strided, half], twins):
            y.grad = torch.randn(x.shape, generator=gen).to(x.dtype)
            x.grad = y.grad.clone()
        ours.step()
        plain.step()
    assert calls and not any(calls)  # asked, and declined each time
    torch.testing.assert_close(strided.detach(), twins[0].detach(), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(half.detach(), twins[1].detach(), atol=0, rtol=0)


# ------------------------------------------------------------------ building under faults
def _steps_like_the_torch_path() -> None:
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    ours, plain = Ranger([p], lr=1e-2), Ranger([q], lr=1e-2, fused=False)
    for step in range(7):
        p.grad = torch.randn(5, 4, generator=torch.Generator().manual_seed(step),
                             dtype=torch.float64)
        q.grad = p.grad.clone()
        ours.step()
        plain.step()
    torch.testing.assert_close(p, q, atol=1e-12, rtol=1e-10)


def test_switched_off_by_the_environment(fresh_build, monkeypatch):
    monkeypatch.setenv("FASTTRICKS_NATIVE", "0")
    status = _native.native_status()
    assert status == {"available": False, "path": None,
                      "reason": "RuntimeError: disabled by FASTTRICKS_NATIVE=0"}
    _steps_like_the_torch_path()
    assert not fresh_build.exists()  # nothing was built


def test_a_missing_compiler_falls_back_with_the_reason(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    status = _native.native_status()
    assert not status["available"]
    assert "cannot run the C compiler '/nonexistent/cc'" in status["reason"]
    _steps_like_the_torch_path()


def test_a_compiler_that_fails_falls_back_with_its_last_line(fresh_build, monkeypatch, tmp_path):
    fake = tmp_path / "badcc"
    fake.write_text("#!/bin/sh\necho 'fatal: this compiler is broken' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    status = _native.native_status()
    assert not status["available"]
    assert status["reason"].endswith("failed: fatal: this compiler is broken")
    _steps_like_the_torch_path()


def test_an_unwritable_cache_folder_builds_in_the_temp_folder(fresh_build, monkeypatch, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("FASTTRICKS_CACHE_DIR", str(blocker))
    monkeypatch.setattr(_native.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    status = _native.native_status()
    assert status["available"], status["reason"]
    assert Path(status["path"]).parent == tmp_path / "tmp" / f"fasttricks-{os.getuid()}" / "kernels"
    _steps_like_the_torch_path()


def test_a_damaged_library_in_the_cache_is_built_again(fresh_build):
    path = _native._build(_native._compiler())  # built, not loaded (a loaded file is mapped)
    size = path.stat().st_size
    with open(path, "r+b") as f:  # cut short, as by a full disk
        f.truncate(100)
    status = _native.native_status()
    assert status["available"], status["reason"]
    assert path.stat().st_size == size
    _steps_like_the_torch_path()


def test_two_processes_building_at_once_both_load_it(tmp_path):
    env = {**os.environ, "FASTTRICKS_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": str(ROOT)}
    code = ("from fasttricks.optim._native import native_status; s = native_status(); "
            "print(s['available'], s['path'])")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outs
    paths = {out.split()[1] for out, _ in outs}
    assert [out.split()[0] for out, _ in outs] == ["True", "True"]
    assert len(paths) == 1
    folder = tmp_path / "cache" / "kernels"
    assert sorted(p.name for p in folder.iterdir()) == [Path(paths.pop()).name]  # no leftovers
