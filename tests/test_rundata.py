"""Run-directory files are read in one place (``ssdfa.rundata.read_json``), each caller's damage
message kept: compare/reproduce's summaries, sweep cells, a run's config."""

from __future__ import annotations

import json

import pytest

from ssdfa.errors import ConfigError, SweepError, UserError
from ssdfa.rundata import read_json


def test_read_json_parses_refuses_damage_in_the_callers_terms_and_leaves_absence_to_it(tmp_path):
    good, bad, binary = tmp_path / "good.json", tmp_path / "bad.json", tmp_path / "bin.json"
    good.write_text(json.dumps({"status": "finished", "epochs": 3}), encoding="utf-8")
    bad.write_text('{"status": "fini', encoding="utf-8")
    binary.write_bytes(b"\xff\xfe\x00{")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000, encoding="utf-8")  # json.loads runs out of recursion
    assert read_json(good, UserError) == {"status": "finished", "epochs": 3}
    for path in (bad, binary, deep):
        with pytest.raises(SweepError, match=r"damaged: "):
            read_json(path, lambda exc: SweepError(f"damaged: {exc}"))
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "missing.json", UserError)
    assert bad.read_text(encoding="utf-8") == '{"status": "fini'  # nothing rewritten


def test_a_damaged_run_config_is_one_config_error_naming_the_file(tmp_path):
    from ssdfa.training import read_run_config

    (tmp_path / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"config\.json is not valid JSON .*new --out-dir"):
        read_run_config(tmp_path)
