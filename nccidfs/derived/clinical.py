"""The clinical fields cleaned by the rules of NHSX's ``nccid-cleaning`` (its ``patient_df_pipeline``), one
patient at a time: the cleaned values go in new columns, named as NHSX names them (``sex``, ``age``,
``date_of_death``, ``pmh_hypertension``, ...), beside the raw fields, which stay as submitted.

The rules, as NHSX states them for the NCCID submission template:

- ``ethnicity``: NHS ethnic category codes (A-C White, D-G Multiple, H-L and R Asian, M-P Black, S Other,
  each letter alone or with one more letter or digit) and group names to White, Multiple, Asian, Black
  or Other; anything naming "mixed" or "multiple" is Multiple, "white" White; the rest Unknown.
- ``sex``: 1 or M is M, 0 or F is F, anything else Unknown.
- numbers (admission observations and blood results, ``age``): a plain decimal number, or the number in
  the known error form ``[37.2] - 2020-03-04``; blood pressure also from ``[170/70]``; ``age`` as a whole
  number of years (rounded down, negative numbers kept as NHSX keeps them). Temperature outside 25-45 and
  fibrinogen, urea and O2 saturation outside 0-100 are dropped.
- dates submitted US style (``MM/DD/YY``), or failing that the ``YYYY-MM-DD`` inside an error form;
  ``SwabDate`` day first; ``latest_swab_date`` the later of the positive swab and ``SwabDate``. Dates
  are written ``YYYY-MM-DD``.
- yes/no fields: 1 is True, 0 is False, anything else empty; the misspelt ``PMH h1pertension`` and
  ``PMH diabetes mellitus TYPE II`` fill their fields' gaps.
- coded fields (smoking, CKD stage, CXR severity, COVID CODE, ...): the first run of digits, kept only
  when the template allows it; ``pack_year_history`` the first run of digits.
- test results: 1 or ``RNA DETECTED (SARS-CoV-2)`` Positive, 0 Negative.
- ``fio2``: a fraction (``0.4``) as a percentage, litres of oxygen and Venturi colours by NHSX's table,
  kept only within 0-100.

An empty cell means the raw value did not fit the rule (NHSX's NaN).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Mapping

Cleaned = dict[str, str]

_ETHNIC_LETTERS = {**dict.fromkeys("ABC", "White"), **dict.fromkeys("DEFG", "Multiple"),
                   **dict.fromkeys("HJKLR", "Asian"), **dict.fromkeys("MNP", "Black"), "S": "Other"}
_ETHNIC_CODE = re.compile(r"[A-HJ-NPRS][A-Z0-9]?")
_ETHNIC_NAMES = {"indian": "Asian", "pakistani": "Asian", "chinese": "Asian", "caribbean": "Black",
                 "african": "Black", "any other ethnic group": "Other", "any other black background": "Black",
                 "any other asian background": "Asian", "white": "White", "multiple": "Multiple",
                 "asian": "Asian", "black": "Black", "other": "Other", "unknown": "Unknown"}
_SEX = {"1": "M", "m": "M", "0": "F", "f": "F"}
_NUMERIC = ("Duration of symptoms", "Respiratory rate on admission", "Heart rate on admission",
            "NEWS2 score on arrival", "APACHE score on ITU arrival", "PaO2", "Creatinine on admission",
            "D-dimer on admission", "Fibrinogen  if d-dimer not performed", "WCC on admission",
            "Lymphocyte count on admission", "Platelet count on admission", "CRP on admission",
            "Urea on admission", "O2 saturation", "Temperature on admission", "Ferritin", "Troponin I",
            "Troponin T")
# Cleaned numbers kept only within these bounds (NHSX's clipping).
_BOUNDS = {"temperature_on_admission": (25.0, 45.0), "fibrinogen__if_d-dimer_not_performed": (0.0, 100.0),
           "urea_on_admission": (0.0, 100.0), "o2_saturation": (0.0, 100.0)}
_BRACKETED = re.compile(r"\[(\d+\.?\d+)\]")
_PRESSURE = re.compile(r"\[(?P<systolic>\d{2,3})/(?P<diastolic>\d{2,3})\]")
_US_DATES = ("Date of Positive Covid Swab", "Date of acquisition of 1st RT-PCR",
             "Date of acquisition of 2nd RT-PCR", "Date of result of 1st RT-PCR", "Date of result of 2nd RT-PCR",
             "Date of admission", "Date of ITU admission", "Date of intubation", "Date of 1st CXR",
             "Date of 2nd CXR", "Date last known alive", "Date of death")
_US_DATE = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{2,4})")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_BINARY = ("PMH hypertension", "PMH CKD", "Current ACEi use", "Current Angiotension receptor blocker use",
           "Current NSAID used", "ITU admission", "Intubation", "Death")
# JSON's true and false too: NHSX's pandas took them for 1 and 0.
_BINARY_VALUES = {"0": "False", "0.0": "False", "false": "False", "1": "True", "1.0": "True", "true": "True"}
_CODED = {"Smoking status": "012", "If CKD, stage": "2345", "PMH CVS disease": "01234",
          "PMH Lung disease": "012345", "CXR severity": "123", "CXR severity 3": "123", "COVID CODE": "0123",
          "COVID CODE 2": "0123"}
_DIGITS = re.compile(r"\d+")
_RESULTS = ("1st RT-PCR result", "2nd RT-PCR result", "Final COVID Status")
_RESULT_VALUES = {"0": "Negative", "1": "Positive", "RNA DETECTED (SARS-CoV-2)": "Positive"}
_FIO2_LEVELS = {"1": 25, "2": 29, "3": 33, "4": 37, "5": 41, "6": 45, "7": 41, "8": 47, "9": 53, "10": 60,
                "11": 80, "12": 85, "13": 90, "14": 95, "15": 100, "blue": 24, "white": 28, "orange": 31,
                "yellow": 35, "red": 40, "green": 60}
# NHSX's misnamed column, renamed after cleaning.
_RENAMED = {"cxr_severity_3": "cxr_severity_2"}


def _columns() -> tuple[str, ...]:
    """Every cleaned column, in the order patients.csv gives them (after every raw field)."""
    names = ["ethnicity", "sex", *(_name(f, drop_commas=True) for f in _NUMERIC), "systolic_bp", "diastolic_bp",
             "age", *(_name(f) for f in _US_DATES), "swabdate", "latest_swab_date", *(_name(f) for f in _BINARY),
             "pmh_diabetes_mellitus_type_2", "pack_year_history", *(_name(f, drop_commas=True) for f in _CODED),
             *(_name(f) for f in _RESULTS), "fio2"]
    return tuple(_RENAMED.get(name, name) for name in names)


def _name(field: str, drop_commas: bool = False) -> str:
    """NHSX's name for a cleaned column: lower case, spaces as underscores (commas dropped for some)."""
    name = field.lower().replace(" ", "_")
    return name.replace(",", "") if drop_commas else name


