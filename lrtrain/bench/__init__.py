"""Benchmark suites scored the AlgoPerf way: workloads (configs/suite/), submissions (configs/submission/), time to
a validation target per workload, performance profiles and their integrated score (`lrtrain-bench`)."""
