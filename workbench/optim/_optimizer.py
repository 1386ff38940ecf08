"""The base class every workbench optimizer derives from.

It owns what is the same for all of them: choosing the backend, gathering params that have grads,
creating state, viewing complex tensors as real, grouping by (device, dtype), and dispatching to
the optimizer's update functions. An optimizer file only declares its state, its hyperparameters
and its update functions: with an UpdateSpec, all else a class needs follows from it here (see
`__init_subclass__`), but for its constructor's signature and checks.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from . import _backends
from ._backends import BACKENDS, DEVICE_STEP_BACKENDS, fused
from ._spec import UpdateFn, UpdateSpec


def _dtensor_class() -> type | None:
    """DTensor, if anything has imported it: a param cannot be one otherwise. (Importing
    torch.distributed.tensor here would add about a second to every `import workbench.optim`.)"""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


class WorkbenchOptimizer(torch.optim.Optimizer):
    """torch.optim.Optimizer with a `backend` per param group.

    Subclasses set:
      spec:               their UpdateSpec, from which all the attributes below follow, and the
                          docstring's paragraph on the extra keywords (optimizers without a spec
                          set them)
      backends:           the backends they implement (from ``_backends.BACKENDS``)
      state_names:        per-param state tensors shaped like the param, besides ``step``
      update_functions:   {"forloop": fn, "foreach": fn, "fused": fn}; "compiled" compiles forloop
      update_keywords:    the update's keywords ``_hyperparameters(group)`` takes from a group
      tensors_read / tensors_written: param-sized tensors one step must read and write, the
                          floor of its memory traffic (``minimal_bytes``)
    and override ``_hyperparameters``, ``_initial_state`` or ``tensors_moved`` where theirs are
    not the ones that follow from these.
    """

    spec: ClassVar[UpdateSpec | None] = None
    backends: ClassVar[tuple[str, ...]]
    state_names: ClassVar[tuple[str, ...]]
    update_functions: ClassVar[dict[str, UpdateFn]]
    tensors_read: ClassVar[int]
    tensors_written: ClassVar[int]
    # Elementwise updates treat a complex param as its real view (torch.optim does the same).
    elementwise: ClassVar[bool] = True
    # Whether the state has a per-param `step` counter (SGD's does not); its list comes last.
    has_step: ClassVar[bool] = True
    # State the update creates itself at a param's first step, from that step's data (SGD's
    # momentum_buffer, a copy of the first gradient): its list keeps a None for each param without
    # it yet, the update puts the new tensor in that place, and the base class keeps it in state.
    lazy_state: ClassVar[tuple[str, ...]] = ()
    # Whether the fused backend takes torch.amp.GradScaler's grad_scale / found_inf, as torch's
    # fused Adam, AdamW, SGD and Adagrad do: the kernel unscales the grads and skips the step.
    fused_amp_scaling: ClassVar[bool] = False
    # The C kernel (``_kernels/cpu/<name>.c``) its fused backend runs on CPU tensors, if it has one.
    cpu_kernel: ClassVar[str | None] = None
    # Whether torch refuses params that are not 2-D (Muon): tests and suites give it matrices only.
    matrices_only: ClassVar[bool] = False
    # Inductor settings its compiled backend needs, as (name, value) pairs: Muon's bf16 matmul
    # chain matches torch's eager one bit for bit only with emulate_precision_casts.
    inductor_options: ClassVar[tuple[tuple[str, Any], ...]] = ()
    # The step protocol the harness drives it with (torch.optim's and peers' classes of the same
    # name too): a step that takes a closure re-evaluating the loss (LBFGS), or one that needs
    # sparse-layout grads (SparseAdam); neither: fixed dense grads and a bare step().
    needs_closure: ClassVar[bool] = False
    sparse_grads: ClassVar[bool] = False
    update_keywords: ClassVar[tuple[str, ...]] = ()
    # Group entries that hold several of the update's keywords, as torch's constructors take them
    group_tuples: ClassVar[Mapping[str, tuple[str, ...]]] = {"betas": ("beta1", "beta2")}
    # Group keys that state_dicts of older torch versions may lack, and the values they mean
    setstate_defaults: ClassVar[Mapping[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        spec = cls.__dict__.get("spec")
        if spec is None:
            return
        cls.state_names = spec.state_names
        cls.tensors_read, cls.tensors_written = spec.reads, spec.writes
        cls.has_step = spec.has_step
        cls.cpu_kernel = spec.kernel
        cls.fused_amp_scaling = spec.amp
        cls.lazy_state = spec.lazy
        cls.update_keywords = spec.group_keywords
        if None in (spec.kernel, spec.forloop, spec.foreach) or "update_functions" in cls.__dict__:
            return  # the class declares its backends itself
        # A spec that names its updates and a fused kernel: all four backends, the compiled one
        # compiling the forloop update (see _step_group).
        cls.backends = BACKENDS
        cls.update_functions = {
            "forloop": spec.forloop,
            "foreach": spec.foreach,
            "fused": fused.update(spec),
        }
        if cls.__doc__:
            cls.__doc__ = f"{inspect.cleandoc(cls.__doc__)}\n\n{_extra_keywords(spec.amp)}"

    def __init__(
        self,
        params: Iterable[Any],
        defaults: dict[str, Any],
        *,
        backend: str | None,
        fused: bool | None = None,
    ) -> None:
        name = type(self).__name__
        defaults["backend"] = _backends.requested_backend(
            name,
            self.backends,
            backend,
            defaults.get("foreach"),
            fused,
            defaults.get("differentiable", False),
        )
        super().__init__(params, defaults)
        # torch.amp.GradScaler hands grad_scale / found_inf to optimizers that set this
        self._step_supports_amp_scaling = self.fused_amp_scaling and defaults["backend"] == "fused"

    # ---- construction -------------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        backend = group.get("backend")
        if backend is not None and backend not in self.backends:
            raise ValueError(
                f"{type(self).__name__}: param group backend={backend!r} is not implemented; "
                f"it supports {self.backends}"
            )
        if group.get("differentiable") and backend not in (None, "forloop"):
            raise RuntimeError(
                f"{type(self).__name__}: differentiable=True needs the forloop backend, "
                f"got backend={backend!r}"
            )
        if backend == "fused":
            _backends.check_fused_device(type(self).__name__, group["params"], self.cpu_kernel)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # State dicts written by torch.optim carry no `backend`: keep choosing like torch does.
        for group in self.param_groups:
            group.setdefault("backend", None)
            for key, value in (("foreach", None), ("maximize", False), ("differentiable", False)):
                if key in self.defaults:  # Muon has none of these flags, as in torch
                    group.setdefault(key, value)
            if "capturable" in self.defaults:  # SGD and Adagrad have no such flag, as in torch
                group.setdefault("capturable", False)
            for key, value in self.setstate_defaults.items():
                group.setdefault(key, value)
            for p in group["params"]:
                st = self.state.get(p)
                if st and "step" in st and not torch.is_tensor(st["step"]):
                    st["step"] = torch.tensor(float(st["step"]), dtype=_backends.scalar_dtype())

    @classmethod
    def tensors_moved(cls, **flags: Any) -> tuple[int, int]:
        """(param-sized tensors read, written) by one step with these constructor flags: the
        spec's optional state (amsgrad's, momentum's) adds to them."""
        if cls.spec is not None:
            return cls.spec.moved(flags)
        return cls.tensors_read, cls.tensors_written

    @classmethod
    def minimal_bytes(cls, numel: int, dtype: torch.dtype, **flags: Any) -> int:
        """Bytes one step must move at least: each param-sized tensor read once, written once."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        reads, writes = cls.tensors_moved(**flags)
        return (reads + writes) * numel * itemsize

    def _hyperparameters(self, group: dict[str, Any]) -> dict[str, Any]:
        """The update's keywords from this group: `update_keywords`, those in `group_tuples`
        unpacked; a 1-element tensor lr as a 0-dim one."""
        unpacked = {
            name: value
            for key, names in self.group_tuples.items()
            if key in group
            for name, value in zip(names, group[key])
        }
        hyper = {
            name: unpacked[name] if name in unpacked else group[name]
            for name in self.update_keywords
        }
        lr = hyper.get("lr")
        if isinstance(lr, Tensor) and lr.dim() != 0:
            hyper["lr"] = lr.squeeze()
        return hyper

    def _initial_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """Zeros like the param for each state tensor kept under the group's flags (state the
        update creates itself, lazy, is not made here)."""
        spec = self.spec
        if spec is None:
            names = self.state_names
        else:
            names = tuple(name for name in spec.enabled_state(group) if name not in spec.lazy)
        return {name: torch.zeros_like(p, memory_format=torch.preserve_format) for name in names}

    # ---- the step -----------------------------------------------------------------------------

    def resolve_backend(self, group: dict[str, Any], params: list[Tensor]) -> str:
        """The backend this group steps with, given the params that have grads."""
        if group.get("backend") is not None:
            return group["backend"]
        if group.get("fused"):
            return "fused"
        backend = _backends.default_backend(
            params, group.get("differentiable", False), group.get("foreach")
        )
        if backend not in self.backends:  # Muon has no foreach: torch runs it per tensor
            return "forloop"
        return backend

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Perform one optimization step; `closure` re-evaluates the model and returns the loss."""
        loss = closure_loss(closure)
        for group in self.param_groups:
            # Only a differentiable step records autograd history (for hypergradients).
            # (Adafactor, like torch's, has no differentiable flag)
            with torch.set_grad_enabled(bool(group.get("differentiable", False))):
                self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        params, grads = [], []
        for p in group["params"]:
            grad = p.grad
            if grad is not None:
                params.append(p)
                grads.append(grad)
        if not params:
            return
        name = type(self).__name__
        if any(g.is_sparse for g in grads):
            raise RuntimeError(f"{name} does not support sparse gradients")
        # (device, dtype) shared by all params, or None: one check for what follows, not one each
        common = _backends.common_device_and_dtype(params)
        backend = self.resolve_backend(group, params)
        if backend == "fused":
            _backends.check_fused_device(name, params, self.cpu_kernel, common)
        capturable = group.get("capturable", False)
        device_step = capturable or backend in DEVICE_STEP_BACKENDS

        tensor_lists = [params, grads]
        creates_state = False  # whether the update may create lazy state (a None in its list)
        if self._stateless(group):
            states: list[dict[str, Tensor]] = []
            tensor_lists += [[] for _ in self.state_names]
        else:
            states = [self._state_for(p, group, device_step) for p in params]
        for key in self.state_names if states else ():
            values = [st.get(key) for st in states]
            if key in self.lazy_state:
                creates_state = creates_state or any(v is None for v in values)
            elif all(v is None for v in values):
                values = []  # state a flag turns off (amsgrad=False): an empty list, not Nones
            tensor_lists.append(values)
        if self.elementwise:
            # Sharded params (FSDP2's DTensors) keep DTensor state, as torch.optim does, but an
            # elementwise update steps each rank's local shard: the same math on plain tensors,
            # with no sharding propagation per op, and what the Triton launcher needs.
            dtensor = _dtensor_class()
            sharded = dtensor is not None and any(isinstance(p, dtensor) for p in params)
            if common is not None:
                has_complex = common[1].is_complex
            else:
                has_complex = any(p.is_complex() for p in params)
            if sharded or has_complex:
                common = None  # the views' dtypes and devices differ from the params'
                tensor_lists = [
                    [_real_view(_local(t, dtensor)) for t in lst] for lst in tensor_lists
                ]
        if self.has_step:
            tensor_lists.append([st["step"] for st in states])

        hyper = self._hyperparameters(group)
        flags = {
            "maximize": group.get("maximize", False),
            "capturable": capturable,
            "differentiable": group.get("differentiable", False),
        }
        if backend == "forloop":
            self.update_functions["forloop"](*tensor_lists, **hyper, **flags)
            if creates_state:
                self._keep_created_state(tensor_lists, range(len(params)), params, states)
            return
        if backend == "compiled":
            update = _backends.compiled_update(
                self.update_functions["forloop"], self.inductor_options
            )
        else:
            update = self.update_functions[backend]
            if backend == "fused":
                # set by torch.amp.GradScaler around step() when _step_supports_amp_scaling
                for key in ("grad_scale", "found_inf"):
                    if getattr(self, key, None) is not None:
                        hyper[key] = getattr(self, key)
        # the params' positions ride along as a last list, to find each bucket's params again
        positions = list(range(len(params)))
        buckets = _backends.group_by_device_and_dtype([*tensor_lists, positions], common)
        for *bucket, indices in buckets:
            update(*bucket, **hyper, **flags)
            if creates_state:
                self._keep_created_state(bucket, indices, params, states)

    def _keep_created_state(
        self,
        tensor_lists: list[list[Any]],
        indices: Iterable[int],
        params: list[Tensor],
        states: list[dict[str, Tensor]],
    ) -> None:
        """Store in each param's state what the update created in the None places of lazy_state
        lists, shaped like the param again (not the real or 1-element view the update saw)."""
        for k, key in enumerate(self.state_names):
            if key not in self.lazy_state:
                continue
            for i, created in zip(indices, tensor_lists[2 + k]):
                if created is not None and states[i].get(key) is None:
                    states[i][key] = _like_param(created, params[i])

    def _stateless(self, group: dict[str, Any]) -> bool:
        """Whether this group's settings keep no state at all (SGD without momentum): its params
        get no state entry, and every state list reaches the update empty."""
        spec = self.spec
        return spec is not None and not spec.has_step and not spec.enabled_state(group)

    def _state_for(self, p: Tensor, group: dict[str, Any], device_step: bool) -> dict[str, Tensor]:
        state = self.state[p]
        if len(state) == 0:
            if self.has_step:
                state["step"] = torch.zeros(
                    (), dtype=_backends.scalar_dtype(), device=p.device if device_step else "cpu"
                )
            state.update(self._initial_state(p, group))
        elif device_step and "step" in state and state["step"].device != p.device:
            # e.g. a state_dict from a non-capturable torch.optim run, continued on a device backend
            state["step"] = state["step"].to(device=p.device)
        return state


