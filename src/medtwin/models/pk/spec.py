"""Population PK model specifications: a YAML file a user writes, checked and made computable.

A spec names the structure (1-3 compartments, first-order absorption or IV), the typical value
of each structural parameter with its covariate relations (power, exponential, linear,
categorical), the random effects (etas, with a full Omega), the residual error and the lower
limit of quantification. Structural parameter names are NONMEM's: ``CL, V`` (central),
``Q, V2`` (first peripheral), ``Q3, V3`` (second peripheral), ``KA``, ``F`` (bioavailability of
depot doses) and ``ALAG`` (lag of depot doses). Compartments are numbered as NONMEM's ADVANs
number them: with absorption 1 = depot, 2 = central; without, 1 = central.

Individual parameter: ``P_i = TV * prod(covariate effects) * exp(eta)`` (``eta`` may be shared
by several parameters, as nlme's ``V = CL / Ke`` shares the eta of CL).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from medtwin.core.errors import NotFoundError, ValidationError
from medtwin.core.estimate.map import check_omega
from medtwin.core.estimate.residual import ResidualError
from medtwin.core.filecontext import Where, check_schema, mapping
from medtwin.core.yamlio import load_yaml
from medtwin.models.pk.closed_form import CENTRAL, DEPOT, DoseArrays, disposition, superpose
from medtwin.models.pk.language.model import LanguageModel, is_language_file, parse_language_model
from medtwin.models.pk.spec_schema import ClosedFormFile

STRUCTURAL = ("CL", "V", "Q", "V2", "Q3", "V3", "KA", "F", "ALAG")
_NEEDED = {1: ("CL", "V"), 2: ("CL", "V", "Q", "V2"), 3: ("CL", "V", "Q", "V2", "Q3", "V3")}
_DEFAULTS = {"F": 1.0, "ALAG": 0.0}
_EFFECTS = ("power", "exponential", "linear", "categorical")


@dataclass(frozen=True)
class CovariateEffect:
    """One covariate relation: ``power`` (cov/ref)^exponent, ``exponential``
    exp(exponent (cov - ref)), ``linear`` 1 + exponent (cov - ref), ``categorical`` a factor
    per level."""

    covariate: str
    type: str
    reference: float = 1.0
    exponent: float = 1.0
    levels: Mapping[float, float] = field(default_factory=dict)

    def factor(self, value: np.ndarray, where: str) -> np.ndarray:
        """The multiplicative factor for covariate values ``value``."""
        if self.type == "power":
            return (value / self.reference) ** self.exponent
        if self.type == "exponential":
            return np.exp(self.exponent * (value - self.reference))
        if self.type == "linear":
            return 1.0 + self.exponent * (value - self.reference)
        out = np.full(value.shape, np.nan)
        for level, f in self.levels.items():
            out[value == level] = f
        if np.isnan(out).any():
            bad = value[np.isnan(out)].ravel()[0]
            raise ValidationError(f"covariate {self.covariate} = {bad} is not one of the levels "
                                  f"{sorted(self.levels)}", where=where)
        return out


@dataclass(frozen=True)
class ParameterSpec:
    """A structural parameter: typical value, unit, eta name (or None), covariate effects."""

    name: str
    typical: float
    unit: str
    eta: str | None = None
    effects: tuple[CovariateEffect, ...] = ()


@dataclass(frozen=True)
class CovariateSpec:
    """A covariate the model needs, with its unit and optional caps (e.g. CrCL <= 150)."""

    name: str
    unit: str
    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True)
class PopulationModel:
    """A checked population PK model: structure, parameters, Omega, residual error, LLOQ."""

    name: str
    title: str
    source: str
    compartments: int
    absorption: bool
    parameters: Mapping[str, ParameterSpec]
    covariates: Mapping[str, CovariateSpec]
    etas: tuple[str, ...]
    omega: np.ndarray
    error: ResidualError
    lloq: float | None = None
    units: Mapping[str, str] = field(default_factory=dict)
    observation_loinc: str | None = None
    covariate_interpolation: str = "nocb"

    # --- structure ------------------------------------------------------------------------
    @property
    def central(self) -> int:
        """NONMEM number of the central compartment (observations)."""
        return 2 if self.absorption else 1

    @property
    def compartment_names(self) -> dict[int, str]:
        """Compartment number -> name."""
        names = ["depot"] if self.absorption else []
        names += ["central", "peripheral", "peripheral2"][: self.compartments]
        return {i + 1: n for i, n in enumerate(names)}

    def route_of(self, cmt: int) -> int:
        """Closed-form route of a dose into NONMEM compartment ``cmt`` (KeyError otherwise)."""
        if self.absorption and cmt == 1:
            return DEPOT
        if cmt == self.central:
            return CENTRAL
        raise KeyError(cmt)

    @property
    def n_eta(self) -> int:
        """Number of random effects."""
        return len(self.etas)

    # --- parameters -----------------------------------------------------------------------
    def typical_values(self, covariates: Mapping[str, np.ndarray], n: int,
                       log_typical: Mapping[str, float] | None = None) -> dict[str, np.ndarray]:
        """Typical values ``(n,)`` of each structural parameter given per-subject covariates."""
        out: dict[str, np.ndarray] = {}
        for name, ps in self.parameters.items():
            tv = math.exp(log_typical[name]) if log_typical and name in log_typical else ps.typical
            v = np.full(n, tv, float)
            for eff in ps.effects:
                c = self.covariate_values(covariates, eff.covariate, n)
                v = v * eff.factor(c, where=f"parameter {name}")
            out[name] = v
        return out

    def covariate_values(self, covariates: Mapping[str, np.ndarray], name: str, n: int
                         ) -> np.ndarray:
        """Covariate ``name`` for ``n`` subjects, capped as the spec says; a typed error when
        it is missing or not finite."""
        if name not in covariates:
            raise ValidationError(f"model {self.name!r} needs covariate {name!r} "
                                  f"({self.covariates[name].unit})", where=f"column {name}")
        c = np.broadcast_to(np.asarray(covariates[name], float), (n,)).copy()
        if not np.all(np.isfinite(c)):
            i = int(np.flatnonzero(~np.isfinite(c))[0])
            raise ValidationError(f"covariate {name!r} is missing or not a number",
                                  where=f"subject #{i + 1}, column {name}")
        spec = self.covariates[name]
        if spec.maximum is not None:
            c = np.minimum(c, spec.maximum)
        if spec.minimum is not None:
            c = np.maximum(c, spec.minimum)
        return c

    def individual(self, typical: Mapping[str, np.ndarray], eta: np.ndarray
                   ) -> dict[str, np.ndarray]:
        """Individual parameters ``(S, k)`` from typical values ``(S,)`` and etas ``(S, k, q)``."""
        out = {}
        for name, ps in self.parameters.items():
            tv = np.asarray(typical[name], float)[:, None]
            if ps.eta is None:
                out[name] = np.broadcast_to(tv, eta.shape[:2])
            else:
                out[name] = tv * np.exp(eta[..., self.etas.index(ps.eta)])
        return out

    # --- predictions ----------------------------------------------------------------------
    def disposition(self, params: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues and coefficients ``(R, 3)`` of flattened individual parameters."""
        g = {k: np.asarray(v, float).ravel() for k, v in params.items()}
        if self.compartments == 1:
            return disposition(g["CL"], g["V"])
        if self.compartments == 2:
            return disposition(g["CL"], g["V"], g["Q"], g["V2"])
        return disposition(g["CL"], g["V"], g["Q"], g["V2"], g["Q3"], g["V3"])

    def predict(self, params: Mapping[str, np.ndarray], doses: DoseArrays, times: np.ndarray,
                *, integral: bool = False) -> np.ndarray:
        """Central concentrations ``(S, k, T)`` for individual parameters ``(S, k)``."""
        shape = np.shape(params["CL"])
        S, k = shape
        lam, coef = self.disposition(params)
        R = S * k

        def row(name: str) -> np.ndarray:
            if name in params:
                return np.broadcast_to(np.asarray(params[name], float), shape).ravel()
            return np.full(R, _DEFAULTS.get(name, 1.0))

        out = superpose(lam, coef, row("KA"), row("F"), row("ALAG"),
                        np.repeat(np.arange(S), k), doses, np.atleast_2d(times),
                        integral=integral)
        return out.reshape(S, k, -1)

    # --- derived models -------------------------------------------------------------------
    def with_estimates(self, typical: Mapping[str, float], omega: np.ndarray,
                       error: ResidualError) -> PopulationModel:
        """A copy with new typical values, Omega and residual error (e.g. from a fit)."""
        params = {n: replace(p, typical=float(typical.get(n, p.typical)))
                  for n, p in self.parameters.items()}
        return replace(self, parameters=params, omega=check_omega(omega, self.etas), error=error)

    def to_language(self) -> LanguageModel:
        """The same model in the model language (linear ODEs, stepped exactly, equal to the
        closed forms): what fits a history whose covariates change between records."""
        def effect(e: CovariateEffect) -> str:
            c = e.covariate
            if e.type == "power":
                return f"({c} / {e.reference!r}) ** {e.exponent!r}"
            if e.type == "exponential":
                return f"exp({e.exponent!r} * ({c} - {e.reference!r}))"
            if e.type == "linear":
                return f"(1.0 + {e.exponent!r} * ({c} - {e.reference!r}))"
            out = "0.0"  # levels are checked before (a typed error names an unknown level)
            for level, f in sorted(e.levels.items(), reverse=True):
                out = f"({f!r} if {c} == {level!r} else {out})"
            return out

        individual = {}
        for n, p in self.parameters.items():
            terms = [f"TV_{n}", *(effect(e) for e in p.effects)]
            if p.eta:
                terms.append(f"exp({p.eta})")
            individual[n] = " * ".join(terms)
        for n, default in _DEFAULTS.items():
            individual.setdefault(n, repr(default))
        comps = (["depot"] if self.absorption else []) + ["central", "peripheral",
                                                          "peripheral2"][: self.compartments]
        central = ["- CL / V * central"]
        odes = {}
        if self.absorption:
            odes["depot"] = "-KA * depot"
            central.insert(0, "KA * depot")
        for q, v, x in (("Q", "V2", "peripheral"), ("Q3", "V3", "peripheral2")):
            if x in comps:
                central.append(f"- {q} / V * central + {q} / {v} * {x}")
                odes[x] = f"{q} / V * central - {q} / {v} * {x}"
        odes["central"] = " ".join(central)
        e = self.error
        error = ({"exponential_sd": e.additive_sd} if e.log_scale else
                 {k: v for k, v in (("additive_sd", e.additive_sd),
                                    ("proportional_sd", e.proportional_sd)) if v})
        tree: dict[str, Any] = {
            "name": self.name, "title": self.title, "source": self.source,
            "thetas": {f"TV_{n}": {"value": float(p.typical), "unit": p.unit or "1"}
                       for n, p in self.parameters.items()},
            "covariates": {c.name: {k: v for k, v in (("unit", c.unit), ("min", c.minimum),
                                                      ("max", c.maximum)) if v is not None}
                           for c in self.covariates.values()},
            "covariate_interpolation": self.covariate_interpolation,
            "individual": individual, "compartments": comps, "odes": odes,
            "observations": {"concentration": {
                "cmt": self.central, "value": "central / V", "error": error,
                **({"lloq": self.lloq} if self.lloq else {}),
                **({"loinc": self.observation_loinc} if self.observation_loinc else {})}},
            "units": {n: p.unit for n, p in self.parameters.items() if p.unit},
        }
        if self.etas:
            tree["omega"] = {"etas": list(self.etas), "matrix": self.omega.tolist()}
        if self.absorption:
            tree["dosing"] = {"depot": {"F": "F", "lag": "ALAG"}}
        return parse_language_model(tree, file=f"<{self.name} as ODEs>")

    def to_dict(self) -> dict[str, Any]:
        """The spec as YAML-ready data (round-trips through :func:`parse_model`)."""
        params = {}
        for n, p in self.parameters.items():
            d: dict[str, Any] = {"value": float(p.typical), "unit": p.unit}
            if p.eta:
                d["eta"] = p.eta
            if p.effects:
                d["covariates"] = [
                    {"covariate": e.covariate, "type": e.type, "reference": e.reference,
                     "exponent": e.exponent} if e.type != "categorical" else
                    {"covariate": e.covariate, "type": e.type,
                     "levels": {float(k): float(v) for k, v in e.levels.items()}}
                    for e in p.effects]
            params[n] = d
        err: dict[str, Any] = {"additive_sd": float(self.error.additive_sd),
                               "proportional_sd": float(self.error.proportional_sd)}
        if self.error.log_scale:
            err = {"log_scale": True, "additive_sd": float(self.error.additive_sd)}
        return {
            "name": self.name, "title": self.title, "source": self.source,
            "structure": {"compartments": self.compartments,
                          "absorption": "first-order" if self.absorption else "none"},
            "units": dict(self.units),
            "parameters": params,
            "covariates": {c.name: {k: v for k, v in (("unit", c.unit), ("min", c.minimum),
                                                      ("max", c.maximum)) if v is not None}
                           for c in self.covariates.values()},
            "omega": {"etas": list(self.etas), "matrix": self.omega.tolist()},
            "error": err,
            "lloq": self.lloq,
            "observation": {"loinc": self.observation_loinc},
            "covariate_interpolation": self.covariate_interpolation,
        }


