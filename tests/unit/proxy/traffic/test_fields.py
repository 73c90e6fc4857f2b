"""Reading raw config mappings: folded keys, HCL blocks, errors that name the field."""

from __future__ import annotations

import pytest

from mesh.proxy.traffic.fields import Section, fold


def test_fold_ignores_case_underscores_and_dashes():
    assert fold("MaxFailures") == fold("max_failures") == fold("max-failures") == "maxfailures"


@pytest.mark.parametrize("raw", [None, {}, [{}]])
def test_unconfigured_is_none(raw):
    assert Section.of(raw, "x") is None


def test_an_hcl_block_is_a_list_of_one_object():
    section = Section.of([{"Max_Failures": 3}], "phc")
    assert section is not None and section.whole("max_failures", 5) == 3


def test_not_an_object_names_the_path():
    with pytest.raises(ValueError, match=r"^phc: must be an object, got 'x'"):
        Section.of("x", "phc")


@pytest.mark.parametrize("value", [-1, 1.5, "3", True, float("nan"), float("inf")])
def test_whole_refuses_what_is_not_a_whole_number(value):
    section = Section({"n": value}, "a.b")
    with pytest.raises(ValueError, match=r"^a\.b\.n: must be a whole number ≥ 0, got "):
        section.whole("n", 0)


def test_whole_takes_integral_floats_and_checks_the_upper_bound():
    assert Section({"n": 5.0}, "a").whole("n", 0) == 5
    with pytest.raises(ValueError, match=r"^a\.n: must be a whole number from 0 to 100, got 101$"):
        Section({"n": 101}, "a").whole("n", 0, hi=100)


def test_absent_fields_take_the_default():
    section = Section({"other": 1}, "a")
    assert section.whole("n", 7) == 7
    assert section.boolean("b", True) is True
    assert section.text("t", "d") == "d"
    assert section.duration("d", 1.5) == 1.5
    assert section.section("s") is None
    assert section.sections("l") == []


def test_durations_take_go_strings_and_seconds():
    assert Section({"t": "1m30s"}, "a").duration("t", 0) == 90.0
    assert Section({"t": 2}, "a").duration("t", 0) == 2.0
    with pytest.raises(ValueError, match=r"^a\.t: must be a duration"):
        Section({"t": "soon"}, "a").duration("t", 0)


def test_wrong_types_name_the_field():
    with pytest.raises(ValueError, match=r"^a\.b: must be true or false"):
        Section({"b": "yes"}, "a").boolean("b")
    with pytest.raises(ValueError, match=r"^a\.t: must be a string"):
        Section({"t": 3}, "a").text("t")
    with pytest.raises(ValueError, match=r"^a\.l: must be a list of objects"):
        Section({"l": {}}, "a").sections("l")


def test_sections_name_each_entry_by_index():
    items = Section({"L": [{"x": 1}, {"x": -1}]}, "a").sections("l")
    with pytest.raises(ValueError, match=r"^a\.l\[1\]\.x: "):
        [s.whole("x", 0) for s in items]
