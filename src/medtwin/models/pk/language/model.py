"""A PK/PD model written in the model language, checked and compiled once.

:func:`parse_language_model` checks a file (strict schema, then every name in every
expression) and generates four small numba kernels from its expressions (individual
parameters, ODE right-hand side, observations, dosing properties) that the compiled event loop
of :mod:`~medtwin.models.pk.language.events` calls. Errors name the file, line and key.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs
from numba import njit

from medtwin.core.errors import ModelFileError, ValidationError
from medtwin.core.estimate.map import check_omega
from medtwin.core.estimate.residual import ResidualError, ResidualErrors
from medtwin.core.filecontext import Where, check_schema, mapping
from medtwin.core.model import OUTPUT_SIGNATURE, RHS_SIGNATURE, KernelHandle
from medtwin.models.pk.language import expressions as ex
from medtwin.models.pk.language.events import DOSING_SIGNATURE, PARAMS_SIGNATURE, run
from medtwin.models.pk.language.schema import Error, ModelFile, Omega

TIME = "TIME"
log = logging.getLogger(__name__)


@njit(cache=True)
def _logit(v: float) -> float:
    return math.log(v / (1.0 - v))


@njit(cache=True)
def _expit(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


@dataclass(frozen=True)
class ObservedQuantity:
    """One observed quantity: name, the CMT of its data records, unit, error, LLOQ, LOINC."""

    name: str
    cmt: int
    unit: str
    error: ResidualError
    lloq: float | None
    loinc: str | None


@dataclass(frozen=True)
class LanguageModel:
    """A compiled model-language model. Etas are ``etas`` then, per occasion, ``kappas``."""

    name: str
    title: str
    source: str
    version: str
    thetas: dict[str, float]
    theta_units: dict[str, str]
    covariates: dict[str, Any]
    interpolation: str
    etas: tuple[str, ...]
    omega: np.ndarray
    kappas: tuple[str, ...]
    omega_iov: np.ndarray
    occasion: str | None
    individual: tuple[str, ...]
    compartments: tuple[str, ...]
    observations: tuple[ObservedQuantity, ...]
    units: dict[str, str]
    solver: dict[str, float]
    source_text: str = field(repr=False)
    kernels: tuple = field(repr=False)
    linear: bool = False
    digest: str = ""

    # --- shapes ---------------------------------------------------------------------------
    @property
    def n_p(self) -> int:
        """Length of the parameter vector the kernels share."""
        return (len(self.individual) + len(self.thetas) + len(self.covariates) + len(self.etas)
                + len(self.kappas) + 1)

    @property
    def error(self) -> ResidualErrors:
        """The residual error of each observed quantity, in order."""
        return ResidualErrors(tuple(o.error for o in self.observations),
                              tuple(o.name for o in self.observations))

    def kind_of_cmt(self, cmt: int) -> int | None:
        """Index of the observed quantity data records with ``cmt`` carry (None: none)."""
        for k, o in enumerate(self.observations):
            if o.cmt == cmt:
                return k
        return None

    def eta_names(self, n_occasions: int) -> list[str]:
        """Names of all random effects with ``n_occasions`` occasions."""
        return [*self.etas, *(f"{k}(OCC{o + 1})" for o in range(n_occasions)
                              for k in self.kappas)]

    def omega_all(self, n_occasions: int) -> np.ndarray:
        """Block-diagonal Omega of the etas and every occasion's kappas."""
        blocks = [self.omega] + [self.omega_iov] * (n_occasions if self.kappas else 0)
        size = sum(b.shape[0] for b in blocks)
        out = np.zeros((size, size))
        i = 0
        for b in blocks:
            n = b.shape[0]
            out[i : i + n, i : i + n] = b
            i += n
        return out

    def theta_vector(self, values: dict[str, float] | None = None) -> np.ndarray:
        """Thetas in order (``values`` overriding some)."""
        v = dict(self.thetas, **(values or {}))
        return np.array([float(v[k]) for k in self.thetas])

    def parameter_index(self, name: str) -> int:
        """Position of an individual parameter in the kernels' parameter vector."""
        return self.individual.index(name)

    # --- computing ------------------------------------------------------------------------
    def solve(self, eta: np.ndarray, row_subject: np.ndarray, events: dict[str, np.ndarray],
              n_out: int, theta: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Predictions ``(R, n_out)`` and statuses ``(R,)`` for eta rows ``(R, q_all)`` of
        subjects ``row_subject`` on the event arrays (see ``twin.pk_language``)."""
        th = self.theta_vector() if theta is None else np.asarray(theta, float)
        n_occ_eta = eta.shape[1] - len(self.etas)
        if len(self.kappas) == 0 and n_occ_eta != 0:
            raise ValidationError(f"{eta.shape[1]} etas given, the model has {len(self.etas)}",
                                  where="eta")
        return run(self.kernels, th, eta, row_subject, len(self.etas), len(self.kappas),
                   events, len(self.compartments), self.n_p, len(self.observations), n_out,
                   rtol=self.solver["rtol"], atol=self.solver["atol"],
                   ss_rtol=self.solver["ss_rtol"], ss_max=int(self.solver["ss_max_doses"]),
                   linear=self.linear)

    def individual_values(self, eta: np.ndarray, covariates: np.ndarray,
                          theta: np.ndarray | None = None) -> np.ndarray:
        """Individual parameters ``(R, n_individual)`` from eta rows (first occasion's kappas)
        and covariate rows ``(R, n_cov)`` (at one time)."""
        th = self.theta_vector() if theta is None else np.asarray(theta, float)
        params = self.kernels[1]
        q = len(self.etas) + len(self.kappas)
        out = np.zeros((eta.shape[0], self.n_p))
        for r in range(eta.shape[0]):
            e = np.zeros(q)
            e[: min(q, eta.shape[1])] = eta[r, :q]
            cov = np.append(np.asarray(covariates[r], float), 0.0)
            params.dispatcher(th, e, np.ascontiguousarray(cov), out[r])
        return out[:, : len(self.individual)]


# --- parsing and compiling ----------------------------------------------------------------
def _variances(om: Omega, where: Where) -> np.ndarray:
    q = len(om.etas)
    given = [k for k in ("matrix", "variance", "sd", "cv_percent") if getattr(om, k) is not None]
    if len(given) != 1:
        where.fail(f"give exactly one of matrix, variance, sd, cv_percent (got {given})",
                   "e.g. 'variance: [0.1, 0.2]'")
    if om.matrix is not None:
        m = np.asarray(om.matrix, float)
        if m.shape != (q, q):
            where.fail(f"matrix shape {m.shape} does not match {q} etas {om.etas}",
                       f"write a {q}x{q} symmetric matrix")
    else:
        raw = np.asarray(getattr(om, given[0]), float)
        if raw.size != q:
            where.fail(f"{raw.size} values for {q} etas", f"give one value per eta {om.etas}")
        var = {"variance": raw, "sd": raw**2,
               "cv_percent": np.log1p((raw / 100.0) ** 2)}[given[0]]
        corr = np.eye(q)
        for a, b, r in om.correlation:
            if a not in om.etas or b not in om.etas:
                where.fail(f"correlation names {a!r}, {b!r}; etas are {om.etas}",
                           "name two of the etas")
            i, j = om.etas.index(a), om.etas.index(b)
            corr[i, j] = corr[j, i] = r
        sd = np.sqrt(var)
        m = corr * np.outer(sd, sd)
    try:
        return check_omega(m, om.etas)
    except ValidationError as exc:
        where.fail(exc.message, "check variances > 0 and |correlations| < 1")


def _residual(e: Error, where: Where) -> ResidualError:
    def sd(a: float | None, v: float | None) -> float:
        return a if a is not None else (math.sqrt(v) if v is not None else 0.0)

    exp_sd = sd(e.exponential_sd, e.exponential_var)
    add = sd(e.additive_sd, e.additive_var)
    prop = sd(e.proportional_sd, e.proportional_var)
    if e.proportional_cv_percent is not None:
        prop = e.proportional_cv_percent / 100.0
    try:
        if exp_sd:
            if add or prop:
                where.fail("an exponential error cannot be combined with additive or "
                           "proportional terms", "give exponential_sd alone")
            return ResidualError(exp_sd, 0.0, True)
        return ResidualError(add, prop)
    except ValidationError as exc:
        where.fail(exc.message, "give additive_sd, proportional_sd (or both), or "
                   "exponential_sd, each > 0")


def _at(w: Where, *path: Any) -> Where:
    for k in path:
        try:
            w = w.child(k)
        except (KeyError, IndexError, TypeError):
            break
    return w


def _expr(w: Where, text: Any, known: set[str], what: str) -> Any:
    try:
        tree = ex.parse(text, where=w.path)
        ex.check_names(tree, known, w.path, what)
    except ValidationError as exc:
        w.fail(exc.message, f"correct the expression at '{w.path}'")
    return tree


_HEADER = """# generated by medtwin from a PK model file: do not edit
import math

from numba import njit

from medtwin.core.model import OUTPUT_SIGNATURE, RHS_SIGNATURE
from medtwin.models.pk.language.events import DOSING_SIGNATURE, PARAMS_SIGNATURE
from medtwin.models.pk.language.model import _expit, _logit

"""
_SIGS = {"params": "PARAMS_SIGNATURE", "rhs": "RHS_SIGNATURE", "output": "OUTPUT_SIGNATURE",
         "dosing": "DOSING_SIGNATURE", "initial": "DOSING_SIGNATURE"}


def _kernels(body: str) -> tuple[KernelHandle, ...]:
    """Compile the generated kernels. They are written once to medtwin's cache folder and
    imported from there, so numba's on-disk cache skips compiling them on the next run (in
    memory when that folder cannot be written)."""
    for name, sig in _SIGS.items():
        body = body.replace(f"def {name}(", f"@njit({sig}, cache=True)\ndef {name}(")
    source = _HEADER + body
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    namespace: dict[str, Any] | None = None
    try:
        folder = Path(platformdirs.user_cache_dir("medtwin")) / "pk-kernels"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"k_{digest}.py"
        if not path.is_file():
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(source, encoding="utf-8")
            os.replace(tmp, path)
        name = f"medtwin_pk_kernels_{digest}"
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            sys.modules[name] = module
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        namespace = vars(module)
    except OSError as exc:
        log.info("PK model kernels compiled in memory (cache folder not writable: %s)", exc)
    if namespace is None:
        namespace = {}
        exec(compile(source.replace(", cache=True", ""), "<medtwin pk model>", "exec"),  # noqa: S102
             namespace)
    return (KernelHandle(namespace["rhs"], RHS_SIGNATURE),
            KernelHandle(namespace["params"], PARAMS_SIGNATURE),
            KernelHandle(namespace["output"], OUTPUT_SIGNATURE),
            KernelHandle(namespace["dosing"], DOSING_SIGNATURE),
            KernelHandle(namespace["initial"], DOSING_SIGNATURE))


def parse_language_model(data: Any, file: str = "<model>") -> LanguageModel:
    """Check a model-language tree (from :func:`medtwin.core.yamlio.load_yaml`) and compile
    it; the first problem is a :class:`ModelFileError` naming the file, line and key."""
    w = Where(file, "", data)
    mapping(w, "a model file")
    spec: ModelFile = check_schema(ModelFile, w)
    thetas = {k: (v.value if not isinstance(v, float | int) else float(v))
              for k, v in spec.thetas.items()}
    theta_units = {k: (v.unit if not isinstance(v, float | int) else "1")
                   for k, v in spec.thetas.items()}
    covs = dict(spec.covariates)
    etas: tuple[str, ...] = tuple(spec.omega.etas) if spec.omega else ()
    omega = (_variances(spec.omega, _at(w, "omega")) if spec.omega else np.zeros((0, 0)))
    kappas: tuple[str, ...] = tuple(spec.iov.etas) if spec.iov else ()
    omega_iov = _variances(spec.iov, _at(w, "iov")) if spec.iov else np.zeros((0, 0))
    comps = tuple(spec.compartments)
    # one namespace of names: every name means one thing
    groups = {"theta": list(thetas), "covariate": list(covs), "eta": [*etas, *kappas],
              "individual parameter": list(spec.individual), "compartment": list(comps),
              "variable": list(spec.variables)}
    seen: dict[str, str] = {}
    for kind, names in groups.items():
        for n in names:
            where = _at(w, {"theta": "thetas", "covariate": "covariates",
                            "individual parameter": "individual", "variable": "variables",
                            "compartment": "compartments"}.get(kind, "omega"))
            if not n.isidentifier() or n in ex.FUNCTIONS or n == TIME:
                where.fail(f"{n!r} cannot be a name (letters, digits and _ only; not a "
                           f"function name or {TIME})", "rename it")
            if n in seen:
                where.fail(f"{n!r} is both a {seen[n]} and a {kind}", "use distinct names")
            seen[n] = kind
    ind = list(spec.individual)
    n_th, n_cov, n_e = len(thetas), len(covs), len(etas) + len(kappas)
    base = len(ind)
    p_sym: dict[str, str] = {n: f"p[{i}]" for i, n in enumerate(ind)}
    p_sym.update({n: f"p[{base + i}]" for i, n in enumerate(thetas)})
    p_sym.update({n: f"p[{base + n_th + i}]" for i, n in enumerate(covs)})
    p_sym.update({n: f"p[{base + n_th + n_cov + i}]" for i, n in enumerate([*etas, *kappas])})
    n_p = base + n_th + n_cov + n_e + 1
    time_p = f"p[{n_p - 1}]"
    # $MAIN: individual parameters in order
    lines = ["def params(theta, eta, cov, p):"]
    sym: dict[str, str] = {n: f"theta[{i}]" for i, n in enumerate(thetas)}
    sym.update({n: f"cov[{i}]" for i, n in enumerate(covs)})
    sym.update({n: f"eta[{i}]" for i, n in enumerate([*etas, *kappas])})
    sym[TIME] = f"cov[{n_cov}]"
    for i, (name, text) in enumerate(spec.individual.items()):
        known = set(sym)
        tree = _expr(_at(w, "individual", name), text, known,
                     "use thetas, covariates, etas, TIME or parameters defined above")
        lines.append(f"    v_{name} = {ex.translate(tree, sym)}")
        lines.append(f"    p[{i}] = v_{name}")
        sym[name] = f"v_{name}"
    for i in range(n_th):
        lines.append(f"    p[{base + i}] = theta[{i}]")
    for i in range(n_cov):
        lines.append(f"    p[{base + n_th + i}] = cov[{i}]")
    for i in range(n_e):
        lines.append(f"    p[{base + n_th + n_cov + i}] = eta[{i}]")
    lines.append(f"    p[{n_p - 1}] = cov[{n_cov}]")
    # $ODE
    missing = [c for c in comps if c not in spec.odes]
    extra = [c for c in spec.odes if c not in comps]
    if missing or extra:
        _at(w, "odes").fail(f"odes must give every compartment once: missing {missing}, "
                            f"not compartments {extra}", f"write one ODE for each of {comps}")
    x_sym = {c: f"x[{i}]" for i, c in enumerate(comps)}
    # local variables of the ODEs and observations, in order (mrgsolve's $ODE locals)
    locals_rhs: list[str] = []
    locals_out: list[str] = []
    rhs_sym = {**p_sym, **x_sym, TIME: "t"}
    obs_sym = {**p_sym, **x_sym, TIME: time_p}
    local_trees = {}
    for name, text in spec.variables.items():
        tree = _expr(_at(w, "variables", name), text, set(rhs_sym),
                     "use compartments, parameters, thetas, covariates, etas, TIME or "
                     "variables defined above")
        local_trees[name] = tree
        locals_rhs.append(f"    w_{name} = {ex.translate(tree, rhs_sym)}")
        locals_out.append(f"    w_{name} = {ex.translate(tree, obs_sym)}")
        rhs_sym[name] = obs_sym[name] = f"w_{name}"
    lines.append("def rhs(t, x, u, m, p, dx):")
    lines.extend(locals_rhs)
    linear = not local_trees  # ODEs with locals are integrated numerically
    for i, c in enumerate(comps):
        tree = _expr(_at(w, "odes", c), spec.odes[c], set(rhs_sym),
                     "use compartments, parameters, thetas, covariates, etas or TIME")
        linear = linear and ex.is_linear(tree, set(comps)) and TIME not in ex.names(tree)
        lines.append(f"    dx[{i}] = {ex.translate(tree, rhs_sym)} + u[{i}]")
    # observations
    lines.append("def output(x, p, y):")
    lines.extend(locals_out)
    observed = []
    for k, (oname, o) in enumerate(spec.observations.items()):
        ow = _at(w, "observations", oname)
        tree = _expr(_at(ow, "value"), o.value, set(obs_sym),
                     "use compartments, parameters, thetas, covariates, etas or TIME")
        lines.append(f"    y[{k}] = {ex.translate(tree, obs_sym)}")
        if any(q.cmt == o.cmt for q in observed):
            _at(ow, "cmt").fail(f"CMT {o.cmt} already names another observation",
                                "give each observed quantity its own CMT")
        observed.append(ObservedQuantity(oname, o.cmt, o.unit, _residual(o.error,
                                                                         _at(ow, "error")),
                                         o.lloq, o.loinc))
    # dosing properties
    lines.append("def dosing(p, d):")
    n_c = len(comps)
    for c in spec.dosing:
        if c not in comps:
            _at(w, "dosing", c).fail(f"{c!r} is not a compartment", f"use one of {comps}")
    for i, c in enumerate(comps):
        dspec = spec.dosing.get(c)
        for slot, key, default in ((0, "F", 1.0), (1, "lag", 0.0), (2, "rate", math.nan),
                                   (3, "duration", math.nan)):
            text = getattr(dspec, key) if dspec is not None else None
            if text is None:
                code = repr(default) if not math.isnan(default) else "math.nan"
            else:
                tree = _expr(_at(w, "dosing", c, key), text, set(p_sym) | {TIME},
                             "use parameters, thetas, covariates or etas")
                code = ex.translate(tree, {**p_sym, TIME: time_p})
            lines.append(f"    d[{slot * n_c + i}] = {code}")
    # initial state (zero unless given)
    lines.append("def initial(p, x):")
    for c in spec.initial:
        if c not in comps:
            _at(w, "initial", c).fail(f"{c!r} is not a compartment", f"use one of {comps}")
    for i, c in enumerate(comps):
        if c in spec.initial:
            tree = _expr(_at(w, "initial", c), spec.initial[c], set(p_sym),
                         "use parameters, thetas, covariates or etas")
            lines.append(f"    x[{i}] = {ex.translate(tree, p_sym)}")
        else:
            lines.append(f"    x[{i}] = 0.0")
    source = "\n".join(lines) + "\n"
    kernels = _kernels(source)
    if spec.iov and not spec.iov.occasion:
        _at(w, "iov", "occasion").fail("needs a column name", "e.g. occasion: OCC")
    return LanguageModel(
        name=spec.name, title=spec.title or spec.name, source=spec.source,
        version=spec.version, thetas=thetas, theta_units=theta_units, covariates=covs,
        interpolation=spec.covariate_interpolation, etas=etas, omega=omega, kappas=kappas,
        omega_iov=omega_iov, occasion=spec.iov.occasion if spec.iov else None,
        individual=tuple(ind), compartments=comps, observations=tuple(observed),
        units=dict(spec.units), solver=spec.solver.model_dump(), source_text=source,
        kernels=kernels, linear=linear and not spec.solver.force_ode,
        digest=hashlib.sha256(source.encode()).hexdigest()[:12])


def is_language_file(data: Any) -> bool:
    """Whether a parsed YAML tree is written in the model language (it has ``odes``)."""
    return isinstance(data, dict) and "odes" in data


__all__ = ["LanguageModel", "ModelFileError", "ObservedQuantity", "is_language_file",
           "parse_language_model"]
