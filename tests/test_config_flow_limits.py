"""[flows] max_pending_connects / max_pending_per_client: defaults, the file, the flags, errors, and the forwarder they build (issue #17)."""

import pytest

from ztun.appliance import cli, config
from ztun.appliance.app import build_handler
from ztun.errors import ConfigError
from ztun.loop import Loop


def test_defaults_file_and_flags(tmp_path):
    c = config.load()
    assert (c.flows.max_pending_connects, c.flows.max_pending_per_client) == (4096, 512)
    f = tmp_path / "z.toml"
    f.write_text("[flows]\nmax_pending_connects = 100\nmax_pending_per_client = 7\n")
    c = config.load(str(f))
    assert (c.flows.max_pending_connects, c.flows.max_pending_per_client) == (100, 7)
    args = cli.build_parser().parse_args(["check-config", str(f), "--max-pending-per-client", "9"])
    assert args.max_pending_per_client == 9
    c = config.load(str(f), {"flows.max_pending_per_client": (9, "--max-pending-per-client")})
    assert c.flows.max_pending_per_client == 9
    assert "max_pending_per_client = 9" in config.format_config(c)


@pytest.mark.parametrize("text", ["max_pending_connects = 0", "max_pending_per_client = -1", 'max_pending_connects = "x"',
                                  "max_pending_per_client = 2.5", "max_pending_connects = 2000000"])
def test_bad_values_name_the_key(tmp_path, text):
    f = tmp_path / "z.toml"
    f.write_text(f"[flows]\n{text}\n")
    with pytest.raises(ConfigError) as e:
        config.load(str(f))
    assert "flows." + text.split()[0] in str(e.value)


def test_the_forwarder_gets_the_bounds_and_a_descriptor_budget(tmp_path):
    f = tmp_path / "z.toml"
    f.write_text("[flows]\nmax_pending_connects = 100\nmax_pending_per_client = 7\n")
    with Loop() as loop:
        fwd = build_handler(loop, config.load(str(f)))
        try:
            assert (fwd.max_pending, fwd.max_pending_per_client) == (100, 7)
            assert fwd.descriptors is not None and 0 < fwd.descriptors.budget < fwd.descriptors.limit
            assert fwd.gauges()["descriptors_open"] > 0
        finally:
            fwd.close()
