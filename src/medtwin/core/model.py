"""The Model contract: a pure, vectorised description of a dynamical system; it never integrates.

A model names its states, parameters (unit in the name, e.g. ``"kabs [1/min]"``), inputs and
outputs (each output with its LOINC code and unit), and gives:

- ``rhs(t, x, u, p, m=None) -> dx`` on arrays shaped ``(n_subjects, n_states)``;
- ``initial_state(p)`` and ``initial_memory(p)``;
- ``observe(x, p) -> y``;
- two numba kernels the solvers call inside their compiled loops, for one subject each:
  ``rhs_kernel(t, x, u, m, p, dx)`` (signature :data:`RHS_SIGNATURE`) and
  ``memory_kernel(t, dt, x, u, m, p)`` (signature :data:`MEMORY_SIGNATURE`).

*Memory* is a model's discrete state, updated only at the start of each input step (inputs
are held constant over a step). It holds what the physiology remembers of past inputs that is
not a differential state, e.g. the size of the last meal that sets gastric emptying.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar

import numpy as np
from numba import njit, types
from numba.core.typing.templates import Signature
from numba.experimental.function_type import _get_wrapper_address
from numba.extending import typeof_impl

#: t, x, u, m, p, dx  (dx is written in place)
RHS_SIGNATURE = types.void(
    types.float64,
    types.float64[::1],
    types.float64[::1],
    types.float64[::1],
    types.float64[::1],
    types.float64[::1],
)
#: t, dt, x, u, m, p  (m is updated in place at the start of an input step of length dt)
MEMORY_SIGNATURE = types.void(
    types.float64,
    types.float64,
    types.float64[::1],
    types.float64[::1],
    types.float64[::1],
    types.float64[::1],
)
#: x, p, y  (the outputs of one subject, written in place into y)
OUTPUT_SIGNATURE = types.void(types.float64[::1], types.float64[::1], types.float64[::1])
RhsKernelType = types.FunctionType(RHS_SIGNATURE)
MemoryKernelType = types.FunctionType(MEMORY_SIGNATURE)
OutputKernelType = types.FunctionType(OUTPUT_SIGNATURE)
_SIGNATURES = {"rhs": RHS_SIGNATURE, "memory": MEMORY_SIGNATURE, "output": OUTPUT_SIGNATURE}


class KernelHandle:
    """A compiled kernel passed to the solvers' loops as a first-class function.

    Numba looks up a dispatcher's address on every call (tens of microseconds); a handle
    looks it up once, which matters when a controller calls the solver every minute.
    """

    def __init__(self, dispatcher: Any, signature: Signature) -> None:
        self.dispatcher = dispatcher
        self.signature = signature
        self._address = _get_wrapper_address(dispatcher, signature)
        self.numba_type = types.FunctionType(signature)

    def __wrapper_address__(self) -> int:
        """Numba's wrapper-address protocol."""
        return self._address


@typeof_impl.register(KernelHandle)
def _typeof_handle(val: KernelHandle, c: object) -> types.FunctionType:
    return val.numba_type


@cache
def kernel_handle(dispatcher: Any, kind: str) -> KernelHandle:
    """The (memoised) handle of a model's ``"rhs"``, ``"memory"`` or ``"output"`` kernel."""
    return KernelHandle(dispatcher, _SIGNATURES[kind])


@dataclass(frozen=True)
class Variable:
    """A named quantity with its unit; ``label`` is ``"name [unit]"``.

    ``role`` ties an input to a kind of scheduled event (``"meal"``, ``"insulin"``);
    ``loinc`` is the LOINC code of an observable output.
    """

    name: str
    unit: str
    description: str = ""
    loinc: str | None = None
    role: str | None = None

    @property
    def label(self) -> str:
        """The name with its unit, as used for table columns: ``"kabs [1/min]"``."""
        return f"{self.name} [{self.unit}]"


@njit(types.void(types.float64, types.float64, types.float64[::1], types.float64[::1],
                 types.float64[::1], types.float64[::1]), cache=True)
def no_memory(t, dt, x, u, m, p) -> None:  # noqa: ANN001
    """Memory kernel of a model without memory: does nothing."""
    return


def _batch_rhs_py(fn, t, X, U, M, P):  # noqa: ANN001, ANN202
    out = np.empty_like(X)
    for i in range(X.shape[0]):
        fn(t, X[i], U[i], M[i], P[i], out[i])
    return out


