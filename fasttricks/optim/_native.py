"""The Ranger family's CPU step as one C loop per tensor, compiled on first use.

torch has no kernel that centralizes a gradient while it updates, so the eager step pays extra
passes over memory for gradient centralization (a row-mean pass, a subtraction pass) and for
the Lookahead sync (reading and writing the slow and fast weights again). This kernel does one
pass per row instead: it sums the row of the effective gradient (``-g`` under ``maximize``,
``+ wd*p`` under the L2 rule) while that row is small enough to stay in the core's cache, then
streams the row once through the whole update (both moments, RAdam's rectified or momentum-SGD
step, decoupled decay, and on every ``k``-th step the Lookahead sync), reading and writing each
buffer once, as torch's fused AdamW kernel does. Rows of a tensor are shared out between
``torch.get_num_threads()`` POSIX threads.

The maths is the compiled step's (``_compiled._update``): ``p -= m * (a / (sqrt(v) + eps) + b)``
with ``a`` RAdam's rectified step size and ``b`` the momentum-SGD one; it runs on float32 and
float64 CPU tensors, contiguous or channels-last, and leaves ``p.grad`` unchanged. Each unit of
work (a chunk, or whole rows) is computed the same way whichever thread takes it, so the
results do not depend on the number of threads.

Building: the C source below is compiled once per machine with the system C compiler (``$CC``,
else ``cc``, ``gcc`` or ``clang``; about a second) into ``kernels/`` of
fasttricks' cache folder (:func:`fasttricks._cache.cache_dir`, ``~/.cache/fasttricks`` on Linux),
named by a hash of the source, the flags and the CPU, written under a temporary name and renamed
into place, so processes that build at the same time never load a half-written library. Where
no compiler works, or ``FASTTRICKS_NATIVE=0``, the optimizers take torch's fused and foreach
kernels as before; :func:`native_status` says which happened.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._cache import cache_dir

__all__ = ["native_applies", "native_status", "native_update"]

_log = logging.getLogger(__name__)

_HEADER = r"""
#include <math.h>
#include <stdint.h>
#include <pthread.h>

/* one tensor: data pointers, element count, row length for centralization (0: none), and
   whether it decays decoupled (p *= decay) or by the L2 rule (g += wd * p) */
typedef struct { int64_t p, g, m, v, slow, numel, row, decoupled, l2; } ft_tensor;
typedef struct { double decay, wd, beta1, beta2, a, b, eps, eps_add, alpha; } ft_hyper;
typedef struct {
    const ft_tensor *ts; int64_t n; const ft_hyper *h;
    int adabelief, maximize, sync, dtype; int64_t begin, end;
} ft_job;

#define FT_CHUNK 8192      /* unit of work of a tensor without centralization */
#define FT_SUM_BLOCK 2048  /* elements summed in working precision before going to double */
#define FT_SEGMENT 65536   /* elements of whole rows per unit of work with centralization */
"""

# written once, instantiated for float (_f32) and double (_f64)
_BODY = r"""
/* the update of n elements with the row mean `mean` subtracted from the gradient; with
   `next` (1: gradient, 2: gradient and L2 term) it also sums the next row's effective gradient
   (gn, pn) into *sum_next, so that row is in cache when its turn comes */
static inline __attribute__((always_inline)) void update_SFX(
        real_t *restrict p, const real_t *restrict g, real_t *restrict m, real_t *restrict v,
        real_t *restrict w, int64_t n, real_t sgn, real_t l2w, real_t mean, real_t dec,
        const ft_hyper *h, const int adabelief, const int sync, const int next,
        const real_t *restrict gn, const real_t *restrict pn, double *sum_next) {
    const real_t b1c = (real_t)(1.0 - h->beta1), b2 = (real_t)h->beta2;
    const real_t b2c = (real_t)(1.0 - h->beta2), a = (real_t)h->a, b = (real_t)h->b;
    const real_t eps = (real_t)h->eps, eps_add = (real_t)h->eps_add;
    const real_t alpha = (real_t)h->alpha;
    double total = 0.0;
    for (int64_t s = 0; s < n; s += FT_SUM_BLOCK) {
        const int64_t e = s + FT_SUM_BLOCK < n ? s + FT_SUM_BLOCK : n;
        real_t acc = 0;
        #pragma omp simd reduction(+:acc)
        for (int64_t i = s; i < e; i++) {
            const real_t pi = p[i];
            const real_t gi = sgn * g[i] + l2w * pi - mean;
            const real_t mi = m[i] + b1c * (gi - m[i]);
            real_t vi;
            if (adabelief) { const real_t d = gi - mi; vi = v[i] + b2c * (d * d - v[i]) + eps_add; }
            else vi = b2 * v[i] + b2c * gi * gi;
            const real_t pu = pi * dec - mi * (a / (SQRT(vi) + eps) + b);
            m[i] = mi;
            v[i] = vi;
            if (sync) { const real_t wn = w[i] + alpha * (pu - w[i]); w[i] = wn; p[i] = wn; }
            else p[i] = pu;
            if (next == 1) acc += gn[i];
            if (next == 2) acc += sgn * gn[i] + l2w * pn[i];
        }
        total += (double)acc;
    }
    if (next) *sum_next = next == 1 ? (double)sgn * total : total;
}