CLEANED_COLUMNS = _columns()
# What each cleaned column holds, for typed copies of the table (Parquet): numbers, dates, yes/no; the
# rest (groups, codes, results) text.
CLEANED_TYPES = {
    **{_name(f, drop_commas=True): "number" for f in _NUMERIC}, "systolic_bp": "number", "diastolic_bp": "number",
    "age": "number", "fio2": "number", **{_name(f): "date" for f in _US_DATES}, "swabdate": "date",
    "latest_swab_date": "date", **{_name(f): "flag" for f in _BINARY}, "pmh_diabetes_mellitus_type_2": "flag",
}


def ethnicity(raw: str | None) -> str:
    """One of White, Multiple, Asian, Black, Other, Unknown."""
    if raw is None or raw == "":
        return "Unknown"
    text = raw.strip()
    if _ETHNIC_CODE.fullmatch(text.upper()):
        return _ETHNIC_LETTERS[text.upper()[0]]
    lower = text.lower()
    if "mixed" in lower or "multiple" in lower:
        return "Multiple"
    if "white" in lower:
        return "White"
    return _ETHNIC_NAMES.get(lower, "Unknown")


def number(raw: str, part: str = "") -> float | None:
    """A plain unsigned decimal number, or the one in an error form (``[37.2]``; with ``part``, the systolic
    or diastolic of ``[170/70]``)."""
    if raw.replace(".", "", 1).isdigit():
        return float(raw)
    if part:
        pressure = _PRESSURE.search(raw)
        return float(pressure[part]) if pressure else None
    bracketed = _BRACKETED.search(raw)
    return float(bracketed[1]) if bracketed else None


def _age(raw: str) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return float(math.floor(value)) if math.isfinite(value) else None


def us_date(raw: str) -> dt.date | None:
    """A date written MM/DD/YY or MM/DD/YYYY, else the YYYY-MM-DD inside an error form."""
    found = _US_DATE.search(raw)
    try:
        if found:
            month, day, year = (int(part) for part in found.groups())
            if len(found[3]) == 2:
                year += 2000 if year < 69 else 1900  # as dateutil reads two-digit years
            return dt.date(year, month, day)
        iso = _ISO_DATE.search(raw)
        return dt.date.fromisoformat(iso[0]) if iso else None
    except ValueError:
        return None


