"""Shuffles whose values travel as bytes.

Beam's FnApiRunner (the local runner, and the job service of the portable runner) groups a
shuffle in memory with every value *decoded*: a row of a few kilobytes on the wire becomes tens of
kilobytes of Python objects until the group is read. Packing the values into one ``bytes``
object each before the shuffle (pickle, in the producing stage) and unpacking them after it (in
the consuming stage, fused with the read) keeps the grouped data at its encoded size on every
runner; runners that spill shuffles to disk (Dataflow, Flink) move the same bytes as before.
"""

from __future__ import annotations

import pickle

import apache_beam as beam


def pack(value) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def unpack(data: bytes):
    return pickle.loads(data)


class PackedGroupByKey(beam.PTransform):
    """``GroupByKey`` with values packed across the shuffle: ``(key, value)`` -> ``(key,
    [values])`` (a list, unpacked in the consuming stage)."""

    def expand(self, pcoll):
        return (pcoll
                | "Pack" >> beam.MapTuple(lambda key, value: (key, pack(value)))
                | "Group" >> beam.GroupByKey()
                | "Unpack" >> beam.MapTuple(lambda key, values: (key, [unpack(v) for v in values])))


class PackedCoGroupByKey(beam.PTransform):
    """``CoGroupByKey`` of a dict of ``(key, value)`` PCollections with values packed across
    the shuffle: ``(key, {tag: [values]})``."""

    def expand(self, pcolls: dict):
        packed = {tag: pcoll | f"Pack{tag.title()}" >> beam.MapTuple(
                      lambda key, value: (key, pack(value)))
                  for tag, pcoll in pcolls.items()}
        return (packed
                | "Group" >> beam.CoGroupByKey()
                | "Unpack" >> beam.MapTuple(lambda key, grouped: (key, {
                    tag: [unpack(v) for v in values] for tag, values in grouped.items()})))