def _local(t: Any, dtensor: type | None) -> Any:
    """A DTensor's local shard (the same storage: in-place updates reach the DTensor)."""
    return t.to_local() if dtensor is not None and isinstance(t, dtensor) else t


def closure_loss(closure: Callable[[], Any] | None) -> Any:
    """The loss a step's closure returns, evaluated with grad enabled (the step may run under
    no_grad); None without a closure."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def group_defaults(arguments: Mapping[str, Any], *, with_fused: bool = False) -> dict[str, Any]:
    """A constructor's arguments, its `locals()` taken before it binds any name of its own, as
    its param groups' defaults, in its signature's order: all but `self`, `params` and the
    workbench's `backend`; `fused` too, but where torch's class keeps that flag in its groups
    (Adam, AdamW, SGD, Adagrad: `with_fused`)."""
    dropped = {"self", "params", "backend", "__class__", *(() if with_fused else ("fused",))}
    return {name: value for name, value in arguments.items() if name not in dropped}


def check_arguments(**values: Any) -> None:
    """torch.optim's checks of these constructor arguments, in the order given, with its messages:
    `lr` a 1-element tensor if a tensor, each of `betas` in [0, 1), every other value >= 0.
    Written `not x >= 0` so that NaN is refused too."""
    for name, value in values.items():
        if name == "lr":
            if isinstance(value, Tensor) and value.numel() != 1:
                raise ValueError("Tensor lr must be 1-element")
            if not value >= 0.0:
                raise ValueError(f"Invalid learning rate: {value}")
        elif name == "betas":
            for i, beta in enumerate(value):
                if not 0.0 <= beta < 1.0:
                    raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
        elif not value >= 0.0:
            label = "epsilon" if name == "eps" else name
            raise ValueError(f"Invalid {label} value: {value}")


def check_fused_flags(fused: bool | None, foreach: bool | None, differentiable: bool) -> None:
    """torch.optim's own refusals for its `fused` flag (Adam, SGD, Adagrad), with its messages."""
    if fused and differentiable:
        raise RuntimeError("`fused` does not support `differentiable`")
    if fused and foreach:
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")


def _extra_keywords(amp: bool) -> str:
    """The docstring paragraph on the keywords that a class with all four backends adds to
    torch's signature."""
    backends = ", ".join(f'"{name}"' for name in BACKENDS) + "; None picks like torch"
    if amp:  # torch's class has `fused` already
        return (
            f'Extra keyword: ``backend`` ({backends}).\n``fused=True`` is ``backend="fused"``; '
            "it takes torch.amp.GradScaler's scale like torch's."
        )
    return (
        f"Extra keywords: ``backend`` ({backends})\n"
        'and ``fused`` (``fused=True`` is ``backend="fused"``).'
    )


def _real_view(t: Tensor | None) -> Tensor | None:
    return torch.view_as_real(t) if t is not None and t.is_complex() else t


def _like_param(t: Tensor, p: Tensor) -> Tensor:
    dtensor = _dtensor_class()
    if dtensor is not None and isinstance(p, dtensor):
        # state an update created from the local shard becomes a DTensor sharded like p
        local = _like_param(t, p.to_local())
        return dtensor.from_local(
            local, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride()
        )
    if p.is_complex() and not t.is_complex():
        t = torch.view_as_complex(t)
    return t if t.shape == p.shape else t.view(p.shape)