#define FT_UPDATE_SFX(ADAB, SYNC, NEXT) update_SFX(p, g, m, v, w, n, sgn, l2w, mean, dec, h, \
    ADAB, SYNC, NEXT, gn, pn, sum_next)

static void dispatch_SFX(real_t *p, const real_t *g, real_t *m, real_t *v, real_t *w, int64_t n,
                         real_t sgn, real_t l2w, real_t mean, real_t dec, const ft_hyper *h,
                         int adabelief, int sync, int next, const real_t *gn, const real_t *pn,
                         double *sum_next) {
    const int variant = (adabelief ? 6 : 0) + (sync ? 3 : 0) + next;
    switch (variant) {
        case 0: FT_UPDATE_SFX(0, 0, 0); break;
        case 1: FT_UPDATE_SFX(0, 0, 1); break;
        case 2: FT_UPDATE_SFX(0, 0, 2); break;
        case 3: FT_UPDATE_SFX(0, 1, 0); break;
        case 4: FT_UPDATE_SFX(0, 1, 1); break;
        case 5: FT_UPDATE_SFX(0, 1, 2); break;
        case 6: FT_UPDATE_SFX(1, 0, 0); break;
        case 7: FT_UPDATE_SFX(1, 0, 1); break;
        case 8: FT_UPDATE_SFX(1, 0, 2); break;
        case 9: FT_UPDATE_SFX(1, 1, 0); break;
        case 10: FT_UPDATE_SFX(1, 1, 1); break;
        default: FT_UPDATE_SFX(1, 1, 2); break;
    }
}

/* elements [start, start + len) of a tensor: with centralization, whole rows of t->row
   elements, each row's sum taken while the row before it is updated */
static void span_SFX(const ft_tensor *t, int64_t start, int64_t len, const ft_hyper *h,
                     int adabelief, int maximize, int sync) {
    real_t *p = (real_t *)t->p, *m = (real_t *)t->m, *v = (real_t *)t->v;
    real_t *w = (real_t *)t->slow;
    const real_t *g = (const real_t *)t->g;
    const real_t sgn = maximize ? (real_t)-1 : (real_t)1;
    const real_t l2w = t->l2 ? (real_t)h->wd : (real_t)0;
    const real_t dec = t->decoupled ? (real_t)h->decay : (real_t)1;
    if (t->row <= 0) {
        for (int64_t s = start; s < start + len; s += FT_CHUNK) {
            const int64_t n = s + FT_CHUNK <= start + len ? FT_CHUNK : start + len - s;
            dispatch_SFX(p + s, g + s, m + s, v + s, w + s, n, sgn, l2w, 0, dec, h, adabelief,
                         sync, 0, 0, 0, 0);
        }
        return;
    }
    const int64_t n = t->row, mode = t->l2 ? 2 : 1;
    double sum = 0.0;
    for (int64_t s = start; s < start + n; s += FT_SUM_BLOCK) {
        const int64_t e = s + FT_SUM_BLOCK < start + n ? s + FT_SUM_BLOCK : start + n;
        real_t acc = 0;
        #pragma omp simd reduction(+:acc)
        for (int64_t i = s; i < e; i++) acc += sgn * g[i] + l2w * p[i];
        sum += (double)acc;
    }
    for (int64_t s = start; s < start + len; s += n) {
        const real_t mean = (real_t)(sum / (double)n);
        const int next = s + n < start + len ? (int)mode : 0;
        dispatch_SFX(p + s, g + s, m + s, v + s, w + s, n, sgn, l2w, mean, dec, h, adabelief,
                     sync, next, g + s + n, p + s + n, &sum);
    }
}
"""

_TAIL = r"""
/* the units of work whose first element lies in the job's span of the concatenated tensors:
   chunks of FT_CHUNK elements, or with centralization whole rows, about FT_SEGMENT elements'
   worth. A unit is computed the same way whichever thread runs it, so results do not depend
   on the number of threads. */
