"""Byte units, one definition for the library, the recipes and the benchmarks."""

MIB = 2**20
GIB = 2**30
