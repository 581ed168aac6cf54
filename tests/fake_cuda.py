"""A stand-in for a CUDA device on machines without one, so that the code paths a GPU takes run in every test
run and their device mistakes fail here, not on a user's GPU.

Inside `fake_cuda()` tensors "on the device" compute on the CPU but say they are on cuda:0, and the rules
CUDA enforces are enforced: an operation that mixes them with CPU tensors (other than 0-dim ones, which
CUDA takes as scalars) raises, as does `.numpy()` on them; indexing a device tensor with CPU indices is
allowed, as on CUDA. A tensor is on the device when it was created with a cuda device, moved there
(`.to("cuda")`, `.cuda()`, a module's `.to`), or computed from device tensors. `torch.cuda` answers as for
one GPU. Everything is a torch function mode: no tensor subclass, so the code under test sees plain tensors.
"""
from __future__ import annotations

import contextlib
import weakref

import torch
from torch.overrides import TorchFunctionMode

CUDA = torch.device("cuda", 0)
# what may mix device and CPU tensors: indexing a device tensor with CPU indices, cross-device copies
_MIXING_ALLOWED = {"__getitem__", "__setitem__", "copy_", "_has_compatible_shallow_copy_type"}


def _is_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, str) and device.startswith("cuda")


def _is_device(x) -> bool:
    return isinstance(x, (torch.device, str)) and (_is_cuda(x) or x in ("cpu", torch.device("cpu")))


def _tensors(x, out):
    if isinstance(x, torch.Tensor):
        out.append(x)
    elif isinstance(x, (list, tuple)):
        for v in x:
            _tensors(v, out)
    elif isinstance(x, dict):
        for v in x.values():
            _tensors(v, out)
    return out


class FakeCudaMode(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self._ids: dict[int, weakref.ref] = {}

    # ---- which tensors are on the device ------------------------------------------------------------
    def on(self, t) -> bool:
        return isinstance(t, torch.Tensor) and id(t) in self._ids

    def put(self, x):
        for t in _tensors(x, []):
            if id(t) not in self._ids:
                self._ids[id(t)] = weakref.ref(t, lambda _, i=id(t): self._ids.pop(i, None))
        return x

    def _drop(self, t):
        self._ids.pop(id(t), None)

    # ---- the mode ------------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        owner = getattr(func, "__self__", None)
        if name in ("__get__", "__set__") and owner is not None:  # tensor properties
            prop = getattr(owner, "__name__", "")
            if name == "__get__" and prop == "device" and self.on(args[0]):
                return CUDA
            if name == "__get__" and prop == "is_cuda":
                return self.on(args[0])
            out = func(*args, **kwargs)
            if name == "__get__" and prop in ("data", "grad", "T", "mT", "real") and self.on(args[0]):
                self.put(out)
            if name == "__set__" and prop == "data":
                (self.put if self.on(args[1]) else self._drop)(args[0])
            return out
        if name == "numpy" and self.on(args[0]):
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                            "to host memory first.")
        if name in ("to", "cuda", "cpu"):
            return self._move(func, name, args, kwargs)
        created = _is_cuda(kwargs.get("device"))
        if created:  # a factory (or new_*) asked for the device: make it on the CPU, mark it
            kwargs["device"] = "cpu"
        if name == "__deepcopy__":  # only the tensor copied counts, not the memo of earlier copies
            ts = [args[0]]
        else:
            ts = _tensors(args, _tensors(kwargs, []))
        dev = [t for t in ts if self.on(t)]
        host = [t for t in ts if not self.on(t) and t.dim() > 0]
        if dev and host and name not in _MIXING_ALLOWED:
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                               f"cuda:0 and cpu! ({name}: cpu {[tuple(t.shape) for t in host][:4]})")
        if name == "__getitem__" and host and not self.on(args[0]) and dev:
            raise RuntimeError("indices should be either on cpu or on the same device as the indexed tensor (cpu)")
        out = func(*args, **kwargs)
        if created or (dev and name not in ("tolist", "item", "__setitem__")):
            self.put(out)
        return out

    def _move(self, func, name, args, kwargs):
        t = args[0]
        target = None
        if name == "cuda":
            target, func, args, kwargs = CUDA, torch.Tensor.to, (t,), {"device": "cpu"}
        elif name == "cpu":
            target = torch.device("cpu")
        else:
            rest = list(args[1:])
            for i, a in enumerate(rest):
                if _is_device(a):
                    target, rest[i] = a, "cpu"
                elif isinstance(a, torch.Tensor):  # .to(other): its device and dtype
                    target, rest[i] = (CUDA if self.on(a) else torch.device("cpu")), a.dtype
            if "device" in kwargs:
                target, kwargs["device"] = kwargs["device"], "cpu"
            args = (t, *rest)
        out = func(*args, **kwargs)
        if target is None:  # a dtype change only: stays where it was
            if self.on(t):
                self.put(out)
            return out
        if _is_cuda(target):
            if out is t and not self.on(t):
                out = t.clone()
            return self.put(out)
        if out is t and self.on(t):  # to the host: a copy that is not on the device
            out = t.clone()
            self._drop(out)
        return out


@contextlib.contextmanager
def fake_cuda(monkeypatch):
    """Run the body with a fake CUDA device (see the module docstring); yields the mode (mode.on(t) tells)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: 0)
    with FakeCudaMode() as mode, _parameters_follow(mode):
        yield mode


@contextlib.contextmanager
def _parameters_follow(mode: FakeCudaMode):
    """A Parameter made from a device tensor (deepcopy, Module.to) is on the device: Parameter.__new__ wraps
    the data in a new tensor object that the mode never sees being made."""
    saved = torch.nn.Parameter.__dict__["__new__"]
    original = torch.nn.Parameter.__new__

    def new(cls, data=None, requires_grad=True):
        p = original(cls, data, requires_grad)
        if mode.on(data):
            mode.put(p)
        return p
    torch.nn.Parameter.__new__ = staticmethod(new)
    try:
        yield
    finally:
        torch.nn.Parameter.__new__ = saved
