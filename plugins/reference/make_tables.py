#!/usr/bin/env python3
"""Write the reference expert's tables from published Python packages, so
that its facts come from independent, citable sources and not from us:

- data/elements.tsv: number, symbol and name of the 118 elements, from
  `periodictable` (NIST data);
- data/countries.tsv: each country's name, other names, capital, languages
  and currencies, from `countryinfo` (REST Countries data), with the
  language and currency names from `pycountry` (ISO 639 and ISO 4217).

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install \\
        periodictable==2.1.0 countryinfo==1.0.1 pycountry==26.2.16
    /tmp/ref/bin/python plugins/reference/make_tables.py
"""

import os

import countryinfo
import periodictable
import pycountry

HERE = os.path.dirname(os.path.abspath(__file__))

# Other names of countries that are also English words ("Island" is
# Iceland's own name).
WORDS = {"island", "mann", "thai", "alba", "viti"}
ACRONYMS = {"USA", "UAE", "UK", "DRC"}


def clean(s):
    return " ".join(str(s).replace("\t", " ").split())


def elements():
    rows = ["# number\tsymbol\tname (periodictable " + periodictable.__version__ + ")"]
    for e in periodictable.elements:
        if e.number == 0:
            continue  # the package's neutron
        rows.append(f"{e.number}\t{e.symbol}\t{e.name}")
    return rows


def language(code):
    lang = pycountry.languages.get(alpha_2=code) or pycountry.languages.get(alpha_3=code)
    return lang.name.split(" (")[0].split(";")[0] if lang else None


def currency(code):
    cur = pycountry.currencies.get(alpha_3=code)
    # Not the accounting units ISO lists beside a currency ("WIR Euro",
    # "US Dollar (Next day)").
    if not cur or "(" in cur.name or cur.name.startswith("WIR "):
        return None
    return cur.name


def countries():
    rows = ["# name\tother names (;)\tcapital\tlanguages (;)\tcurrencies (;) (countryinfo, pycountry)"]
    seen = set()
    for c in countryinfo.all_countries():
        info = c.info()
        name = clean(info.get("name") or "")
        capital = clean(info.get("capital") or "")
        if not name or not capital or name.lower() in seen:
            continue
        seen.add(name.lower())
        # Other names of four letters or more that are not English words,
        # and the acronyms people write (not ISO codes such as AND or CAN,
        # which are words too).
        other = {
            clean(a)
            for a in info.get("altSpellings") or []
            if (len(clean(a)) >= 4 and clean(a).lower() not in WORDS) or clean(a) in ACRONYMS
        }
        native = clean(info.get("nativeName") or "")
        if len(native) >= 4:
            other.add(native)
        other.discard(name)
        langs = [language(code) for code in info.get("languages") or []]
        curs = [currency(code) for code in info.get("currencies") or []]
        rows.append(
            "\t".join(
                [
                    name,
                    ";".join(sorted(other)),
                    capital,
                    ";".join(l for l in langs if l),
                    ";".join(c for c in curs if c),
                ]
            )
        )
    return rows


def write(name, rows):
    path = os.path.join(HERE, "data", name)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")
    print(f"wrote {len(rows) - 1} rows to {path}")


if __name__ == "__main__":
    write("elements.tsv", elements())
    write("countries.tsv", countries())