# --- parsing ----------------------------------------------------------------------------
def _num(value: Any, where: str, *, positive: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValidationError(f"must be a number, got {value!r}", where=where) from None
    if not math.isfinite(v) or (positive and v <= 0):
        raise ValidationError(f"must be a finite number{' > 0' if positive else ''}, got {v}",
                              where=where)
    return v


def _omega(spec: Mapping[str, Any]) -> tuple[tuple[str, ...], np.ndarray]:
    if not isinstance(spec, Mapping) or "etas" not in spec:
        raise ValidationError("needs 'etas' (names) and one of 'matrix', 'variance', "
                              "'cv_percent'", where="omega")
    etas = tuple(str(e) for e in spec["etas"])
    q = len(etas)
    if "matrix" in spec:
        om = np.asarray(spec["matrix"], float)
    else:
        if "variance" in spec:
            var = np.array([_num(v, "omega.variance") for v in spec["variance"]])
        elif "cv_percent" in spec:  # log-normal: omega^2 = log(1 + CV^2)
            cv = np.array([_num(v, "omega.cv_percent") for v in spec["cv_percent"]]) / 100.0
            var = np.log1p(cv**2)
        elif "sd" in spec:
            var = np.array([_num(v, "omega.sd") for v in spec["sd"]]) ** 2
        else:
            raise ValidationError("give 'matrix', 'variance', 'sd' or 'cv_percent'",
                                  where="omega")
        if var.size != q:
            raise ValidationError(f"{var.size} values for {q} etas", where="omega")
        corr = np.eye(q)
        for item in spec.get("correlation", []) or []:
            a, b, r = item
            i, j = etas.index(a), etas.index(b)
            corr[i, j] = corr[j, i] = _num(r, "omega.correlation")
        sd = np.sqrt(var)
        om = corr * np.outer(sd, sd)
    if om.shape != (q, q):
        raise ValidationError(f"matrix shape {om.shape} does not match {q} etas {list(etas)}",
                              where="omega")
    return etas, check_omega(om, etas)


def _error(spec: Mapping[str, Any]) -> ResidualError:
    if not isinstance(spec, Mapping):
        raise ValidationError("needs additive/proportional terms", where="error")
    add = prop = 0.0
    for key, val in spec.items():
        where = f"error.{key}"
        if key == "additive_sd":
            add = _num(val, where)
        elif key == "additive_var":
            add = math.sqrt(_num(val, where))
        elif key == "proportional_sd":
            prop = _num(val, where)
        elif key == "proportional_var":
            prop = math.sqrt(_num(val, where))
        elif key == "proportional_cv_percent":
            prop = _num(val, where) / 100.0
        elif key != "log_scale":
            raise ValidationError(f"unknown key {key!r}; use additive_sd, additive_var, "
                                  "proportional_sd, proportional_var, proportional_cv_percent, "
                                  "log_scale", where="error")
    return ResidualError(add, prop, bool(spec.get("log_scale", False)))


def _effect(item: Mapping[str, Any], where: str, covariates: Mapping[str, CovariateSpec]
            ) -> CovariateEffect:
    cov = str(item.get("covariate", ""))
    if cov not in covariates:
        raise ValidationError(f"covariate {cov!r} is not declared under 'covariates'",
                              where=where)
    kind = str(item.get("type", ""))
    if kind not in _EFFECTS:
        raise ValidationError(f"unknown effect type {kind!r}; use one of {_EFFECTS}", where=where)
    if kind == "categorical":
        levels = item.get("levels") or {}
        if not levels:
            raise ValidationError("a categorical effect needs 'levels' {level: factor}",
                                  where=where)
        return CovariateEffect(cov, kind, levels={float(k): _num(v, where, positive=True)
                                                  for k, v in levels.items()})
    return CovariateEffect(cov, kind, _num(item.get("reference", 1.0), where, positive=True),
                           _num(item.get("exponent", 1.0), where))


def parse_model(spec: Mapping[str, Any], file: str = "<model>") -> PopulationModel:
    """Check a spec (parsed YAML) and build the model; a typed error names the bad key (and
    its file and line, when read by :func:`load_model`)."""
    w = Where(file, "", spec)
    mapping(w, "a model spec")
    check_schema(ClosedFormFile, w)
    name = str(spec.get("name") or "")
    if not name:
        raise ValidationError("needs a 'name'", where="model")
    st = spec.get("structure") or {}
    n_cmt = int(_num(st.get("compartments", 1), "structure.compartments"))
    if n_cmt not in (1, 2, 3):
        raise ValidationError(f"compartments must be 1, 2 or 3, got {n_cmt}",
                              where="structure.compartments")
    absorption = str(st.get("absorption", "none")) == "first-order"
    covs = {}
    for cname, c in (spec.get("covariates") or {}).items():
        c = c or {}
        covs[str(cname)] = CovariateSpec(
            str(cname), str(c.get("unit", "1")),
            None if c.get("min") is None else _num(c["min"], f"covariates.{cname}.min"),
            None if c.get("max") is None else _num(c["max"], f"covariates.{cname}.max"))
    etas, omega = _omega(spec.get("omega") or {})
    params = {}
    for pname, p in (spec.get("parameters") or {}).items():
        where = f"parameters.{pname}"
        if pname not in STRUCTURAL:
            raise ValidationError(f"unknown parameter; use {STRUCTURAL}", where=where)
        p = p if isinstance(p, Mapping) else {"value": p}
        eta = p.get("eta")
        if eta is not None and eta not in etas:
            raise ValidationError(f"eta {eta!r} is not in omega.etas {list(etas)}", where=where)
        effects = tuple(_effect(e, f"{where}.covariates[{i}]", covs)
                        for i, e in enumerate(p.get("covariates") or []))
        params[pname] = ParameterSpec(pname, _num(p.get("value"), f"{where}.value",
                                                  positive=pname != "ALAG"),
                                      str(p.get("unit", "")), eta, effects)
    need = _NEEDED[n_cmt] + (("KA",) if absorption else ())
    missing = [p for p in need if p not in params]
    if missing:
        raise ValidationError(f"a {n_cmt}-compartment model"
                              f"{' with absorption' if absorption else ''} needs {missing}",
                              where="parameters")
    unused = [e for e in etas if all(p.eta != e for p in params.values())]
    if unused:
        raise ValidationError(f"eta(s) {unused} act on no parameter", where="omega")
    lloq = spec.get("lloq")
    return PopulationModel(
        name=name, title=str(spec.get("title", name)), source=str(spec.get("source", "")),
        compartments=n_cmt, absorption=absorption, parameters=params, covariates=covs,
        etas=etas, omega=omega, error=_error(spec.get("error") or {}),
        lloq=None if lloq is None else _num(lloq, "lloq", positive=True),
        units=dict(spec.get("units") or {}),
        observation_loinc=(spec.get("observation") or {}).get("loinc"),
        covariate_interpolation=str(spec.get("covariate_interpolation", "nocb")),
    )


def library() -> dict[str, Path]:
    """Published models shipped with medtwin: name -> YAML file."""
    folder = resources.files("medtwin.models.pk") / "library"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir()
            if str(p).endswith(".yaml")}


def load_model(name_or_path: str | Path) -> PopulationModel | LanguageModel:
    """A library model by name (see :func:`library`) or a YAML file by path: the common
    closed-form spec, or a model-language file (one with ``odes``)."""
    lib = library()
    key = str(name_or_path)
    if key in lib:
        path = lib[key]
    else:
        path = Path(key)
        if not path.is_file():
            raise NotFoundError(f"no model {key!r}: not a library model "
                                f"({', '.join(sorted(lib))}) nor a YAML file")
    data = load_yaml(path.read_text(encoding="utf-8"), file=str(path))
    if is_language_file(data):
        return parse_language_model(data, file=str(path))
    return parse_model(data, str(path))
