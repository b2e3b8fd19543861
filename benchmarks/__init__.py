"""Speed and memory benchmarks (not tests); run them as scripts or as modules
(`python -m benchmarks.memory`)."""
