"""Typed row records: the Arrow schemas come from them, and they are the schemas of version
``SCHEMA_VERSION`` (a changed column must bump the version)."""

import dataclasses
import hashlib

import pyarrow as pa
import pytest

from steplabel.schemas import records, rows

pytestmark = pytest.mark.unit

#: sha256(str(schema))[:16] of every output at each schema version.
PINNED = {
    "1.0": {"trajectories": "06af6ca67a86e199", "rejected": "06af6ca67a86e199",
            "omegaprm_states": "06051d06949b100c", "omegaprm_pairs": "f935b2ce1fef8025",
            "omegaprm_searches": "1025b20505c2fb39", "filtered": "13f68405558853f0",
            "dead_letter": "418df54ab34e18d4"},
    "1.1": {"trajectories": "bfb9237106cb6bf7", "rejected": "bfb9237106cb6bf7",
            "omegaprm_states": "06051d06949b100c", "omegaprm_pairs": "f935b2ce1fef8025",
            "omegaprm_searches": "1025b20505c2fb39", "filtered": "13f68405558853f0",
            "dead_letter": "418df54ab34e18d4"},
    "1.2": {"trajectories": "55f8df4723b62165", "rejected": "55f8df4723b62165",
            "omegaprm_states": "06051d06949b100c", "omegaprm_pairs": "f935b2ce1fef8025",
            "omegaprm_searches": "1025b20505c2fb39", "filtered": "55444884d90fe9a0",
            "dead_letter": "418df54ab34e18d4"},
    # 1.3: the posterior columns of trajectories (#26) and the critiques output (#25).
    "1.3": {"trajectories": "4f1888e8f26f22a1", "rejected": "4f1888e8f26f22a1",
            "omegaprm_states": "06051d06949b100c", "omegaprm_pairs": "f935b2ce1fef8025",
            "omegaprm_searches": "1025b20505c2fb39", "filtered": "55444884d90fe9a0",
            "dead_letter": "418df54ab34e18d4", "critiques": "c185026b74787004"},
    # 1.4: critiques.omegaprm_rollout_id (critic.trust omegaprm critiques OmegaPRM's rollouts)
    # and the posterior columns of OmegaPRM states (#26).
    "1.4": {"trajectories": "4f1888e8f26f22a1", "rejected": "4f1888e8f26f22a1",
            "omegaprm_states": "9647f97bd2a0e13b", "omegaprm_pairs": "f935b2ce1fef8025",
            "omegaprm_searches": "1025b20505c2fb39", "filtered": "55444884d90fe9a0",
            "dead_letter": "418df54ab34e18d4", "critiques": "50a72c08c2f18239"},
}


def test_output_schemas_are_the_pinned_ones_of_their_version():
    digests = {name: hashlib.sha256(str(schema).encode()).hexdigest()[:16]
               for name, schema in records.OUTPUTS.items()}
    assert digests == PINNED[records.SCHEMA_VERSION]


def test_schema_follows_the_dataclass_field_by_field():
    schema = rows.schema_of(rows.Filtered)
    assert schema.names == [f.name for f in dataclasses.fields(rows.Filtered)]
    assert schema.field("n_truncated").type == pa.int32()
    assert schema.field("cost").type == records.COST


def test_a_row_built_from_its_record_fits_the_schema():
    row = rows.as_row(rows.DeadLetter(stage="label", reason="engine_error", error="boom",
                                      problem_id="p1", source="s", original="{}",
                                      manifest_hash="h"))
    table = records.to_table("dead_letter", [row])
    assert table.to_pylist() == [row]
    with pytest.raises(TypeError):
        rows.DeadLetter(stage="label", reason="engine_error")  # a missing field fails at once
