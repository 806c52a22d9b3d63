# Run: pip install dp-accounting==0.6.0 scipy && python3 quad_check.py  (prints (epsilon, order))
# Independent check: A_alpha by numerical integration (scipy.integrate.quad), for the case where
# dp-accounting's fractional-order series did not converge.
import math, numpy as np
from scipy import integrate
from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS
def log_a(q, s, a):
    f = lambda z: math.exp(-z*z/(2*s*s) - 0.5*math.log(2*math.pi*s*s) + a*math.log((1-q) + q*math.exp((2*z-1)/(2*s*s))))
    v, err = integrate.quad(f, -60*s, 60*s, limit=500, epsabs=0, epsrel=1e-12)
    return math.log(v)
q, s, T, d = 256/1437, 1.2, 280, 1e-5
best = (math.inf, None)
for a in DEFAULT_RDP_ORDERS:
    try:
        r = T * log_a(q, s, a) / (a - 1)
    except (OverflowError, ValueError):
        continue
    if d*d + math.expm1(-r) > 0: e = 0
    elif a > 1.01: e = r + math.log1p(-1/a) - math.log(d*a)/(a-1)
    else: e = math.inf
    if e < best[0]: best = (e, a)
print(best)
