#!/usr/bin/env python3
"""FLamby's Fed-Heart-Disease preprocessing and split, applied to the four UCI files here (see
SOURCE.md), writing one training and one test CSV per hospital, the pooled test set and the
pooled training set (for the central baseline).

FLamby's steps (flamby/datasets/fed_heart_disease/dataset.py, repository owkin/FLamby):
- drop columns 10-12 (slope, ca, thal), then every row that still has a `?`;
- label = num > 0;
- one-hot `cp` (column 2) and `restecg` (column 6) over the pooled values, dropping the first
  category (cp 1, restecg 0): 13 features;
- split each center 66/34 with sklearn's train_test_split(random_state=43, shuffle=True),
  stratified by the label when every class has more than 2 rows.
Then, as SOURCE.md describes, each center is standardised with the mean and standard deviation
(pandas' default, ddof = 1) of its own training part. Each hospital does this on its own data,
before any job: no statistic leaves it.

The split needs scikit-learn (this was run with scikit-learn 1.5.2 and numpy 2.4.6); the CSVs it
wrote are shipped, so nothing here runs in CI.

    python3 data/fed_heart_disease/prepare.py data/fed_heart_disease
"""
import csv
import os
import sys

import numpy as np
from sklearn.model_selection import train_test_split

CENTERS = ["cleveland", "hungarian", "switzerland", "va"]
NAMES = ["age", "sex", "trestbps", "chol", "fbs", "thalach", "exang", "oldpeak",
         "cp_2", "cp_3", "cp_4", "restecg_1", "restecg_2"]


def rows(path):
    out = []
    for r in csv.reader(open(path)):
        r = r[:10] + r[13:]  # drop slope, ca, thal
        if "?" in r:
            continue
        v = [float(x) for x in r]
        cp, restecg = v[2], v[6]
        x = [v[0], v[1], v[3], v[4], v[5], v[7], v[8], v[9],
             float(cp == 2), float(cp == 3), float(cp == 4),
             float(restecg == 1), float(restecg == 2)]
        out.append((x, int(v[10] > 0)))
    return out


def write(path, data):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(NAMES + ["label"])
        for x, y in data:
            w.writerow(["%.9g" % v for v in x] + [y])


def main():
    out = sys.argv[1]
    pooled_train, pooled_test = [], []
    for c in CENTERS:
        data = rows(os.path.join(out, "processed.%s.data" % c))
        labels = np.array([y for _, y in data])
        levels = np.unique(labels)
        stratify = labels if len(levels) > 1 and all((labels == l).sum() > 2 for l in levels) else None
        train_i, test_i = train_test_split(np.arange(len(data)), test_size=1.0 - 0.66, train_size=0.66,
                                           random_state=43, shuffle=True, stratify=stratify)
        train_i, test_i = sorted(train_i), sorted(test_i)
        x = np.array([x for x, _ in data])
        mean = x[train_i].mean(axis=0)
        std = x[train_i].std(axis=0, ddof=1)
        std[std == 0] = 1.0  # a constant feature in a center maps to 0
        norm = [((x[i] - mean) / std, data[i][1]) for i in range(len(data))]
        train = [norm[i] for i in train_i]
        test = [norm[i] for i in test_i]
        write(os.path.join(out, "%s_train.csv" % c), train)
        write(os.path.join(out, "%s_test.csv" % c), test)
        pooled_train += train
        pooled_test += test
        print(c, "rows", len(data), "positive", int(labels.sum()), "train/test", len(train), len(test))
    write(os.path.join(out, "pooled_train.csv"), pooled_train)
    write(os.path.join(out, "pooled_test.csv"), pooled_test)


if __name__ == "__main__":
    main()
