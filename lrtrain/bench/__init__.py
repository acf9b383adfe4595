"""Benchmark suites scored the AlgoPerf way: workloads (configs/bench/suite/), submissions
(configs/bench/submission/), time to a validation target per workload, performance profiles and their integrated
score (`lrtrain-bench`)."""
