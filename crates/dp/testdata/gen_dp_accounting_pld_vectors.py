# Golden values for Confide's PLD accountant (crates/dp/src/pld.rs), from Google's dp-accounting.
# Run: pip install dp-accounting==0.6.0 && \
#   python3 crates/dp/testdata/gen_dp_accounting_pld_vectors.py > crates/dp/testdata/dp_accounting_pld.json
# Each case composes SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), steps)
# into PLDAccountant() (add/remove neighbours, value_discretization_interval 1e-4) and records
# get_epsilon(delta) and get_delta(eps) at 0.5 and 0.8 times that epsilon.
import datetime, json, platform, importlib.metadata as md
from dp_accounting import pld, dp_event as ev

cases = [
    # The six cases of dp_accounting_rdp.json (their pld_epsilon must agree).
    (256/60000, 1.1, 14062, 1e-5),
    (0.01, 1.0, 1000, 1e-5),
    (0.001, 0.8, 10000, 1e-6),
    (0.1, 2.0, 100, 1e-5),
    (256/1437, 1.2, 280, 1e-5),
    (1.0, 5.0, 10, 1e-5),
    # Further cases: small sigma, large q, many steps, a single unsampled step.
    (0.02, 0.6, 500, 1e-5),
    (0.5, 3.0, 50, 1e-6),
    (0.003, 2.0, 100000, 1e-5),
    (1.0, 1.0, 1, 1e-5),
]
out = {
    "source": "dp-accounting " + md.version("dp-accounting"),
    "command": "pip install dp-accounting==0.6.0 && python3 crates/dp/testdata/"
               "gen_dp_accounting_pld_vectors.py > crates/dp/testdata/dp_accounting_pld.json",
    "generated": f"{datetime.date.today().isoformat()}, Python {platform.python_version()}, "
                 f"scipy {md.version('scipy')}, numpy {md.version('numpy')}",
    "note": "PLDAccountant() defaults: ADD_OR_REMOVE_ONE, value_discretization_interval=1e-4, "
            "connect-the-dots discretisation, max over the add and remove PLDs. "
            "pld_delta_at_epsilon lists [epsilon, get_delta(epsilon)] pairs.",
    "cases": [],
}
for q, s, t, d in cases:
    e = ev.SelfComposedDpEvent(ev.PoissonSampledDpEvent(q, ev.GaussianDpEvent(s)), t)
    pa = pld.PLDAccountant()
    pa.compose(e)
    eps = pa.get_epsilon(d)
    out["cases"].append({
        "q": q, "sigma": s, "steps": t, "delta": d,
        "pld_epsilon": eps,
        "pld_delta_at_epsilon": [[f * eps, pa.get_delta(f * eps)] for f in (0.5, 0.8)],
    })
print(json.dumps(out, indent=1))