_batch_rhs = njit(
    types.float64[:, ::1](
        RhsKernelType,
        types.float64,
        types.float64[:, ::1],
        types.float64[:, ::1],
        types.float64[:, ::1],
        types.float64[:, ::1],
    ),
    cache=True,
)(_batch_rhs_py)


class Model(ABC):
    """Base of every model: declarations plus the kernels; subclasses fill the class attributes."""

    name: ClassVar[str]
    version: ClassVar[str]
    states: ClassVar[tuple[Variable, ...]]
    parameters: ClassVar[tuple[Variable, ...]]
    inputs: ClassVar[tuple[Variable, ...]]
    outputs: ClassVar[tuple[Variable, ...]]
    memory: ClassVar[tuple[Variable, ...]] = ()
    #: the output a sensor reads when it names none (name of one of ``outputs``), if any
    sensed_output: ClassVar[str | None] = None
    #: result column of such a sensor's reading (default ``"<output> sensor [<unit>]"``)
    sensor_label: ClassVar[str | None] = None
    #: amounts the schedule announces ahead of their effect, which a controller may read;
    #: ``role`` names the kind of scheduled event (a single rendered announcement stream
    #: belongs to the first of them)
    announcements: ClassVar[tuple[Variable, ...]] = ()

    rhs_kernel: Any
    memory_kernel: Any = staticmethod(no_memory)
    #: optional numba kernel ``(x, p, y)`` (:data:`OUTPUT_SIGNATURE`) computing the outputs of
    #: one subject; with it, shipped sensors and controllers run inside the compiled loop
    output_kernel: Any = None

    # --- labels and lookups -----------------------------------------------------------
    @property
    def parameter_labels(self) -> tuple[str, ...]:
        """Parameter names with units: the columns a cohort table must have."""
        return tuple(v.label for v in self.parameters)

    @property
    def state_labels(self) -> tuple[str, ...]:
        """State names with units."""
        return tuple(v.label for v in self.states)

    def input_index(self, role: str) -> int:
        """Column of the input with this ``role`` (or name); ``KeyError`` if there is none."""
        for i, v in enumerate(self.inputs):
            if v.role == role or v.name == role:
                return i
        raise KeyError(role)

    def output_index(self, name: str) -> int:
        """Column of the output called ``name``."""
        for i, v in enumerate(self.outputs):
            if v.name == name:
                return i
        raise KeyError(name)

    def adapt_controller(self, controller: Any, *, pump: Any = None) -> Any:
        """A controller in the engine's loop contract (:class:`~medtwin.core.controller.
        LoopController`). A model whose domain has its own controller contract (e.g. glucose
        in, basal/bolus out) overrides this to wrap such controllers; the default refuses."""
        from medtwin.core.errors import ValidationError

        raise ValidationError(
            f"{type(controller).__name__} does not declare the commands it writes and model "
            f"{self.name!r} has no adapter for it; give a controller with 'commands'",
            where="controller",
        )

    # --- the mathematics ----------------------------------------------------------------
    @abstractmethod
    def initial_state(self, p: np.ndarray) -> np.ndarray:
        """Initial states ``(n, n_states)`` for parameter rows ``p`` ``(n, n_parameters)``."""

    def initial_memory(self, p: np.ndarray) -> np.ndarray:
        """Initial memory ``(n, n_memory)`` (zeros unless the model says otherwise)."""
        return np.zeros((p.shape[0], len(self.memory)))

    @abstractmethod
    def observe(self, x: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Outputs ``(n, ..., n_outputs)`` from states ``(n, ..., n_states)``."""

    def rhs(
        self,
        t: float,
        x: np.ndarray,
        u: np.ndarray,
        p: np.ndarray,
        m: np.ndarray | None = None,
    ) -> np.ndarray:
        """Time derivative ``dx/dt`` ``(n, n_states)`` of every subject at once."""
        X = np.ascontiguousarray(np.atleast_2d(x), dtype=float)
        P = np.ascontiguousarray(np.atleast_2d(p), dtype=float)
        U = np.ascontiguousarray(np.broadcast_to(np.atleast_2d(u), (X.shape[0], len(self.inputs))),
                                 dtype=float)
        if m is None:
            m = self.initial_memory(P)
        M = np.ascontiguousarray(np.atleast_2d(m), dtype=float)
        if M.shape[1] == 0:
            M = np.zeros((X.shape[0], 1))
        return _batch_rhs(kernel_handle(self.rhs_kernel, "rhs"), float(t), X, U, M, P)
