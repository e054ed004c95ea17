"""Reproduction and regression: the thesis experiments and their targets, regression
suites against a baseline, and the runners that hand their jobs to this process or to
the REST API."""