static void *run_job(void *arg) {
    const ft_job *j = (const ft_job *)arg;
    int64_t offset = 0;
    for (int64_t k = 0; k < j->n; k++) {
        const ft_tensor *t = &j->ts[k];
        int64_t unit = FT_CHUNK;
        if (t->row > 0) unit = t->row * (t->row < FT_SEGMENT ? FT_SEGMENT / t->row : 1);
        const int64_t units = (t->numel + unit - 1) / unit;
        int64_t lo = j->begin - offset, hi = j->end - offset;
        offset += t->numel;
        if (hi <= 0 || lo >= t->numel) continue;
        const int64_t first = lo <= 0 ? 0 : (lo + unit - 1) / unit;
        const int64_t last = hi >= t->numel ? units : (hi + unit - 1) / unit;
        for (int64_t u = first; u < last; u++) {
            const int64_t start = u * unit;
            const int64_t len = start + unit <= t->numel ? unit : t->numel - start;
            if (j->dtype == 64) span_f64(t, start, len, j->h, j->adabelief, j->maximize, j->sync);
            else span_f32(t, start, len, j->h, j->adabelief, j->maximize, j->sync);
        }
    }
    return 0;
}

/* one step over n tensors of one dtype (32 or 64), shared out between nthreads threads;
   returns 0, or -1 when a thread could not be started (the rest then runs in this thread) */
int ft_ranger_step(const ft_tensor *ts, int64_t n, const ft_hyper *h, int adabelief,
                   int maximize, int sync, int dtype, int nthreads) {
    enum { MAX_THREADS = 256 };
    int64_t total = 0;
    for (int64_t k = 0; k < n; k++) total += ts[k].numel;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    ft_job jobs[MAX_THREADS];
    pthread_t threads[MAX_THREADS];
    int started[MAX_THREADS];
    for (int i = 0; i < nthreads; i++) {
        ft_job j = {ts, n, h, adabelief, maximize, sync, dtype,
                    total * i / nthreads, total * (i + 1) / nthreads};
        jobs[i] = j;
        started[i] = 0;
    }
    int status = 0;
    for (int i = 1; i < nthreads; i++) {
        started[i] = pthread_create(&threads[i], 0, run_job, &jobs[i]) == 0;
        if (!started[i]) status = -1;
    }
    run_job(&jobs[0]);
    for (int i = 1; i < nthreads; i++) {
        if (started[i]) pthread_join(threads[i], 0);
        else run_job(&jobs[i]);
    }
    return status;
}
"""


def _source() -> str:
    f32 = _BODY.replace("real_t", "float").replace("_SFX", "_f32").replace("SQRT", "sqrtf")
    f64 = _BODY.replace("real_t", "double").replace("_SFX", "_f64").replace("SQRT", "sqrt")
    return _HEADER + f32 + f64 + _TAIL


_FLAGS = ["-O3", "-fno-math-errno", "-fopenmp-simd", "-fPIC", "-shared", "-pthread", "-std=c11"]
_ARCH_FLAGS = ["-march=native"]
_DTYPES = {torch.float32: 32, torch.float64: 64}
#: elements per thread below which the step stays in one thread (thread start-up would cost
#: more than it saves)
MIN_NUMEL_PER_THREAD = 2**17


class _Hyper(ctypes.Structure):
    _fields_ = [(name, ctypes.c_double) for name in
                ("decay", "wd", "beta1", "beta2", "a", "b", "eps", "eps_add", "alpha")]


_lock = threading.Lock()
_state: dict[str, Any] = {"lib": None, "reason": None, "tried": False, "path": None}


def _compiler() -> str | None:
    if os.environ.get("CC"):
        return shutil.which(os.environ["CC"]) or os.environ["CC"]
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _cpu_signature() -> str:
    """The CPU's identity for the cache key: ``-march=native`` code only runs on its own kind."""
    text = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    text += line
                if line.strip() == "":
                    break  # the first processor describes them all
    except OSError:
        pass
    return text


def _build(compiler: str) -> Path:
    """The compiled library (built into the cache folder unless already there)."""
    source = _source()
    key = hashlib.sha256("\0".join([source, " ".join(_FLAGS + _ARCH_FLAGS), compiler,
                                    _cpu_signature()]).encode()).hexdigest()[:16]
    folders = [cache_dir(), Path(tempfile.gettempdir()) / f"fasttricks-{os.getuid()}"]
    errors = []
    for folder in folders:
        target = folder / "kernels" / f"ranger_step-{key}.so"
        if target.exists():
            return target
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
                src = Path(tmp) / "ranger_step.c"
                src.write_text(source, encoding="utf-8")
                out = Path(tmp) / target.name
                _compile(compiler, src, out)
                os.replace(out, target)  # atomic: other processes see all of it or nothing
            return target
        except OSError as err:  # folder not writable: try the next one
            errors.append(f"{folder}: {err}")
    raise RuntimeError("no writable cache folder (" + "; ".join(errors) + ")")


