"""The one registration style (xtc_ext.registry.Registry): decorator and call forms, checked lookup, clear errors."""

import pytest

from xtc_ext.registry import Registry


class Base:
    pass


def test_decorator_registers_a_class_under_every_name_and_returns_it_unchanged():
    reg = Registry("thing", expects=Base)

    @reg.register("a", "b")
    class A(Base):
        pass

    assert reg["a"] is A and reg.lookup("b") is A
    assert list(reg) == ["a", "b"] and len(reg) == 2 and "a" in reg and "c" not in reg


def test_call_form_registers_an_object_under_its_name_or_the_names_given():
    class Spec:
        def __init__(self, name):
            self.name = name

    reg = Registry("spec")
    s, t = Spec("s"), Spec("ignored")
    assert reg.register(s) is s and reg.register(t, "t1", "t2") is t
    assert dict(reg) == {"s": s, "t1": t, "t2": t}


def test_lookup_of_an_unknown_name_lists_the_registered_ones():
    reg = Registry("weighting")
    reg.register(object(), "equal")
    with pytest.raises(ValueError, match=r"unknown weighting 'nope' \(registered: equal\)"):
        reg.lookup("nope")
    with pytest.raises(ValueError, match="unknown weighting"):
        reg.lookup(["unhashable"])


def test_duplicates_wrong_types_and_missing_names_are_refused_without_registering():
    reg = Registry("thing", expects=Base)
    reg.register(Base(), "x")
    with pytest.raises(ValueError, match="'x' is already registered"):
        reg.register(Base(), "y", "x")
    assert "y" not in reg
    with pytest.raises(ValueError, match="'z' is already registered"):
        reg.register(Base(), "z", "z")
    with pytest.raises(TypeError, match="expects a Base"):
        reg.register(object(), "w")
    with pytest.raises(TypeError, match="expects a Base"):
        reg.register("v")(int)
    with pytest.raises(ValueError, match="no string .name"):
        reg.register(Base())
    with pytest.raises(ValueError, match="non-empty string"):
        reg.register(Base(), "")
    with pytest.raises(ValueError, match="kind must be"):
        Registry("")


def test_unregister_removes_an_entry():
    reg = Registry("thing")
    obj = object()
    reg.register(obj, "x")
    assert reg.unregister("x") is obj and "x" not in reg
    with pytest.raises(ValueError, match="unknown thing 'x'"):
        reg.unregister("x")
