"""Tests of the server side of federated training: aggregation, quorum, workflows, jobs."""
