# Golden values for Confide's accountants, from Google's dp-accounting (PyPI).
# Run: pip install dp-accounting==0.6.0 && python3 gen_dp_accounting_vectors.py
import json, importlib.metadata as md
import dp_accounting
from dp_accounting import rdp, pld, dp_event as ev
cases = [
    (256/60000, 1.1, 14062, 1e-5),
    (0.01, 1.0, 1000, 1e-5),
    (0.001, 0.8, 10000, 1e-6),
    (0.1, 2.0, 100, 1e-5),
    (256/1437, 1.2, 280, 1e-5),
    (1.0, 5.0, 10, 1e-5),
]
out = {"source": "dp-accounting " + md.version("dp-accounting"), "cases": []}
for q, s, t, d in cases:
    e = ev.SelfComposedDpEvent(ev.PoissonSampledDpEvent(q, ev.GaussianDpEvent(s)), t)
    ra = rdp.RdpAccountant(); ra.compose(e)
    pa = pld.PLDAccountant(); pa.compose(e)
    out["cases"].append({"q": q, "sigma": s, "steps": t, "delta": d,
        "rdp_epsilon": ra.get_epsilon(d), "pld_epsilon": pa.get_epsilon(d)})
print(json.dumps(out, indent=1))