def _compile(compiler: str, src: Path, out: Path) -> None:
    """Compile ``src`` into the shared library ``out``; RuntimeError with the compiler's last
    line when it fails."""
    for arch in (_ARCH_FLAGS, []):  # -march=native is not known to every compiler
        try:
            done = subprocess.run([compiler, *_FLAGS, *arch, str(src), "-o", str(out), "-lm"],
                                  capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as err:
            raise RuntimeError(f"cannot run the C compiler {compiler!r}: {err}") from None
        if done.returncode == 0:
            return
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"{compiler} failed: {last[:300]}")


def _load() -> Any:
    """The loaded library, or None (the reason is kept for :func:`native_status`)."""
    if _state["tried"]:
        return _state["lib"]
    with _lock:
        if _state["tried"]:
            return _state["lib"]
        try:
            if os.environ.get("FASTTRICKS_NATIVE", "1").strip().lower() in ("0", "false", "no"):
                raise RuntimeError("disabled by FASTTRICKS_NATIVE=0")
            compiler = _compiler()
            if compiler is None:
                raise RuntimeError("no C compiler found ($CC, cc, gcc, clang)")
            path = _build(compiler)
            try:
                lib = ctypes.CDLL(str(path))
            except OSError:  # a damaged file in the cache: build it again, once
                path.unlink(missing_ok=True)
                path = _build(compiler)
                lib = ctypes.CDLL(str(path))
            fn = lib.ft_ranger_step
            fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.POINTER(_Hyper),
                           ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
            fn.restype = ctypes.c_int
            _state.update(lib=fn, path=str(path))
        except Exception as err:  # noqa: BLE001  (any failure means: use torch's kernels)
            _state["reason"] = f"{type(err).__name__}: {err}"
            _log.info("fasttricks native optimizer kernel unavailable: %s", _state["reason"])
        _state["tried"] = True
    return _state["lib"]


def native_status() -> dict[str, Any]:
    """Whether the C kernel is in use: ``{"available", "path", "reason"}`` (builds it if needed)."""
    available = _load() is not None
    return {"available": available, "path": _state["path"], "reason": _state["reason"]}


def native_applies(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the kernel can take tensors of this device and dtype at all (checked before
    anything is gathered for it, so GPU and half-precision steps pay nothing for it)."""
    return device.type == "cpu" and dtype in _DTYPES


def _dense(t: Tensor) -> bool:
    """Rows (dim 0) are contiguous blocks: a contiguous or a channels-last tensor."""
    return t.is_contiguous() or (t.ndim == 4 and t.is_contiguous(
        memory_format=torch.channels_last))


def _fits(tensors: tuple[Tensor, ...], dtype: torch.dtype) -> bool:
    """The five tensors of one parameter share dtype, shape and memory layout on CPU."""
    first = tensors[0]
    return all(t.device.type == "cpu" and t.dtype == dtype and t.shape == first.shape
               and t.stride() == first.stride() for t in tensors) and _dense(first)


def native_update(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
    slows: list[Tensor], values: list[float], centralize: tuple[bool, ...],
    decoupled: tuple[bool, ...], l2: tuple[bool, ...], adabelief: bool, maximize: bool,
    sync: bool,
) -> bool:
    """One Ranger/RangerAdaBelief update in place through the C kernel; False (nothing done)
    when it does not apply: no kernel, or tensors that are not contiguous float32/float64 on
    CPU. Arguments as in :func:`fasttricks.optim._compiled.compiled_update`."""
    if not params:
        return True
    dtype = params[0].dtype
    if not native_applies(params[0].device, dtype):
        return False
    tensors = list(zip(params, grads, exp_avgs, exp_avg_sqs, slows))
    if not all(_fits(ts, dtype) for ts in tensors):
        return False
    fn = _load()
    if fn is None:
        return False
    fields: list[int] = []
    total = 0
    for i, p in enumerate(params):
        numel = p.numel()
        row = numel // p.shape[0] if centralize[i] and numel else 0
        fields += [p.data_ptr(), grads[i].data_ptr(), exp_avgs[i].data_ptr(),
                   exp_avg_sqs[i].data_ptr(), slows[i].data_ptr(), numel, row,
                   int(decoupled[i]), int(l2[i])]
        total += numel
    table = (ctypes.c_int64 * len(fields))(*fields)
    threads = max(1, min(torch.get_num_threads(), total // MIN_NUMEL_PER_THREAD))
    fn(table, len(params), ctypes.byref(_Hyper(*values)), int(adabelief), int(maximize),
       int(sync), _DTYPES[dtype], threads)
    return True
