"""The attack registry: names, aliases, options and the request every attack receives."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from midre.attacks import ATTACKS, AttackRequest, get_attack, list_attacks, needs_public_data, parse_options
from midre.attacks import registry as reg
from midre.errors import ConfigError


def test_names_order_and_summary_are_what_the_cli_and_service_read():
    assert list_attacks() == ["mi-face", "deepinversion", "gmi", "kedmi", "lomma+gmi", "lomma+kedmi", "plg-mi",
                              "rlb-mi", "brep-mi", "ppa", "if-gmi", "mirror"]
    assert ATTACKS["mi-face"] == {"prior": None, "paper": "Fredrikson et al., CCS 2015"}
    assert ATTACKS["lomma+kedmi"] == {"prior": "kedmi", "paper": "Nguyen et al., CVPR 2023"}
    assert ATTACKS["rlb-mi"]["access"] == "probabilities" and ATTACKS["brep-mi"]["access"] == "labels"
    assert [n for n in ATTACKS if needs_public_data(n)] == list_attacks()[2:]
    aliases = {"lomma": "lomma+gmi", "plgmi": "plg-mi", "plg": "plg-mi", "miface": "mi-face", "DI": "deepinversion",
               " RLBMI ": "rlb-mi", "brepmi": "brep-mi", "kedmi+lomma": "lomma+kedmi", "gmi+lomma": "lomma+gmi"}
    assert {alias: get_attack(alias).name for alias in aliases} == aliases
    assert get_attack("kedmi").summary and get_attack("plg-mi").run.__name__ == "run_plg_mi"


def test_parse_options_names_the_field_prior_included():
    assert parse_options("gmi", {"surrogates": ["cnn-small"]}).surrogates == ("cnn-small",)
    assert parse_options("di", None) == get_attack("deepinversion").options()
    for name in ("gmi", "rlb-mi", "brep-mi"):
        with pytest.raises(ConfigError) as err:
            parse_options(name, {"prior": {"widht": 8}})
        assert err.value.field == "prior.widht"
    with pytest.raises(ConfigError) as err:
        parse_options("mi-face", {"lr": 0.1})
    assert err.value.field == "lr"
    with pytest.raises(ConfigError, match="must be an object"):
        parse_options("mi-face", ["loss"])


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test stay out of the real registry."""
    monkeypatch.setattr(reg, "_REGISTRY", dict(reg._REGISTRY))
    monkeypatch.setattr(reg, "_ALIASES", dict(reg._ALIASES))
    monkeypatch.setattr(reg, "ATTACKS", dict(reg.ATTACKS))


@dataclasses.dataclass(frozen=True)
class _Options:
    scale: float = 1.0


def test_a_registered_attack_gets_one_validated_request(scratch_registry):
    seen: list[AttackRequest] = []

    @reg.register_attack("echo", options=_Options, paper="test", aliases=("ECHO-ALIAS",))
    def echo(request: AttackRequest):
        """Returns the request instead of reconstructions."""
        seen.append(request)
        return request

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    model.classifier = model[1]  # AttackTarget reads num_classes from it
    request = reg.run_attack("echo-alias", model, [2, 0], per_identity=2, image_shape=(1, 2, 2),
                             options={"scale": 2.0}, seed=7)
    assert seen == [request] and request.name == "echo" and request.options == _Options(2.0)
    assert request.identities.tolist() == [2, 0] and request.device == torch.device("cpu") and request.seed == 7
    assert reg.get_attack("echo").summary == "Returns the request instead of reconstructions."
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.seed = 1  # type: ignore[misc]


def test_registration_is_checked(scratch_registry):
    def run(request):
        return request

    with pytest.raises(ValueError, match="already registered"):
        reg.register_attack("gmi", options=_Options)(run)
    with pytest.raises(ValueError, match="already registered"):
        reg.register_attack("new-name", options=_Options, aliases=("lomma",))(run)
    with pytest.raises(ValueError, match="needs"):
        reg.register_attack("x", options=_Options, needs="stylegan")
    with pytest.raises(ValueError, match="access"):
        reg.register_attack("x", options=_Options, access="weights")
    with pytest.raises(TypeError, match="dataclass"):
        reg.register_attack("x", options=dict)
    with pytest.raises(TypeError, match="one AttackRequest"):
        reg.register_attack("x", options=_Options)(lambda request, extra: None)
    with pytest.raises(ValueError, match="lower case"):
        reg.register_attack("Mixed", options=_Options)
    with pytest.raises(ValueError, match="known attacks: mi-face, deepinversion"):
        get_attack("nope")


def test_attack_id_is_name_at_version_plus_a_stable_hash_of_the_effective_settings(scratch_registry):
    from midre.attacks import AttackBudget, attack_id

    assert all(get_attack(name).version == 1 for name in list_attacks())
    first = attack_id("gmi", AttackBudget(steps=50), {"prior": {"width": 8}})
    name, version, digest = reg.parse_attack_id(first)
    assert (name, version) == ("gmi", 1) and len(digest) == 8 and int(digest, 16) >= 0
    assert first == attack_id("gmi", {"steps": 50}, {"prior": {"width": 8}})  # stable, whatever the spelling
    assert first == attack_id("GMI", AttackBudget(steps=50, restarts=1), {"prior": {"width": 8}, "momentum": 0.9,
                                                                          "surrogates": ["cnn-small"]})
    assert attack_id("gmi", None, {"clip_latent": 2.0}) == attack_id("gmi", None, {"clip_latent": 2})
    assert attack_id("mi-face") == attack_id("miface", AttackBudget(), {})  # defaults spelled out: the same id
    changed = {attack_id("gmi", AttackBudget(steps=51), {"prior": {"width": 8}}),
               attack_id("gmi", AttackBudget(steps=50), {"prior": {"width": 16}}),
               attack_id("lomma", AttackBudget(steps=50), {"prior": {"width": 8}})}
    assert first not in changed and len(changed) == 3
    assert attack_id("lomma").startswith("lomma+gmi@1+")

    @reg.register_attack("echo2", options=_Options, version=3)
    def echo(request):
        """Echo."""
        return request

    assert attack_id("echo2", None, {"scale": 2.0}).startswith("echo2@3+")
    assert attack_id("echo2", None, {"scale": 2.0}) != attack_id("echo2")
    with pytest.raises(ValueError, match="version"):
        reg.register_attack("x", options=_Options, version=0)
    with pytest.raises(ConfigError):
        attack_id("echo2", None, {"scal": 2.0})
    assert reg.parse_attack_id("gmi") is None and reg.parse_attack_id("gmi@x+12345678") is None
