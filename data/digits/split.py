# Writes the shipped stratified 80/20 train/test split of digits.csv (seed 2026).
# Run from this directory: python3 split.py
import csv, hashlib, random
rows = list(csv.reader(open("digits.csv")))
by_class = {}
for r in rows:
    by_class.setdefault(r[-1], []).append(r)
rng = random.Random(2026)
train, test = [], []
for label in sorted(by_class, key=int):
    rs = by_class[label]
    rng.shuffle(rs)
    n_test = round(len(rs) * 0.2)
    test += rs[:n_test]
    train += rs[n_test:]
header = [f"p{i}" for i in range(64)] + ["label"]
for name, part in (("digits_train.csv", train), ("digits_test.csv", test)):
    rng.shuffle(part)
    with open(name, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(part)
    print(name, len(part), hashlib.sha256(open(name, "rb").read()).hexdigest())
