"""The recipes, importable as modules (`from recipes import context_distill`; `context_distill.main(argv)`)
and runnable as scripts (`python recipes/context_distill.py --config ...`)."""
