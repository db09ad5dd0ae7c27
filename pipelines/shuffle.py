"""Shuffles whose values travel as bytes.

Beam's FnApiRunner (the local runner, and the job service of the portable runner) groups a
shuffle in memory with every value *decoded*: a row of a few kilobytes on the wire becomes tens of
kilobytes of Python objects until the group is read. Packing the values into one ``bytes``
object each before the shuffle (pickled and compressed, in the producing stage) and unpacking
them after it (in the consuming stage, fused with the read) keeps the grouped data a few times
smaller than its decoded size on every runner (the FnApiRunner also keeps a flattened copy of
each shuffle's input: packed too); runners that spill shuffles to disk (Dataflow, Flink) move
fewer bytes.
"""

from __future__ import annotations

import pickle
import zlib

import apache_beam as beam


def pack(value) -> bytes:
    return zlib.compress(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), 1)


def unpack(data: bytes):
    return pickle.loads(zlib.decompress(data))


class PackedGroupByKey(beam.PTransform):
    """``GroupByKey`` with values packed across the shuffle: ``(key, value)`` -> ``(key,
    [values])`` (a list, unpacked in the consuming stage). Applied to several PCollections
    (a tuple), it packs each before flattening them."""

    def expand(self, pcolls):
        if isinstance(pcolls, beam.PCollection):
            pcolls = (pcolls,)
        packed = [pcoll | f"Pack{i}" >> beam.MapTuple(lambda key, value: (key, pack(value)))
                  for i, pcoll in enumerate(pcolls)]
        return (packed
                | "Flatten" >> beam.Flatten()
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


class PackedReshuffle(beam.PTransform):
    """``Reshuffle`` with elements packed across it."""

    def expand(self, pcoll):
        return (pcoll
                | "Pack" >> beam.Map(pack)
                | "Reshuffle" >> beam.Reshuffle()
                | "Unpack" >> beam.Map(unpack))
