from __future__ import annotations

import pytest

from popevit.registry import Registry


def test_registry_is_strict_and_suggests_the_nearest_name():
    reg: Registry[int] = Registry("positional encoding")
    reg.add("rope_axial", 1)
    reg.add("pope", 2)
    assert reg.get("pope") == 2
    assert reg.names() == ["pope", "rope_axial"]
    with pytest.raises(ValueError, match=r"unknown positional encoding 'rope-axial'; did you mean 'rope_axial'\?"):
        reg.get("rope-axial")
    with pytest.raises(ValueError, match="already registered"):
        reg.add("pope", 3)
    assert reg.get("pope") == 2, "a duplicate registration must not overwrite"


def test_decorator_registers_and_returns_the_object():
    reg: Registry[type] = Registry("model")

    @reg.register("a")
    class A:
        pass

    assert reg.get("a") is A and "a" in reg and len(reg) == 1


def test_an_alias_finds_its_entry_but_is_not_listed():
    reg: Registry[int] = Registry("model")
    reg.add("vit_p8_w32_d2", 1)
    reg.add_alias("vit_tiny", "vit_p8_w32_d2")
    assert reg.get("vit_tiny") == 1 and reg.canonical("vit_tiny") == "vit_p8_w32_d2" and "vit_tiny" in reg
    assert reg.names() == ["vit_p8_w32_d2"] and list(reg) == ["vit_p8_w32_d2"]
    with pytest.raises(ValueError, match="already registered"):
        reg.add("vit_tiny", 2)
    with pytest.raises(ValueError, match="already registered"):
        reg.add_alias("vit_p8_w32_d2", "vit_p8_w32_d2")
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        reg.add_alias("old", "nope")
    with pytest.raises(ValueError, match="unknown model 'vit_tni'"):
        reg.canonical("vit_tni")
