"""The CVP spec's key: its own per k, on top of the precision's, and a stored CVP spec plans back to its plain spec."""

from __future__ import annotations

from alkit.embedding.spec import PlannedSpec, WeightsSource, for_cvp, for_precision, planned_from_record


def _planned() -> PlannedSpec:
    return PlannedSpec("ViT-B-32", WeightsSource("tag", "openai"), {"embed_dim": 512}, "plainkey")


def test_each_k_and_precision_gets_its_own_key_and_k0_is_the_plain_spec():
    plain = _planned()
    keys = {for_cvp(for_precision(plain, precision), k).key for precision in ("fp32", "int8") for k in (0, 1, 2)}
    assert len(keys) == 6
    one = for_cvp(plain, 1)
    assert one.cvp_blocks == 1 and one.plain_key == "plainkey" and one.name == "ViT-B-32/openai+cvp1"
    assert for_cvp(one, 0) == plain and for_cvp(one, 2) == for_cvp(plain, 2)  # from the plain key, never stacked
    assert for_cvp(for_precision(plain, "int8"), 2).name == "ViT-B-32/openai+int8-dynamic-linear+cvp2"


def test_a_stored_cvp_spec_plans_back_to_its_plain_spec():
    one = for_cvp(for_precision(_planned(), "int8"), 1)
    record = {"config": one.config, "quantisation": one.quantisation, "base_key": one.base_key,
              "cvp_blocks": 1, "cvp_plain_key": one.plain_key}
    back = planned_from_record(one.architecture, one.weights, record, one.key)
    assert back == for_precision(_planned(), "int8") and for_cvp(back, 1) == one
    assert for_precision(back, "fp32").key == "plainkey"