def uk_date(raw: str) -> dt.date | None:
    """A date written day first (DD/MM/YYYY), or YYYY-MM-DD."""
    found = _US_DATE.fullmatch(raw.strip())
    try:
        if found:
            day, month, year = (int(part) for part in found.groups())
            return dt.date(year + (2000 if year < 69 else 1900 if year < 100 else 0), month, day)
        return dt.date.fromisoformat(raw.strip())
    except ValueError:
        return None


def fio2(raw: str) -> int | None:
    """FiO2 as a percentage, from a fraction, litres (``2L``), a Venturi colour or a percentage."""
    lower = raw.lower()
    value: int | None
    if "." in raw:
        try:
            value = round(float(raw) * 100)
        except ValueError:
            value = None
    elif "l" in lower:
        value = _FIO2_LEVELS.get(lower.rstrip("l"))
    elif raw in _FIO2_LEVELS:
        value = _FIO2_LEVELS[raw]
    else:
        value = int(raw) if raw.isdigit() else None
    return value if value is not None and 0 <= value <= 100 else None


def _text(value: float | int | dt.date | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}" if value != int(value) else str(int(value))
    return value.isoformat() if isinstance(value, dt.date) else str(value)


def clean(fields: Mapping[str, str]) -> Cleaned:
    """NHSX's cleaned columns for one patient's raw fields (as patients.csv writes them); a column is
    present when its raw field is."""
    out: dict[str, float | int | dt.date | str | None] = {}
    if "Ethnicity" in fields:
        out["ethnicity"] = ethnicity(fields["Ethnicity"])
    if "Sex" in fields:
        out["sex"] = _SEX.get(fields["Sex"].strip().lower(), "Unknown")
    for field in (f for f in _NUMERIC if f in fields):
        value = number(fields[field])
        name = _name(field, drop_commas=True)
        low, high = _BOUNDS.get(name, (-math.inf, math.inf))
        out[name] = value if value is not None and low <= value <= high else None
    for field, part in (("Systolic BP", "systolic"), ("Diastolic BP", "diastolic")):
        if field in fields:
            out[_name(field)] = number(fields[field], part)
    if "Age" in fields:
        out["age"] = _age(fields["Age"])
    _dates(fields, out)
    _flags_and_codes(fields, out)
    if "FiO2" in fields:
        out["fio2"] = fio2(fields["FiO2"])
    return {_RENAMED.get(name, name): _text(value) for name, value in out.items()}


def _dates(fields: Mapping[str, str], out: dict[str, float | int | dt.date | str | None]) -> None:
    for field in (f for f in _US_DATES if f in fields):
        out[_name(field)] = us_date(fields[field])
    if "SwabDate" in fields:
        swab = out["swabdate"] = uk_date(fields["SwabDate"])
        positive = out.get("date_of_positive_covid_swab")
        if "Date of Positive Covid Swab" in fields:
            known = [d for d in (positive, swab) if isinstance(d, dt.date)]
            out["latest_swab_date"] = max(known) if known else None


def _flags_and_codes(fields: Mapping[str, str], out: dict[str, float | int | dt.date | str | None]) -> None:
    def mapped(field: str, values: Mapping[str, str], convert: Callable[[str], str] = str) -> None:
        out[_name(field)] = values.get(convert(fields[field]))

    for field in (f for f in _BINARY if f in fields):
        mapped(field, _BINARY_VALUES)
    if "PMH h1pertension" in fields and out.get("pmh_hypertension") is None and "pmh_hypertension" in out:
        out["pmh_hypertension"] = {"1": "True", "1es": "True"}.get(fields["PMH h1pertension"])
    diabetes = [fields[f] for f in ("PMH diabetes mellitus type II", "PMH diabetes mellitus TYPE II")
                if fields.get(f, "") != ""]
    if "PMH diabetes mellitus type II" in fields:
        out["pmh_diabetes_mellitus_type_2"] = _BINARY_VALUES.get(diabetes[0]) if diabetes else None
    if "Pack year history" in fields:
        digits = _DIGITS.search(fields["Pack year history"])
        out["pack_year_history"] = digits[0] if digits else None
    for field, allowed in ((f, a) for f, a in _CODED.items() if f in fields):
        digits = _DIGITS.search(fields[field])
        out[_name(field, drop_commas=True)] = digits[0] if digits and digits[0] in set(allowed) else None
    for field in (f for f in _RESULTS if f in fields):
        mapped(field, _RESULT_VALUES)
