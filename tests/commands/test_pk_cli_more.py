"""The CLI: medtwin pk fit --method saem / --vpc / --out, pk map with several models (model
averaging), pk schema and pk models; their exit codes (0 ok, 1 finding, 2 usage, 3 runtime)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medtwin.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def theoph(reference, tmp_path_factory):
    """R's Theoph (the reference CSV) written as an event table, as the CLI reads one."""
    from medtwin.twin.pk_population import theoph_events

    table = theoph_events(pd.read_csv(reference / "pk" / "theoph.csv"))
    path = tmp_path_factory.mktemp("theoph") / "theoph_events.csv"
    table.records.drop(columns=["LINE"]).to_csv(path, index=False)
    return path


def _direct(path, **kw):
    from medtwin.interop.nonmem import EventTable
    from medtwin.models.pk.spec import load_model
    from medtwin.twin.pk_population import fit_population

    return fit_population(load_model("theophylline-nlme"), EventTable.read_csv(path), **kw)


# --- pk fit -------------------------------------------------------------------------------
def test_fit_focei_prints_estimates_with_ses_and_writes_a_csv(theoph, tmp_path):
    out = tmp_path / "estimates.csv"
    args = ["pk", "fit", "--model", "theophylline-nlme", "--data", str(theoph), "--json",
            "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    fit = _direct(theoph)
    assert got["method"] == "focei" and got["ofv_method"] == "FOCE-I"
    assert got["converged"] is True and "FOCE-I covariance" in got["se_method"]
    assert got["ofv"] == pytest.approx(fit.estimator.ofv_, rel=1e-9)
    fe = fit.fixed_effects().set_index("parameter")
    table = pd.read_csv(out).set_index("parameter")
    assert list(table.columns) == ["kind", "unit", "estimate", "se", "rse %"]
    for name in ("CL", "V", "KA"):
        assert table.at[name, "estimate"] == pytest.approx(fe.at[name, "estimate"], rel=1e-9)
        assert table.at[name, "se"] == pytest.approx(fe.at[name, "se"], rel=1e-9)
    # nlme's fm3 (the library values): KA 1.593 1/h, CL 0.0397 L/h/kg
    assert table.at["KA", "estimate"] == pytest.approx(1.593, rel=0.05)
    # variances and sds with SEs from FOCE-I's log sds (delta method)
    est = fit.estimator
    names = est.parameter_names_
    var_cl = est.omega_[1, 1]
    se_log = est.se_[names.index("log sd eta[1]")]
    assert table.at["omega eta_CL", "estimate"] == pytest.approx(var_cl, rel=1e-9)
    assert table.at["omega eta_CL", "se"] == pytest.approx(2 * var_cl * se_log, rel=1e-9)
    sd = est.error_.additive_sd
    assert table.at["additive sd", "se"] == pytest.approx(
        sd * est.se_[names.index("log additive sd")], rel=1e-9)
    assert [r["parameter"] for r in got["estimates"]] == table.index.tolist()
    # --out never overwrites without --force
    before = out.read_text()
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "--force" in res.output and out.read_text() == before


def test_fit_saem_equals_fit_population_and_says_how_it_computed(theoph, tmp_path):
    from medtwin.core.estimate.saem import SAEM

    png = tmp_path / "vpc.png"
    res = runner.invoke(app, ["pk", "fit", "--model", "theophylline-nlme", "--data",
                              str(theoph), "--method", "saem", "--iterations", "8,8",
                              "--seed", "3", "--vpc", str(png), "--vpc-replicates", "40",
                              "--pred-corrected", "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    fit = _direct(theoph, method="saem", saem=SAEM(n_burn=8, n_em=8, seed=3))
    est = fit.estimator
    assert got["iterations"] == {"burn": 8, "em": 8} and got["converged"] is None
    assert got["ofv_method"] == "importance sampling"
    assert got["ofv"] == pytest.approx(est.ofv_, rel=1e-9)
    assert got["ofv_mc_se"] == pytest.approx(est.ofv_se_, rel=1e-9)
    assert got["ofv_focei"] == pytest.approx(est.ofv_focei_, rel=1e-9)
    assert "FOCE-I" in got["se_method"] and "SAEM estimates" in got["se_method"]
    fe = fit.fixed_effects().set_index("parameter")
    for r in got["fixed_effects"]:
        assert r["estimate"] == pytest.approx(fe.at[r["parameter"], "estimate"], rel=1e-9)
        assert r["se"] == pytest.approx(fe.at[r["parameter"], "se"], rel=1e-9)
    # a short SAEM still lands near FOCE-I's typical values on Theoph
    focei = _direct(theoph).fixed_effects().set_index("parameter")["estimate"]
    for name in ("CL", "V", "KA"):
        assert fe.at[name, "estimate"] == pytest.approx(focei[name], rel=0.1)
    vpc = got["vpc"]
    assert vpc["pred_corrected"] is True and vpc["replicates"] == 40
    assert sum(row["n"] for row in vpc["table"]) == 132  # Theoph's 12 x 11 samples
    assert png.stat().st_size > 1000


def test_fit_text_output_names_the_methods(theoph, tmp_path):
    res = runner.invoke(app, ["pk", "fit", "--model", "theophylline-nlme", "--data",
                              str(theoph), "--method", "saem", "--iterations", "4,4"])
    assert res.exit_code == 0, res.output
    assert "-2LL" in res.output and "importance sampling" in res.output
    assert "FOCE-I -2LL at the SAEM estimates" in res.output
    assert "standard errors: FOCE-I covariance" in res.output
    assert "omega eta_CL" in res.output and "additive sd" in res.output


@pytest.mark.parametrize("args, where", [
    (["--method", "em"], "--method"),
    (["--iterations", "5,5"], "--iterations"),  # FOCE-I has no SAEM iterations
    (["--method", "saem", "--iterations", "5"], "--iterations"),
    (["--method", "saem", "--iterations", "0,5"], "--iterations"),
    (["--pred-corrected"], "--pred-corrected"),  # without --vpc
    (["--estimate", "CL,XX"], "estimate"),
])
def test_fit_usage_errors_exit_2(theoph, args, where):
    res = runner.invoke(app, ["pk", "fit", "--model", "theophylline-nlme", "--data",
                              str(theoph), *args])
    assert res.exit_code == 2, res.output
    assert f"error: {where}" in res.output and "Traceback" not in res.output


def test_fit_refuses_a_model_language_model_and_an_unknown_model(theoph):
    res = runner.invoke(app, ["pk", "fit", "--model", "warfarin-hamberg2007", "--data",
                              str(theoph)])
    assert res.exit_code == 2 and "closed-form" in res.output
    res = runner.invoke(app, ["pk", "fit", "--model", "nope", "--data", str(theoph)])
    assert res.exit_code == 2 and "no model 'nope'" in res.output


def test_fit_that_crashes_exits_3_and_one_that_did_not_converge_exits_1(theoph, monkeypatch):
    import medtwin.twin.pk_population as pop

    real = pop.fit_population

    def crash(*a, **k):
        raise np.linalg.LinAlgError("Singular matrix")

    monkeypatch.setattr(pop, "fit_population", crash)
    res = runner.invoke(app, ["pk", "fit", "--model", "theophylline-nlme", "--data",
                              str(theoph), "--json"])
    assert res.exit_code == 3
    assert "FOCE-I fit failed" in res.output and "Singular matrix" in res.output

    def not_converged(*a, **k):
        fit = real(*a, **k)
        fit.estimator.converged_ = False
        return fit

    monkeypatch.setattr(pop, "fit_population", not_converged)
    res = runner.invoke(app, ["pk", "fit", "--model", "theophylline-nlme", "--data",
                              str(theoph), "--json"])
    assert res.exit_code == 1
    assert json.loads(res.stdout)["converged"] is False


def test_fit_yaml_out_is_the_fitted_model(theoph, tmp_path):
    out = tmp_path / "fitted.yaml"
    res = runner.invoke(app, ["pk", "fit", "--model", "theophylline-nlme", "--data",
                              str(theoph), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert f"fitted model -> {out}" in res.output
    from medtwin.models.pk.spec import load_model

    assert load_model(str(out)).parameters["KA"].typical == pytest.approx(
        _direct(theoph).model.parameters["KA"].typical, rel=1e-9)


# --- pk map with several models -------------------------------------------------------------
def _variant(src, tmp_path, name, **subs):
    text = src.read_text().replace("name: mapbayr-001", f"name: {name}")
    for a, b in subs.items():
        text = text.replace(a, b)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def variants(tmp_path):
    from medtwin.models.pk.spec import library

    src = library()["mapbayr-001"]
    fast = _variant(src, tmp_path, "fast-cl", **{"CL: {value: 4.0": "CL: {value: 6.0"})
    noka = _variant(src, tmp_path, "no-ka-eta", **{
        "KA: {value: 1.0, unit: 1/h, eta: ETA3}": "KA: {value: 2.0, unit: 1/h}",
        "etas: [ETA1, ETA2, ETA3]": "etas: [ETA1, ETA2]",
        "variance: [0.2, 0.2, 0.2]": "variance: [0.2, 0.2]"})
    return fast, noka


@pytest.mark.parametrize("scheme", ["ll", "aic"])
def test_map_averages_models_with_weights_from_the_ofvs(reference, variants, scheme):
    from medtwin.interop.nonmem import EventTable
    from medtwin.twin.pk import PKTwin
    from medtwin.twin.pk_averaging import average_models

    data = reference / "pk" / "mapbayr_model001_data.csv"
    fast, noka = variants
    res = runner.invoke(app, ["pk", "map", "--model", "mapbayr-001", "--model", str(fast),
                              "--model", str(noka), "--data", str(data), "--average", scheme,
                              "--json", "--npde", "0"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    names = ["mapbayr-001", "fast-cl", "no-ka-eta"]
    assert got["models"] == names and got["average"] == scheme.upper()
    assert got["n_eta"] == {"mapbayr-001": 3, "fast-cl": 3, "no-ka-eta": 2}
    k = np.array([3, 3, 2])
    for row in got["weights"]:
        ofv = np.array([row["ofv"][n] for n in names])
        w = np.array([row["weights"][n] for n in names])
        # mapbayr's compute_weights(), by hand from the printed OFVs
        score = -ofv / 2 - (k if scheme == "aic" else 0)
        want = np.exp(score - score.max())
        want /= want.sum()
        assert w.sum() == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(w, want, rtol=1e-10)
    # model 001's subject 1 as NONMEM gives it (as the single-model test)
    assert got["weights"][0]["ofv"]["mapbayr-001"] == pytest.approx(22.29351, abs=1e-4)
    # the averaged prediction at each subject's observation times, as the Python API gives
    table = EventTable.read_csv(data)
    twins = {n: PKTwin(m).fit(table) for n, m in zip(names, ["mapbayr-001", fast, noka],
                                                       strict=True)}
    pred = pd.DataFrame(got["predictions"])
    sub1 = pred[pred["ID"] == "1"]
    assert sub1["TIME"].tolist() == [1.5, 4.4, 7.1, 24.6]
    api = average_models(twins, sub1["TIME"].to_numpy(), scheme.upper()).predictions
    api = api[api["ID"] == "1"]
    np.testing.assert_allclose(sub1["average"], api["average"], rtol=1e-9)
    w1 = got["weights"][0]["weights"]
    np.testing.assert_allclose(sub1["average"], sum(w1[n] * sub1[n] for n in names),
                               rtol=1e-12)
    assert set(got["fits"]) == set(names)
    assert got["fits"]["fast-cl"]["provenance"]["model"] == "fast-cl"


def test_map_average_text_and_out(reference, variants, tmp_path):
    data = reference / "pk" / "mapbayr_model001_data.csv"
    fast, _ = variants
    out = tmp_path / "avg.csv"
    args = ["pk", "map", "--model", "mapbayr-001", "--model", str(fast), "--data", str(data),
            "--out", str(out), "--npde", "0"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "LL weights" in res.output and "ID 1: OFV mapbayr-001 22.29351" in res.output
    # the weights printed for ID 1 equal exp(-OFV/2) normalised, from the printed OFVs
    line = next(x for x in res.output.splitlines() if x.startswith("ID 1:"))
    o = [float(x) for x in line.split("|")[0].split()[4::2]]
    w = [float(x) for x in line.split("weight")[1].split()[1::2]]
    want = np.exp(-np.array(o) / 2 + min(o) / 2)
    np.testing.assert_allclose(w, want / want.sum(), atol=2e-6)
    table = pd.read_csv(out, dtype={"ID": str})
    assert table.columns[0] == "MODEL" and {"WEIGHT", "IPRED_AVG"} <= set(table.columns)
    a = table[table["MODEL"] == "mapbayr-001"].reset_index(drop=True)
    b = table[table["MODEL"] == "fast-cl"].reset_index(drop=True)
    np.testing.assert_allclose(a["WEIGHT"] + b["WEIGHT"], 1.0, rtol=1e-12)
    np.testing.assert_allclose(a["IPRED_AVG"], a["WEIGHT"] * a["IPRED"]
                               + b["WEIGHT"] * b["IPRED"], rtol=1e-12)
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "--force" in res.output


def test_map_average_usage_errors_and_unconverged_fits(reference, variants, monkeypatch):
    data = str(reference / "pk" / "mapbayr_model001_data.csv")
    fast, _ = variants
    res = runner.invoke(app, ["pk", "map", "--model", "mapbayr-001", "--data", data,
                              "--average", "ll"])
    assert res.exit_code == 2 and "at least two --model" in res.output
    res = runner.invoke(app, ["pk", "map", "--model", "mapbayr-001", "--model", str(fast),
                              "--data", data, "--average", "bic"])
    assert res.exit_code == 2 and "ll or aic" in res.output
    res = runner.invoke(app, ["pk", "map", "--model", "mapbayr-001", "--model", "nope",
                              "--data", data])
    assert res.exit_code == 2 and "no model 'nope'" in res.output
    # a MAP fit that did not converge cannot weight its model: a finding (exit 1)
    from medtwin.twin.pk import PKTwin

    real = PKTwin.fit

    def fit(self, events):
        out = real(self, events)
        out.converged_ = np.array(out.converged_, copy=True)
        out.converged_[1] = False
        return out

    monkeypatch.setattr(PKTwin, "fit", fit)
    res = runner.invoke(app, ["pk", "map", "--model", "mapbayr-001", "--model", str(fast),
                              "--data", data, "--json"])
    assert res.exit_code == 1 and "did not converge" in res.output
    assert "subject(s) 2" in res.output


# --- pk schema and pk models ----------------------------------------------------------------
def _closed(schema):
    """Every object of the schema (top level and $defs) forbids unknown keys."""
    objects = [schema, *schema.get("$defs", {}).values()]
    return all(o.get("additionalProperties") is False for o in objects
               if o.get("type") == "object")


def test_schema_prints_the_language_and_closed_form_schemas(tmp_path):
    from medtwin.models.pk.language.schema import model_json_schema
    from medtwin.models.pk.spec_schema import closed_form_json_schema

    res = runner.invoke(app, ["pk", "schema"])
    assert res.exit_code == 0, res.output
    lang = json.loads(res.stdout)
    assert lang == model_json_schema() and _closed(lang)
    assert lang["additionalProperties"] is False
    assert {"odes", "individual", "observations"} <= set(lang["required"])
    res = runner.invoke(app, ["pk", "schema", "--closed-form"])
    cf = json.loads(res.stdout)
    assert res.exit_code == 0 and cf == closed_form_json_schema() and _closed(cf)
    assert cf["$defs"]["Structure"]["properties"]["absorption"]["enum"] == ["first-order",
                                                                              "none"]
    out = tmp_path / "pk-model.schema.json"
    res = runner.invoke(app, ["pk", "schema", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["out"] == str(out)
    assert json.loads(out.read_text()) == lang
    res = runner.invoke(app, ["pk", "schema", "--closed-form", "--out", str(out)])
    assert res.exit_code == 2 and "--force" in res.output
    assert json.loads(out.read_text()) == lang
    res = runner.invoke(app, ["pk", "schema", "--closed-form", "--out", str(out), "--force"])
    assert res.exit_code == 0 and json.loads(out.read_text()) == cf
    res = runner.invoke(app, ["pk", "schema", "--out", str(tmp_path / "no" / "x.json")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_models_lists_the_library():
    from medtwin.models.pk.spec import library, load_model

    res = runner.invoke(app, ["pk", "models", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [r["name"] for r in rows] == sorted(library())
    by_name = {r["name"]: r for r in rows}
    assert by_name["warfarin-hamberg2007"]["kind"] == "language"
    assert by_name["vancomycin-goti2018"]["kind"] == "closed-form"
    assert "Goti" in by_name["vancomycin-goti2018"]["source"]
    for r in rows:  # each kind is what load_model makes of the file
        m = load_model(r["name"])
        assert (type(m).__name__ == "LanguageModel") == (r["kind"] == "language"), r["name"]
        assert r["title"] and r["source"]
    res = runner.invoke(app, ["pk", "models"])
    assert res.exit_code == 0
    assert "vancomycin-goti2018" in res.output and "closed-form" in res.output
    assert f"{len(rows)} models" in res.output


def test_fit_vpc_without_the_plot_extra_says_what_to_install_before_fitting(theoph, tmp_path,
                                                                           monkeypatch):
    import medtwin.extras as extras
    import medtwin.twin.pk_population as pop

    def missing(module, feature=None):
        raise extras.MissingExtraError(module, "plot", feature)

    def never(*a, **k):
        raise AssertionError("the fit ran although the VPC cannot be drawn")

    monkeypatch.setattr(extras, "require", missing)
    monkeypatch.setattr(pop, "fit_population", never)
    res = runner.invoke(app, ["pk", "fit", "--model", "theophylline-nlme", "--data",
                              str(theoph), "--vpc", str(tmp_path / "v.png")])
    assert res.exit_code == 2
    assert "pip install 'medtwin[plot]'" in res.output and "--vpc" in res.output


def test_simulate_a_model_language_file_gives_each_observed_quantity(tmp_path):
    (tmp_path / "pm.yaml").write_text("""
name: pm
thetas: {CL: 5.0, V: 40.0, FM: 0.6, CLM: 2.0, VM: 20.0}
omega: {etas: [ECL], variance: [0.1]}
individual: {K: CL * exp(ECL) / V, KM: CLM / VM}
compartments: [parent, metabolite]
odes: {parent: -K * parent, metabolite: FM * K * parent - KM * metabolite}
observations:
  parent: {cmt: 1, value: parent / V, error: {proportional_sd: 0.1}}
  metabolite: {cmt: 2, value: metabolite / VM, error: {proportional_sd: 0.1}}
""")
    (tmp_path / "d.csv").write_text("ID,TIME,EVID,AMT,CMT,DV,MDV\nA,0,1,1000,1,.,1\n")
    out = tmp_path / "sim.csv"
    res = runner.invoke(app, ["pk", "simulate", "--model", str(tmp_path / "pm.yaml"),
                              "--data", str(tmp_path / "d.csv"), "--times", "0:12:3",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    sim = pd.read_csv(out)
    t = sim["TIME"].to_numpy()
    k, km = 5 / 40, 0.1
    np.testing.assert_allclose(sim["parent"], 25 * np.exp(-k * t), rtol=1e-10)
    np.testing.assert_allclose(sim["metabolite"], 0.6 * k * 1000 / (km - k)
                               * (np.exp(-k * t) - np.exp(-km * t)) / 20, rtol=1e-10, atol=1e-14)


def test_simulate_json_is_one_document(tmp_path):
    (tmp_path / "d.csv").write_text("ID,TIME,EVID,AMT,CMT,RATE,DV,MDV,WT,CRCL,DIAL\n"
                                    "A,0,1,1000,1,1000,.,1,80,90,0\n")
    res = runner.invoke(app, ["pk", "simulate", "--model", "vancomycin-goti2018", "--data",
                              str(tmp_path / "d.csv"), "--times", "0:12:6", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["rows"] == 3 and [r["TIME"] for r in doc["records"]] == [0.0, 6.0, 12.0]
