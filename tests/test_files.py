"""Names on disk and in configs: safe, stable, never colliding, never leaving their folder, and read
back as themselves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from tinyvmaf.errors import TinyVmafError
from tinyvmaf.files import config_key, config_literal, safe_name

HOSTILE = st.text(
    alphabet=st.sampled_from(list("ab./\\'\":,;[]=%\n\t ~.-_é中\x00")) | st.characters(), min_size=1, max_size=300
)


@given(st.text(alphabet="${}\\:.abc", max_size=30))
def test_a_name_written_into_a_config_reads_back_as_itself(name):
    written = {"heldout": config_literal(name)}
    assert OmegaConf.create(written).heldout == name
    assert OmegaConf.create(yaml.safe_load(yaml.safe_dump(written))).heldout == name


@settings(max_examples=500, deadline=None)
@given(HOSTILE, HOSTILE)
@example("'", "%27")  # an encoded character against its own code
@example(".x", "%2Ex")
@example("a" * 300, "a" * 301)  # cut names
@example("a" * 300 + "b", "a" * 300 + "c")
def test_safe_names_stay_in_their_folder_are_stable_and_never_collide(a, b):
    for name in (a, b):
        safe = safe_name(name)
        assert safe == safe_name(name) and "/" not in safe and "\x00" not in safe
        assert not safe.startswith(".") and len(safe.encode()) <= 200
        folder = Path("/cache/clips")
        assert (folder / f"{safe}.json").resolve().parent == folder
        assert re.fullmatch(r"[A-Za-z0-9_-]+", config_key(name)) and config_key(name) == config_key(name)
    if a != b:
        assert safe_name(a) != safe_name(b) and config_key(a) != config_key(b)


def test_readable_names_are_kept_and_empty_ones_refused():
    assert safe_name("BigBuckBunny__full_crf18") == "BigBuckBunny__full_crf18"
    assert safe_name("..") == "%2E." and safe_name("Bob's clip") == "Bob%27s%20clip"
    with pytest.raises(TinyVmafError, match="corpus name: an empty name cannot be used"):
        safe_name("", "corpus name")
