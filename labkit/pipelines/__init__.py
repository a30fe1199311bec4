"""End-to-end experiment pipelines that the notebooks and `python -m labkit.bench` run."""
