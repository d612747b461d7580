"""Install hints name the form that works for how this copy was installed (PEP 610 records)."""

import json
import sys

from rvrt_engines.extras import install_command, installed_from


def test_hint_from_an_index():
    assert install_command("export", {}) == "pip install 'rvrt-deploy[export]'"


def test_hint_from_a_checkout(tmp_path, monkeypatch):
    checkout = tmp_path / "rvrt deploy"
    checkout.mkdir()
    origin = {"url": checkout.as_uri(), "dir_info": {"editable": True}}
    assert install_command("export", origin) == f"pip install -e '{checkout}[export]'"
    monkeypatch.chdir(checkout)
    assert install_command("export", origin) == "pip install -e '.[export]'"
    assert install_command("cluster", {**origin, "dir_info": {}}) == "pip install '.[cluster]'"


def test_hint_from_a_checkout_that_is_gone_or_a_repository(tmp_path):
    gone = {"url": (tmp_path / "gone").as_uri(), "dir_info": {}}
    assert install_command("export", gone) == "pip install 'rvrt-deploy[export]'"
    git = {"url": "https://github.com/o/rvrt-deploy", "vcs_info": {"vcs": "git", "commit_id": "0" * 40}}
    assert install_command("export", git) == "pip install 'rvrt-deploy[export] @ git+https://github.com/o/rvrt-deploy'"


def test_the_record_is_found_behind_a_checkouts_egg_info(tmp_path, monkeypatch):
    """Run from a checkout, its egg-info (no PEP 610 record) comes first on the path."""
    egg = tmp_path / "checkout" / "rvrt_deploy.egg-info"
    egg.mkdir(parents=True)
    (egg / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: rvrt-deploy\nVersion: 0.1.0\n")
    dist = tmp_path / "site" / "rvrt_deploy-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rvrt-deploy\nVersion: 0.1.0\n")
    record = {"url": (tmp_path / "checkout").as_uri(), "dir_info": {"editable": True}}
    (dist / "direct_url.json").write_text(json.dumps(record))
    monkeypatch.setattr(sys, "path", [str(egg.parent), str(dist.parent)])
    assert installed_from() == record
    assert install_command("export") == f"pip install -e '{tmp_path / 'checkout'}[export]'"
