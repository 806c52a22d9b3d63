#!/usr/bin/env python3
"""Writes the Shakespeare files shipped here from `shakespeare_lines.tsv` (see SOURCE.md): four
speaking roles from four plays, one data owner each. As LEAF splits its Shakespeare set, the
first 80% of each role's lines are its training text and the last 20% are held out; the held-out
parts of the four roles, in this order, form test.txt.

    python3 data/shakespeare/extract.py ../shared/data/shakespeare/shakespeare_lines.tsv data/shakespeare
"""
import collections
import os
import sys

ROLES = [
    ("AS YOU LIKE IT", "JAQUES", "jaques"),
    ("THE TAMING OF THE SHREW", "KATHERINA", "katherina"),
    ("THE TRAGEDY OF KING LEAR", "FOOL", "fool"),
    ("A MIDSUMMER NIGHT'S DREAM", "OBERON", "oberon"),
]

def main():
    tsv, out = sys.argv[1], sys.argv[2]
    lines = collections.defaultdict(list)
    with open(tsv, encoding="ascii") as f:
        assert next(f).rstrip("\n") == "play\tcharacter\tline"
        for row in f:
            play, character, line = row.rstrip("\n").split("\t")
            lines[(play, character)].append(line)
    test = []
    for play, character, name in ROLES:
        role = lines[(play, character)]
        cut = int(len(role) * 0.8)
        with open(os.path.join(out, name + ".txt"), "w", encoding="ascii") as f:
            f.write("\n".join(role[:cut]) + "\n")
        test.extend(role[cut:])
        print(name, "train lines", cut, "test lines", len(role) - cut)
    with open(os.path.join(out, "test.txt"), "w", encoding="ascii") as f:
        f.write("\n".join(test) + "\n")

if __name__ == "__main__":
    main()
