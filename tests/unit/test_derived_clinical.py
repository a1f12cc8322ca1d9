"""NHSX's cleaning rules (nccid-cleaning's patient pipeline) applied to one patient's raw fields: the
cleaned columns beside the raw ones, each rule with the error forms the warehouse is known to hold."""

from __future__ import annotations

import csv
import io
import json

import pytest

from nccidfs.derived.catalog import patients_csv, patients_rows
from nccidfs.derived.clinical import CLEANED_COLUMNS, clean, ethnicity, fio2, number, us_date


@pytest.mark.parametrize(("raw", "group"), [
    ("A", "White"), ("CA", "White"), ("c2", "White"), ("G", "Multiple"), ("LK", "Asian"), ("R", "Asian"),
    ("PA", "Black"), ("S", "Other"), ("Pakistani", "Asian"), ("White and Black Caribbean (mixed)", "Multiple"),
    ("Any other White background", "White"), ("Caribbean", "Black"), ("Z", "Unknown"), ("", "Unknown"),
    (None, "Unknown"), ("Martian", "Unknown"),
])
def test_ethnicity_is_grouped_by_nhs_code_and_name(raw: str | None, group: str) -> None:
    assert ethnicity(raw) == group


def test_numbers_come_plain_or_from_the_known_error_forms() -> None:
    assert number("37.5") == 37.5 and number("[38.1] - 2020-03-04") == 38.1 and number("high") is None
    assert number("-3") is None  # NHSX keep unsigned decimals only
    assert number("[170/70] - 2020-03-04", "systolic") == 170 and number("[170/70]", "diastolic") == 70
    assert (fio2("0.4"), fio2("2L"), fio2("red"), fio2("35"), fio2("150"), fio2(".")) == (40, 29, 40, 35, None, None)


def test_dates_are_read_us_style_or_from_an_error_form() -> None:
    assert str(us_date("04/05/2020")) == "2020-04-05" and str(us_date("4/5/20")) == "2020-04-05"
    assert str(us_date("[Text] - 2020-06-01")) == "2020-06-01"
    assert us_date(".") is None and us_date("13/45/2020") is None


def test_one_patients_fields_cleaned_as_nhsx_do() -> None:
    cleaned = clean({
        "Sex": "1", "Age": "63.7", "Temperature on admission": "52", "O2 saturation": "[93] - x",
        "Systolic BP": "[170/70] - 2020-03-04", "Date of death": "06/01/2020", "SwabDate": "02/06/2020",
        "Date of Positive Covid Swab": "05/30/2020", "Death": "1.0", "PMH CKD": "true", "ITU admission": "maybe",
        "Smoking status": "12", "If CKD, stage": "stage 3", "CXR severity 3": "2", "Final COVID Status":
        "RNA DETECTED (SARS-CoV-2)", "1st RT-PCR result": "0", "Pack year history": " 20 years", "FiO2": "0.28",
    })
    assert cleaned == {
        "sex": "M", "age": "63", "temperature_on_admission": "", "o2_saturation": "93", "systolic_bp": "170",
        "date_of_death": "2020-06-01", "date_of_positive_covid_swab": "2020-05-30", "swabdate": "2020-06-02",
        "latest_swab_date": "2020-06-02", "death": "True", "pmh_ckd": "True", "itu_admission": "",
        "smoking_status": "", "if_ckd_stage": "3", "cxr_severity_2": "2", "final_covid_status": "Positive",
        "1st_rt-pcr_result": "Negative", "pack_year_history": "20", "fio2": "28",
    }
    assert set(cleaned) <= set(CLEANED_COLUMNS)


def test_patients_csv_keeps_the_raw_fields_beside_the_cleaned_columns_which_come_last() -> None:
    body = json.dumps({"Sex": "F", "Age": 41, "Ethnicity": "M", "Temperature on admission": "[37.9] - 2020"})
    data = patients_csv(patients_rows({"Covid1": [("data_2020-05-01.json", body.encode())]}))
    header, *rest = list(csv.reader(io.StringIO(data.decode())))
    (row,) = [dict(zip(header, values, strict=True)) for values in rest]
    assert (row["Sex"], row["sex"], row["Age"], row["age"]) == ("F", "F", "41", "41")
    assert (row["Ethnicity"], row["ethnicity"]) == ("M", "Black")
    assert row["temperature_on_admission"] == "37.9"
    assert header[-4:] == ["ethnicity", "sex", "temperature_on_admission", "age"]
